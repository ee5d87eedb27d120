"""The dataset container shared by every dataset parser.

A dataset is three lists of :class:`ImageRecord` — ``train``, ``query`` and ``gallery``.
Train pids are relabelled to ``0..N-1`` (what a classifier needs); query and gallery keep
their original pids (what evaluation compares). Camera ids are 0-based everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from crossreid.errors import DatasetError


class ImageRecord(NamedTuple):
    """One image: its file path, person id and 0-based camera id."""

    path: str
    pid: int
    camid: int


def split_statistics(records: Sequence[ImageRecord]) -> dict[str, int]:
    """``{"ids", "images", "cameras"}`` of one split."""
    return {
        "ids": len({r.pid for r in records}),
        "images": len(records),
        "cameras": len({r.camid for r in records}),
    }


def relabel(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Map pids to ``0..N-1`` in ascending order of the original pid."""
    records = list(records)
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [ImageRecord(r.path, mapping[r.pid], r.camid) for r in records]


@dataclass
class ReIDDataset:
    """A re-ID dataset: ``train`` (relabelled pids), ``query`` and ``gallery``.

    Example::

        >>> ds = build_dataset("market1501", "datasets/")   # doctest: +SKIP
        >>> ds.statistics()["train"]                          # doctest: +SKIP
        {'ids': 751, 'images': 12936, 'cameras': 6}
    """

    name: str
    root: Path
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "query", "gallery"):
            if not getattr(self, split):
                raise DatasetError(f"{self.name}: the {split} split under {self.root} is empty")

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    def statistics(self) -> dict[str, dict[str, int]]:
        """``{"train": {...}, "query": {...}, "gallery": {...}}`` with ids/images/cameras."""
        return {s: split_statistics(getattr(self, s)) for s in ("train", "query", "gallery")}

    def __repr__(self) -> str:
        stats = self.statistics()
        parts = ", ".join(
            f"{s}={v['ids']} ids/{v['images']} images/{v['cameras']} cams" for s, v in stats.items()
        )
        return f"ReIDDataset({self.name!r}, {parts})"
