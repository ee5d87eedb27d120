"""Helpers shared by the dataset parsers: Market-style names, root resolution, folder scans.

Market-1501, DukeMTMC-reID and CUHK03-NP all name their images ``PID_cCAM...``
(``0002_c1s1_000451_03.jpg``, ``0001_c2_f0046182.jpg``, ``0001_c1_1.png``) and lay them out
in ``bounding_box_train/``, ``query/`` and ``bounding_box_test/``; the code for that layout
lives here once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from crossreid.data.base import ImageRecord, ReIDDataset, relabel
from crossreid.data.names import is_image, parse_market_name
from crossreid.errors import DatasetError

#: The three split folders of the Market layout, in (train, query, gallery) order.
MARKET_SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")


def resolve_root(
    root: str | os.PathLike,
    folder_names: Sequence[str],
    looks_like: Callable[[Path], bool],
    dataset: str,
    expected: str,
) -> Path:
    """Find a dataset folder: ``root`` itself, or a usual folder name under it.

    Candidates are searched in order: ``root``; ``root/NAME`` for each of ``folder_names``
    (matched case-insensitively); ``root/NAME/NAME2`` (archives often unpack into a
    folder of the same kind, e.g. ``market1501/Market-1501-v15.09.15``). The first
    candidate for which ``looks_like`` is true wins. When none does but a folder with one
    of the usual names exists, that folder is returned so the caller reports precisely
    which split folder is missing.

    Raises:
        DatasetError: ``root`` does not exist, or no candidate looks like the dataset
            (the message lists every path searched and what was expected).
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"{dataset}: dataset root {root} does not exist")
    if root.is_file():
        raise DatasetError(f"{dataset}: dataset root {root} is a file, expected a folder")

    if looks_like(root):
        return root
    searched: list[Path] = [root]
    children = child_dirs(root)
    named: list[Path] = []
    # Names are matched case-insensitively, so keep the first spelling of each.
    folder_names = list({n.lower(): n for n in reversed(folder_names)}.values())[::-1]
    for name in folder_names:
        folder = children.get(name.lower())
        searched.append(folder if folder is not None else root / name)
        if folder is not None and folder not in named:
            if looks_like(folder):
                return folder
            named.append(folder)
    for folder in named:
        grandchildren = child_dirs(folder)
        for name in folder_names:
            inner = grandchildren.get(name.lower())
            if inner is not None and inner not in searched:
                searched.append(inner)
                if looks_like(inner):
                    return inner
    if named:
        return named[0]
    listed = ", ".join(str(p) for p in searched)
    raise DatasetError(f"{dataset}: no dataset found; searched {listed} (expected {expected})")


def child_dirs(folder: Path) -> dict[str, Path]:
    """Lower-cased name -> path of each sub-folder (first one wins on case clashes)."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if entry.is_dir():
            found.setdefault(entry.name.lower(), Path(entry.path))
    return found


def require_dir(path: Path, dataset: str, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise a :class:`DatasetError` naming it."""
    if not path.is_dir():
        raise DatasetError(f"{dataset}: {what} folder {path} is missing")
    return path


def scan_market_folder(folder: Path, dataset: str) -> list[ImageRecord]:
    """All images of one Market-layout split folder, sorted by name, junk (pid -1) dropped.

    Non-image files (``Thumbs.db`` ships with Market-1501) are ignored.

    Raises:
        DatasetError: the folder is missing or an image name cannot be parsed.
    """
    require_dir(folder, dataset, "split")
    records = []
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_file() and is_image(e.name))
    for name in names:
        pid, camid = parse_market_name(folder / name)
        if pid == -1:
            continue
        records.append(ImageRecord(str(folder / name), pid, camid))
    return records


def build_market_layout(
    name: str, folder: Path, split_dirs: Sequence[str] = MARKET_SPLIT_DIRS, **extra
) -> ReIDDataset:
    """A :class:`ReIDDataset` from a folder with Market-style train/query/gallery folders.

    Train pids are relabelled to ``0..N-1``; query and gallery keep their original pids.
    """
    train_dir, query_dir, gallery_dir = (folder / d for d in split_dirs)
    for split_dir in (train_dir, query_dir, gallery_dir):
        require_dir(split_dir, name, "split")
    return ReIDDataset(
        name=name,
        root=folder,
        train=relabel(scan_market_folder(train_dir, name)),
        query=scan_market_folder(query_dir, name),
        gallery=scan_market_folder(gallery_dir, name),
        extra=dict(extra),
    )


def has_market_layout(folder: Path) -> bool:
    """True when ``folder`` holds at least one of the three Market split folders."""
    return any((folder / d).is_dir() for d in MARKET_SPLIT_DIRS)


MARKET_EXPECTED = "a folder holding bounding_box_train/, query/ and bounding_box_test/"
