"""Image files as records: a folder of person crops, or images named one by one.

Market-1501 style names (``0002_c1s1_000451_03.jpg``) give pid and 0-based camera id;
other images get ``pid = camid = -1``. Files without an image extension are skipped with
one warning naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from crossreid.data.base import ImageRecord
from crossreid.data.names import IMAGE_EXTENSIONS, is_image, market_ids
from crossreid.errors import DatasetError

logger = logging.getLogger(__name__)

__all__ = ["records_from_folder", "records_from_paths"]


def _record_for(path: Path) -> ImageRecord:
    pid, camid = market_ids(path.name) or (-1, -1)
    return ImageRecord(str(path), pid, camid)


def _warn_skipped(skipped: list[str], where: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (
            f" (+{len(skipped) - 5} more)" if len(skipped) > 5 else ""
        )
        logger.warning(
            "skipping %d non-image file(s) %s (expected %s): %s",
            len(skipped),
            where,
            "/".join(IMAGE_EXTENSIONS),
            shown,
        )


def records_from_paths(paths: Sequence[str | Path]) -> list[ImageRecord]:
    """Image files given one by one as :class:`ImageRecord`, in the given order.

    Market-1501 style names (``0002_c1s1_000451_03.jpg``) give pid and 0-based camera id;
    other images get ``pid = camid = -1``. Files without an image extension are skipped
    with one warning naming them.

    Raises:
        DatasetError: a path does not exist or is not a file, or no image is left.
    """
    records: list[ImageRecord] = []
    skipped: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise DatasetError(f"image {path} does not exist or is not a file")
        if is_image(path):
            records.append(_record_for(path))
        else:
            skipped.append(str(path))
    _warn_skipped(skipped, "among the images")
    if not records:
        raise DatasetError(
            f"no image file ({'/'.join(IMAGE_EXTENSIONS)}) among {len(skipped)} path(s)"
        )
    return records


def records_from_folder(folder: str | Path) -> list[ImageRecord]:
    """Every image file under ``folder`` (recursively, sorted) as an :class:`ImageRecord`.

    Files named in Market-1501 style (``0002_c1s1_000451_03.jpg``) get their pid and
    0-based camera id; other images get ``pid = camid = -1``. Files without an image
    extension are skipped with one warning naming them (hidden files are ignored).

    Raises:
        DatasetError: the folder does not exist or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist or is not a folder")
    records: list[ImageRecord] = []
    skipped: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue
        if is_image(path):
            records.append(_record_for(path))
        else:
            skipped.append(str(path))
    _warn_skipped(skipped, f"in {folder}")
    if not records:
        raise DatasetError(f"no image file ({'/'.join(IMAGE_EXTENSIONS)}) under {folder}")
    return records
