"""DukeMTMC-reID (Zheng et al., ICCV 2017; Ristani et al., ECCVW 2016).

Layout: ``DukeMTMC-reID/`` (or ``dukemtmcreid/``, ``dukemtmc-reid/``, ``Duke/``) with
``bounding_box_train/``, ``query/`` and ``bounding_box_test/``; names
``0001_c2_f0046182.jpg`` (pid, camera, frame).

Official statistics (ids/images): train 702/16522, query 702/2228, gallery 1110/17661;
8 cameras.
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

NAME = "dukemtmcreid"
FOLDER_NAMES = ("DukeMTMC-reID", "dukemtmcreid", "dukemtmc-reid", "dukemtmc", "Duke")


def build(root: str | os.PathLike) -> ReIDDataset:
    """DukeMTMC-reID found at ``root`` (the dataset folder or a parent of it)."""
    folder = resolve_root(root, FOLDER_NAMES, has_market_layout, NAME, MARKET_EXPECTED)
    return build_market_layout(NAME, folder)
