"""Corrupt and zero-byte images in a dataset's splits: skipped and counted by every loader."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from crossreid.data import ReIDDataset, SyntheticConfig, build_dataset, generate_domain
from crossreid.data.base import ImageRecord
from crossreid.data.loaders import (
    build_source_loader,
    build_target_loader,
    build_test_loader,
    infinite_batches,
    log_corrupt_summary,
)

SIZE = (32, 16)
CONFIG = SyntheticConfig(domain="B", num_ids=8, images_per_id=6, num_cameras=2, size=SIZE)


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


DAMAGE: dict[str, Callable[[Path], None]] = {"zero-byte": _zero_bytes, "truncated": _truncated}


@pytest.fixture(scope="module")
def clean_domain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corrupt") / "B"
    generate_domain(CONFIG, root, progress=False)
    return root


@pytest.fixture(params=sorted(DAMAGE))
def damaged(request, clean_domain: Path, tmp_path: Path) -> tuple[ReIDDataset, dict[str, set]]:
    """A copy of the domain with two images of every split damaged; the damaged indices."""
    root = tmp_path / "B"
    shutil.copytree(clean_domain, root)
    dataset = build_dataset("custom", root)
    bad: dict[str, set] = {}
    for split in ("train", "query", "gallery"):
        records: list[ImageRecord] = getattr(dataset, split)
        bad[split] = {0, len(records) // 2}
        for index in bad[split]:
            DAMAGE[request.param](Path(records[index].path))
    return dataset, bad


@pytest.mark.parametrize("split", ["query", "gallery"])
def test_test_loader_drops_and_counts_damaged_images(damaged, split: str, caplog) -> None:
    dataset, bad = damaged
    records = getattr(dataset, split)
    loader = build_test_loader(records, SIZE, batch_size=7, workers=0)
    indices = torch.cat([batch[3] for batch in loader if batch is not None]).tolist()
    assert indices == [i for i in range(len(records)) if i not in bad[split]]
    assert loader.dataset.num_corrupt == 2
    assert sorted(loader.dataset.corrupt_paths) == sorted(records[i].path for i in bad[split])
    with caplog.at_level(logging.WARNING, logger="crossreid.data"):
        assert log_corrupt_summary(loader.dataset, split) == 2
    folder = str(Path(records[min(bad[split])].path).parent)  # which dataset, which split
    assert caplog.messages[-1] == f"{split}: 2 unreadable image(s) skipped so far, in {folder}"


def test_source_loader_replaces_and_counts_damaged_train_images(damaged) -> None:
    dataset, bad = damaged
    loader = build_source_loader(dataset.train, SIZE, batch_size=8, num_instances=4, workers=0)
    stream = infinite_batches(loader)
    for _ in range(6 * len(loader)):  # enough epochs to draw every image
        images, pids, _, indices = next(stream)
        assert images.shape == (8, 3, *SIZE)  # batches stay whole: PK is kept
        assert pids.view(2, 4).eq(pids.view(2, 4)[:, :1]).all()
        assert not bad["train"] & set(indices.tolist())
    assert loader.dataset.num_corrupt == 2


def test_target_loader_replaces_and_counts_damaged_images(damaged) -> None:
    dataset, bad = damaged
    loader = build_target_loader(dataset.train, SIZE, batch_size=8, workers=0)
    stream = infinite_batches(loader)
    for _ in range(2 * len(loader)):
        images, _, indices = next(stream)
        assert images.shape == (8, 3, *SIZE)
        assert not bad["train"] & set(indices.tolist())
    assert loader.dataset.num_corrupt == 2
