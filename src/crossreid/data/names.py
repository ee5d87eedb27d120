"""Image file names: the image extensions crossreid reads and the Market-1501 naming scheme.

Market-1501, DukeMTMC-reID and CUHK03-NP all name their images ``PID_cCAM...``
(``0002_c1s1_000451_03.jpg``, ``0001_c2_f0046182.jpg``, ``0001_c1_1.png``); the dataset
parsers, image-folder discovery and the synthetic generator all read names through here.
"""

from __future__ import annotations

import os
import re

from crossreid.errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MARKET_NAME_PATTERN",
    "is_image",
    "market_ids",
    "parse_market_name",
]

#: File endings read as images (lower case), everywhere in crossreid.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")

MARKET_NAME_PATTERN = "PID_cCAM..., e.g. 0002_c1s1_000451_03.jpg"
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def is_image(name: str | os.PathLike) -> bool:
    """True when ``name`` has an image extension (case-insensitive)."""
    return os.path.splitext(os.fspath(name))[1].lower() in IMAGE_EXTENSIONS


def market_ids(filename: str | os.PathLike) -> tuple[int, int] | None:
    """``(pid, 0-based camera id)`` of a Market-style name, or ``None`` for any other name.

    >>> market_ids("0002_c3s1_000451_03.jpg"), market_ids("holiday.jpg")
    ((2, 2), None)
    """
    match = _MARKET_NAME.match(os.path.basename(os.fspath(filename)))
    if match is None or int(match.group(2)) < 1:
        return None
    return int(match.group(1)), int(match.group(2)) - 1


def parse_market_name(filename: str | os.PathLike) -> tuple[int, int]:
    """Person id and 0-based camera id of a Market-style image name.

    Accepts a bare name or a path (only the last component is read). Junk images keep
    their pid ``-1`` and distractors their pid ``0``; callers decide what to drop.

    >>> parse_market_name("bounding_box_test/0002_c3s1_000451_03.jpg")
    (2, 2)
    >>> parse_market_name("-1_c1s1_000401_03.jpg")
    (-1, 0)

    Raises:
        DatasetError: the name does not match ``PID_cCAM...`` or has camera 0.
    """
    ids = market_ids(filename)
    if ids is None:
        raise DatasetError(
            f"cannot parse person id and camera from image name {os.fspath(filename)!r}: "
            f"expected {MARKET_NAME_PATTERN}"
        )
    return ids
