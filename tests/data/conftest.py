"""Fixtures for the dataset tests: tiny image trees and the full-size Market-1501 replica."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from crossreid.data.datasets.replica import read_filelist, tiny_jpeg, write_replica

REPO = Path(__file__).resolve().parents[2]
# The checkout has shared/ beside it (CI puts it there too); some copies carry it inside.
SHARED_CANDIDATES = [REPO / ".." / "shared", REPO / "shared"]
FILELIST_NAME = "data/market1501_filelist.txt.gz"


def market_filelist() -> Path | None:
    """Path of the shared Market-1501 file list, or None when this checkout lacks it."""
    for shared in SHARED_CANDIDATES:
        if (shared / FILELIST_NAME).is_file():
            return (shared / FILELIST_NAME).resolve()
    return None


def replica_base(factory: pytest.TempPathFactory) -> Path:
    """Temp folder shared by every xdist worker of this run, so the replica is built once."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def market_replica_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``Market-1501-v15.09.15/``: all 36,036 real names, one tiny JPEG each.

    Built once per test worker under its base temp folder, where the CLI tests find the
    same replica (``write_replica`` is idempotent).
    """
    filelist = market_filelist()
    if filelist is None:
        searched = ", ".join(str(s / FILELIST_NAME) for s in SHARED_CANDIDATES)
        pytest.skip(f"Market-1501 file list not found (searched {searched})")
    parent = replica_base(tmp_path_factory) / "market_replica"
    write_replica(read_filelist(filelist), parent / "Market-1501-v15.09.15")
    return parent


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return tiny_jpeg()


@pytest.fixture
def make_tree(jpeg_bytes: bytes) -> Callable[[Path, Iterable[str]], Path]:
    """``make_tree(root, ["folder/name.jpg", ...])`` writes a tiny JPEG at each relative path."""

    def make(root: Path, names: Iterable[str]) -> Path:
        for name in names:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg_bytes)
        return root

    return make
