from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crossreid.data.base import ImageRecord


def _write_crops(folder, count: int = 7, seed: int = 0) -> list[ImageRecord]:
    """Market-named random 40x20 crops in ``folder``: pid i // 2 + 1, camera i % 2."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        path = folder / f"{i // 2 + 1:04d}_c{i % 2 + 1}s1_{i:06d}_00.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(str(path), i // 2 + 1, i % 2))
    return records


@pytest.fixture(scope="session")
def write_crops():
    """``write_crops(folder, count=7, seed=0)``: writes Market-named random crops, returns
    their records."""
    return _write_crops
