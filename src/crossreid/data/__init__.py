"""Data: dataset parsers and the dataset container.

Kept import-light (no torch) so the command line starts fast.
"""

from crossreid.data.base import ImageRecord, ReIDDataset
from crossreid.data.datasets import DATASET_NAMES, build_dataset, parse_market_name

__all__ = ["DATASET_NAMES", "ImageRecord", "ReIDDataset", "build_dataset", "parse_market_name"]
