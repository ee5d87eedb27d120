"""Parsers of the standard re-ID datasets, one short module each, behind :func:`build_dataset`.

Example::

    >>> from crossreid.data import build_dataset
    >>> ds = build_dataset("Market", "datasets/")             # doctest: +SKIP
    >>> ds = build_dataset("cuhk03", "datasets/", subset="labeled", protocol="classic", split=3)
    ...                                                         # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import inspect
import os

from crossreid.data.base import ReIDDataset
from crossreid.data.names import parse_market_name
from crossreid.errors import ConfigError, DatasetError

#: Canonical dataset names, in the order the help text lists them.
DATASET_NAMES = ("market1501", "dukemtmcreid", "cuhk03", "msmt17", "custom")

#: Lower-cased alias -> (canonical name, options the alias implies).
DATASET_ALIASES: dict[str, tuple[str, dict]] = {
    "market1501": ("market1501", {}),
    "market": ("market1501", {}),
    "market-1501": ("market1501", {}),
    "dukemtmcreid": ("dukemtmcreid", {}),
    "dukemtmc-reid": ("dukemtmcreid", {}),
    "dukemtmc": ("dukemtmcreid", {}),
    "duke": ("dukemtmcreid", {}),
    "cuhk03": ("cuhk03", {}),
    "cuhk03-np": ("cuhk03", {}),
    "msmt17": ("msmt17", {}),
    "msmt17_v1": ("msmt17", {"version": "V1"}),
    "msmt17_v2": ("msmt17", {"version": "V2"}),
    "custom": ("custom", {}),
}


def canonical_name(name: str) -> str:
    """The canonical dataset name of ``name`` or an alias (case-insensitive)."""
    return _lookup(name)[0]


def _lookup(name: str) -> tuple[str, dict]:
    try:
        return DATASET_ALIASES[str(name).strip().lower()]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}: expected one of {', '.join(DATASET_NAMES)} "
            "(aliases Market, Duke, CUHK03, MSMT17_V1, MSMT17_V2)"
        ) from None


def build_dataset(name: str, root: str | os.PathLike, **options) -> ReIDDataset:
    """Parse dataset ``name`` found at ``root`` into train/query/gallery records.

    Args:
        name: ``market1501``, ``dukemtmcreid``, ``cuhk03``, ``msmt17``, ``custom`` or an
            alias (``Market``, ``Duke``, ``CUHK03``, ``MSMT17_V1``, ``MSMT17_V2``), any case.
        root: the dataset folder, or a parent holding it under one of its usual names
            (``custom``: a Market-layout folder or a ``path,pid,camid,split`` CSV).
        **options: dataset options — ``cuhk03``: ``subset="detected"|"labeled"``,
            ``protocol="new"|"classic"``, ``split=0..19``; ``msmt17``: ``version="V1"|"V2"``.
            ``None`` values are ignored (the dataset's default applies).

    Returns:
        A :class:`ReIDDataset`; train pids relabelled ``0..N-1``, query/gallery pids as in
        the dataset, camera ids 0-based, junk images (pid -1) excluded.

    Raises:
        DatasetError: missing folders, unparsable names, malformed lists, empty splits.
        ConfigError: an option the dataset does not take, or a bad option value.
    """
    canonical, implied = _lookup(name)
    module = importlib.import_module(f"{__name__}.{canonical}")
    options = {**implied, **{k: v for k, v in options.items() if v is not None}}
    accepted = [
        p.name
        for p in inspect.signature(module.build).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ConfigError(
            f"{canonical} does not take option(s) {', '.join(unknown)} (takes {takes})"
        )
    return module.build(root, **options)


__all__ = [
    "DATASET_ALIASES",
    "DATASET_NAMES",
    "build_dataset",
    "canonical_name",
    "parse_market_name",
]
