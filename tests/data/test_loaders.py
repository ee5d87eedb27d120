"""Image datasets and the source / target / test loaders, including unreadable images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossreid.data.base import ImageRecord
from crossreid.data.loaders import (
    ImageDataset,
    UnlabelledImageDataset,
    build_source_loader,
    build_target_loader,
    build_test_loader,
    collate_skip_corrupt,
    infinite_batches,
)
from crossreid.data.transforms import build_transforms
from crossreid.errors import ConfigError, DatasetError

SIZE = (16, 8)


def _write_images(root: Path, num_ids: int = 4, per_id: int = 5) -> list[ImageRecord]:
    """Tiny JPEGs; identity i is a flat colour, camera = image number % 2."""
    records = []
    rng = np.random.default_rng(0)
    for pid in range(num_ids):
        colour = rng.integers(0, 256, 3)
        for j in range(per_id):
            pixels = np.broadcast_to(colour, (20, 10, 3)).astype(np.uint8).copy()
            pixels[j % 20] = 255 - pixels[j % 20]  # a distinct row per image
            path = root / f"{pid:04d}_c{j % 2}_{j:03d}.jpg"
            Image.fromarray(pixels).save(path, quality=95)
            records.append(ImageRecord(str(path), pid, j % 2))
    return records


def _corrupt(records: list[ImageRecord], truncated: int, not_image: int) -> tuple[str, str]:
    """Truncate one JPEG to half its bytes and overwrite another with text."""
    trunc = Path(records[truncated].path)
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    text = Path(records[not_image].path)
    text.write_text("this is not an image\n")
    return str(trunc), str(text)


@pytest.fixture
def records(tmp_path: Path) -> list[ImageRecord]:
    return _write_images(tmp_path)


def test_image_dataset_items(records: list[ImageRecord]) -> None:
    dataset = ImageDataset(records, build_transforms(SIZE, train=False))
    image, pid, camid, index = dataset[6]
    assert image.shape == (3, *SIZE) and image.dtype == torch.float32
    assert (pid, camid, index) == (1, 1, 6)
    assert len(ImageDataset(records, lambda im: 0, with_index=False)[0]) == 3


def test_corrupt_images_are_skipped_with_a_warning_and_counted(
    records: list[ImageRecord], caplog: pytest.LogCaptureFixture
) -> None:
    truncated, not_image = _corrupt(records, truncated=2, not_image=9)
    dataset = ImageDataset(records, build_transforms(SIZE, train=False))
    with caplog.at_level(logging.WARNING, logger="crossreid.data"):
        assert dataset[2] is None
        assert dataset[9] is None
        assert dataset[2] is None  # met again: no second warning
    messages = [r.getMessage() for r in caplog.records if r.name == "crossreid.data"]
    assert len(messages) == 2
    assert truncated in messages[0] and not_image in messages[1]
    assert dataset.num_corrupt == 2
    assert sorted(dataset.corrupt_paths) == sorted([truncated, not_image])


def test_test_loader_drops_corrupt_images_in_order(records: list[ImageRecord]) -> None:
    _corrupt(records, truncated=2, not_image=9)
    loader = build_test_loader(records, SIZE, batch_size=8, workers=0)
    batches = list(loader)
    indices = torch.cat([b[3] for b in batches]).tolist()
    assert indices == [i for i in range(len(records)) if i not in (2, 9)]
    pids = torch.cat([b[1] for b in batches]).tolist()
    assert pids == [records[i].pid for i in indices]
    assert loader.dataset.num_corrupt == 2


def test_test_loader_is_deterministic(records: list[ImageRecord]) -> None:
    loader = build_test_loader(records, SIZE, batch_size=20, workers=0)
    torch.manual_seed(0)
    first = next(iter(loader))[0]
    torch.manual_seed(1)
    assert torch.equal(first, next(iter(loader))[0])


def test_collate_of_only_failed_items_is_none() -> None:
    assert collate_skip_corrupt([None, None]) is None
    images, pids = collate_skip_corrupt([None, (torch.zeros(2), 3)])
    assert images.shape == (1, 2) and pids.tolist() == [3]


def test_source_loader_yields_pk_batches(records: list[ImageRecord]) -> None:
    loader = build_source_loader(records, SIZE, batch_size=8, num_instances=4, workers=0)
    assert len(loader) == 2  # 4 ids x 5 images: one chunk of 4 each, 2 ids per batch
    for images, pids, camids, indices in loader:
        assert images.shape == (8, 3, *SIZE)
        assert pids.view(2, 4).eq(pids.view(2, 4)[:, :1]).all()
        assert pids[0] != pids[4]
        assert pids.tolist() == [records[i].pid for i in indices]
        assert camids.tolist() == [records[i].camid for i in indices]


def test_camera_aware_source_loader_takes_each_identitys_images_from_both_cameras(
    records: list[ImageRecord],
) -> None:
    loader = build_source_loader(
        records, SIZE, batch_size=4, num_instances=2, workers=0, camera_aware=True
    )
    for _, pids, camids, _ in loader:  # every identity has images from cameras 0 and 1
        assert pids.view(2, 2).eq(pids.view(2, 2)[:, :1]).all()
        assert camids.view(2, 2).sum(dim=1).tolist() == [1, 1]


def test_source_loader_replaces_a_corrupt_image_by_one_of_the_same_id(
    records: list[ImageRecord],
) -> None:
    _corrupt(records, truncated=0, not_image=1)
    loader = build_source_loader(records, SIZE, batch_size=8, num_instances=4, workers=0)
    stream = infinite_batches(loader)
    for _ in range(6):
        images, pids, _, indices = next(stream)
        assert images.shape[0] == 8
        assert pids.view(2, 4).eq(pids.view(2, 4)[:, :1]).all()
        assert not {0, 1} & set(indices.tolist())
    assert loader.dataset.num_corrupt == 2


def test_source_loader_rejects_bad_pk_options(records: list[ImageRecord]) -> None:
    with pytest.raises(ConfigError, match="batch size 6"):
        build_source_loader(records, SIZE, batch_size=6, num_instances=4, workers=0)
    one_id = [r for r in records if r.pid == 0]
    with pytest.raises(ConfigError, match="the data has 1"):
        build_source_loader(one_id, SIZE, batch_size=8, num_instances=4, workers=0)


def test_target_loader_never_yields_pids(records: list[ImageRecord]) -> None:
    loader = build_target_loader(records, SIZE, batch_size=6, workers=0, seed=3)
    assert isinstance(loader.dataset, UnlabelledImageDataset)
    images, camids, indices = next(iter(loader))
    assert images.shape == (6, 3, *SIZE)
    assert camids.tolist() == [records[i].camid for i in indices]
    # Scrambled target pids give bit-identical batches: the pids are never read.
    scrambled = [ImageRecord(r.path, 1000 - 7 * i, r.camid) for i, r in enumerate(records)]
    other = build_target_loader(scrambled, SIZE, batch_size=6, workers=0, seed=3)
    for a, b in zip(loader, other, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_infinite_batches_resumes_exactly_at_a_step(records: list[ImageRecord]) -> None:
    def stream(start: int):
        loader = build_source_loader(
            records, SIZE, batch_size=8, num_instances=4, workers=0, seed=1, random_erasing=0.5
        )
        return infinite_batches(loader, start_step=start)

    uninterrupted = stream(0)
    reference = [next(uninterrupted) for _ in range(7)]  # 2 batches per epoch: 3+ epochs
    resumed = stream(3)
    for expected in reference[3:]:
        got = next(resumed)
        assert all(torch.equal(x, y) for x, y in zip(expected, got, strict=True))
    # Epochs differ: step 2 (epoch 1) is not a copy of step 0 (epoch 0).
    assert not torch.equal(reference[0][0], reference[2][0])


def test_loading_leaves_the_global_random_stream_untouched(records: list[ImageRecord]) -> None:
    loader = build_source_loader(
        records, SIZE, batch_size=8, num_instances=4, workers=0, random_erasing=0.5
    )
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(infinite_batches(loader))
    assert torch.equal(torch.rand(3), expected)


def test_worker_processes_give_the_same_stream_and_share_the_corrupt_count(
    records: list[ImageRecord],
) -> None:
    _corrupt(records, truncated=3, not_image=12)
    kwargs = dict(batch_size=8, num_instances=4, seed=4, random_erasing=0.5)
    serial_loader = build_source_loader(records, SIZE, workers=0, **kwargs)
    serial = infinite_batches(serial_loader)
    parallel_loader = build_source_loader(records, SIZE, workers=2, **kwargs)
    parallel = infinite_batches(parallel_loader)
    for _ in range(4):  # two epochs, so the persistent workers are reused
        a, b = next(serial), next(parallel)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # Failures met inside the worker processes are counted in this one.
    assert serial_loader.dataset.num_corrupt >= 1
    assert parallel_loader.dataset.num_corrupt == serial_loader.dataset.num_corrupt


def test_infinite_batches_stops_when_nothing_is_readable(tmp_path: Path) -> None:
    records = []
    for i in range(4):
        path = tmp_path / f"{i}.jpg"
        path.write_text("broken")
        records.append(ImageRecord(str(path), 0, 0))
    loader = build_target_loader(records, SIZE, batch_size=2, workers=0)
    with pytest.raises(DatasetError, match="no readable image"):
        next(infinite_batches(loader))
    assert loader.dataset.num_corrupt == 4
