"""Data: dataset parsers, dataset specs, the synthetic domains and the input pipeline.

``build_dataset(name, root)`` reads one of the standard datasets; ``resolve_dataset(spec)``
is what the commands use (``NAME``, ``folder:PATH`` or ``synthetic:DOMAIN``). Transforms,
samplers and loaders import torch, so they are imported from their own modules
(``crossreid.data.transforms``, ``.samplers``, ``.loaders``), keeping this package
import-light for the command line.
"""

from crossreid.data.base import ImageRecord, ReIDDataset
from crossreid.data.datasets import DATASET_NAMES, build_dataset, parse_market_name
from crossreid.data.specs import resolve_dataset
from crossreid.data.synthetic import SyntheticConfig, generate_domain

__all__ = [
    "DATASET_NAMES",
    "ImageRecord",
    "ReIDDataset",
    "SyntheticConfig",
    "build_dataset",
    "generate_domain",
    "parse_market_name",
    "resolve_dataset",
]
