"""Market-1501 (Zheng et al., ICCV 2015).

Layout: ``Market-1501-v15.09.15/`` (or ``market1501/``, ``Market-1501/``, ``Market/``) with
``bounding_box_train/``, ``query/`` and ``bounding_box_test/``; names
``0002_c1s1_000451_03.jpg`` (pid, camera, sequence, frame, box). Junk images (pid ``-1``)
are dropped, distractors (pid ``0000``) kept.

Official statistics (ids/images): train 751/12936, query 750/3368, gallery 751/15913;
6 cameras.

Example::

    >>> ds = build("datasets/")          # doctest: +SKIP
    >>> ds.statistics()["query"]          # doctest: +SKIP
    {'ids': 750, 'images': 3368, 'cameras': 6}
"""

from __future__ import annotations

import os

from crossreid.data.base import ReIDDataset
from crossreid.data.datasets._common import (
    MARKET_EXPECTED,
    build_market_layout,
    has_market_layout,
    resolve_root,
)

NAME = "market1501"
FOLDER_NAMES = ("Market-1501-v15.09.15", "market1501", "Market-1501", "Market")


def build(root: str | os.PathLike) -> ReIDDataset:
    """Market-1501 found at ``root`` (the dataset folder or a parent of it)."""
    folder = resolve_root(root, FOLDER_NAMES, has_market_layout, NAME, MARKET_EXPECTED)
    return build_market_layout(NAME, folder)
