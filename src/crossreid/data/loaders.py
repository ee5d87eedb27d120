"""Datasets and data loaders for the labelled source, the unlabelled target and evaluation.

Three builders cover what training and evaluation need::

    source = build_source_loader(ds_a.train, (256, 128), batch_size=32, num_instances=4)
    target = build_target_loader(ds_b.train, (256, 128), batch_size=32)
    for step, ((x_s, pids, camids, idx), (x_t, t_camids, t_idx)) in enumerate(
        zip(infinite_batches(source), infinite_batches(target))
    ):
        ...
    test = build_test_loader(ds_b.query, (256, 128), batch_size=128)

* The **source** loader yields ``(images [B,3,H,W], pids [B], camids [B], indices [B])`` in
  PK batches (:class:`~crossreid.data.samplers.PKSampler`).
* The **target** loader yields ``(images, camids, indices)``: its dataset never holds the
  person ids, so training cannot read target labels even by mistake.
* The **test** loader yields ``(images, pids, camids, indices)`` in dataset order with no
  augmentation.

Unreadable images (truncated, not an image, missing) never stop a loop: the failure is
logged once per file on the ``crossreid.data`` logger with the path, recorded in a
shared-memory flag per image (so :attr:`ImageDataset.num_corrupt` counts failures seen by
every worker process), and the sample is either replaced by another readable image of the
same identity (training loaders, which keeps PK batches whole) or dropped from its batch
(test loader; use the returned ``indices`` to know which images a batch holds). A batch
whose every image failed comes out as ``None``; :func:`infinite_batches` skips it.

Augmentation is seeded per sample (see :class:`~crossreid.data.samplers.SeededBatches`):
the training streams depend on ``seed`` only, not on the number of workers, and
``infinite_batches(loader, start_step=n)`` resumes them exactly at step ``n``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from crossreid.data.base import ImageRecord
from crossreid.data.samplers import PKSampler, RandomBatchSampler, SeededBatches
from crossreid.data.transforms import build_transforms
from crossreid.errors import ConfigError, DatasetError

logger = logging.getLogger("crossreid.data")

__all__ = [
    "ImageDataset",
    "UnlabelledImageDataset",
    "build_source_loader",
    "build_target_loader",
    "build_test_loader",
    "collate_skip_corrupt",
    "default_workers",
    "infinite_batches",
    "log_corrupt_summary",
]

# What PIL raises for unreadable files: UnidentifiedImageError and "image file is
# truncated" are OSErrors; malformed headers surface as SyntaxError/ValueError/EOFError.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# Fallback attempts for a corrupt sample before giving up on it (bounds the cost when a
# large part of a dataset is unreadable).
_MAX_FALLBACKS = 32


def default_workers() -> int:
    """Loader worker processes by default: ``min(4, cpu_count)``."""
    return min(4, os.cpu_count() or 1)


def _split_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


class _ImageFiles(Dataset):
    """Decoding, seeded transforms and corrupt-file bookkeeping shared by both datasets."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], Any]) -> None:
        self._paths = [str(p) for p in paths]
        self.transform = transform
        # Shared memory, so flags set inside worker processes are visible to the main one.
        self._corrupt = torch.zeros(len(self._paths), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def num_corrupt(self) -> int:
        """Distinct unreadable images met so far (across all worker processes)."""
        return int(self._corrupt.sum())

    @property
    def corrupt_paths(self) -> list[str]:
        """Paths of the unreadable images met so far."""
        return [self._paths[i] for i in torch.nonzero(self._corrupt).flatten().tolist()]

    def _decode(self, index: int) -> Image.Image | None:
        path = self._paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")  # convert() forces the full decode here
        except _DECODE_ERRORS as exc:
            if not self._corrupt[index]:
                self._corrupt[index] = 1
                logger.warning("skipping unreadable image %s (%s)", path, exc)
            return None

    def _fallbacks(self, index: int) -> Iterable[int]:
        return ()

    def _load(self, index: int) -> tuple[int, Image.Image] | None:
        """The image at ``index``, or at its first readable fallback; ``None`` if none."""
        image = self._decode(index)
        if image is not None:
            return index, image
        tried = 0
        for other in self._fallbacks(index):
            if self._corrupt[other]:
                continue
            image = self._decode(other)
            if image is not None:
                return other, image
            tried += 1
            if tried >= _MAX_FALLBACKS:
                break
        return None

    def _apply_transform(self, image: Image.Image, seed: int | None) -> Any:
        if seed is None:
            return self.transform(image)
        generator = torch.default_generator
        # In the main process (workers=0) the global CPU generator belongs to the training
        # loop too: restore it so loading leaves its random stream untouched.
        state = generator.get_state() if get_worker_info() is None else None
        generator.manual_seed(seed)
        try:
            return self.transform(image)
        finally:
            if state is not None:
                generator.set_state(state)


class ImageDataset(_ImageFiles):
    """Labelled images: ``dataset[i]`` → ``(image, pid, camid, index)``.

    Args:
        records: :class:`ImageRecord` list (``path, pid, camid``).
        transform: PIL image → tensor, e.g. from :func:`build_transforms`.
        with_index: append the dataset index (of the image actually loaded) to each item.
        replace_corrupt: an unreadable image is replaced by the next readable image of the
            same identity (deterministic); otherwise the item is ``None`` and
            :func:`collate_skip_corrupt` drops it from its batch.

    Items may be requested as ``dataset[i]`` or ``dataset[(i, seed)]``; with a seed the
    transform's randomness is seeded with it.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], Any],
        *,
        with_index: bool = True,
        replace_corrupt: bool = False,
    ) -> None:
        super().__init__([r.path for r in records], transform)
        self._pids = [int(r.pid) for r in records]
        self._camids = [int(r.camid) for r in records]
        self.with_index = with_index
        self.replace_corrupt = replace_corrupt
        self._same_pid: dict[int, list[int]] | None = None

    def _fallbacks(self, index: int) -> Iterable[int]:
        if not self.replace_corrupt:
            return ()
        if self._same_pid is None:
            groups: dict[int, list[int]] = {}
            for i, pid in enumerate(self._pids):
                groups.setdefault(pid, []).append(i)
            self._same_pid = groups
        group = self._same_pid[self._pids[index]]
        start = group.index(index)
        return group[start + 1 :] + group[:start]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple | None:
        index, seed = _split_key(key)
        loaded = self._load(index)
        if loaded is None:
            return None
        index, image = loaded
        item = (self._apply_transform(image, seed), self._pids[index], self._camids[index])
        return (*item, index) if self.with_index else item


class UnlabelledImageDataset(_ImageFiles):
    """Images without person ids: ``dataset[i]`` → ``(image, camid, index)``.

    The pids of ``records`` are discarded on construction, which is what makes "target
    labels are never read by training" hold by construction. With ``replace_corrupt`` an
    unreadable image is replaced by the next readable one in dataset order.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], Any],
        *,
        replace_corrupt: bool = False,
    ) -> None:
        super().__init__([r.path for r in records], transform)
        self._camids = [int(r.camid) for r in records]
        self.replace_corrupt = replace_corrupt

    def _fallbacks(self, index: int) -> Iterable[int]:
        if not self.replace_corrupt:
            return ()
        n = len(self)
        return ((index + step) % n for step in range(1, n))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple | None:
        index, seed = _split_key(key)
        loaded = self._load(index)
        if loaded is None:
            return None
        index, image = loaded
        return self._apply_transform(image, seed), self._camids[index], index


def collate_skip_corrupt(batch: list[tuple | None]) -> tuple | None:
    """``default_collate`` after dropping failed (``None``) items; ``None`` if all failed."""
    items = [item for item in batch if item is not None]
    if not items:
        return None
    return tuple(default_collate(items))


def log_corrupt_summary(dataset: Dataset, what: str = "data") -> int:
    """Log how many unreadable images ``dataset`` has met (if any) and where, e.g. ``epoch 3:
    2 unreadable image(s) skipped so far, in data/A/bounding_box_train`` (the source and
    the target loader of a run log the same ``what``); return the count."""
    count = int(getattr(dataset, "num_corrupt", 0))
    if count:
        folders = sorted({os.path.dirname(path) for path in getattr(dataset, "corrupt_paths", [])})
        where = f"{folders[0]}" + (f" and {len(folders) - 1} more folder(s)" if folders[1:] else "")
        suffix = f", in {where}" if folders else ""
        logger.warning("%s: %d unreadable image(s) skipped so far%s", what, count, suffix)
    return count


def _resolve_pin(pin_memory: bool | None) -> bool:
    return torch.cuda.is_available() if pin_memory is None else bool(pin_memory)


def _loader(
    dataset: Dataset,
    batch_sampler: SeededBatches,
    workers: int | None,
    pin_memory: bool | None,
    seed: int,
) -> DataLoader:
    workers = default_workers() if workers is None else int(workers)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate_skip_corrupt,
        pin_memory=_resolve_pin(pin_memory),
        # Training streams are iterated epoch after epoch: keep the workers alive.
        persistent_workers=workers > 0,
        # A private generator: creating an iterator draws a worker base seed from it,
        # which would otherwise shift the global RNG stream training relies on.
        generator=torch.Generator().manual_seed(seed),
    )


def build_source_loader(
    records: Sequence[ImageRecord],
    image_size: Sequence[int],
    batch_size: int,
    num_instances: int,
    *,
    workers: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    random_erasing: float = 0.0,
    flip_prob: float = 0.5,
    pad: int = 10,
    pin_memory: bool | None = None,
    camera_aware: bool = False,
) -> DataLoader:
    """Labelled PK batches: ``(images [B,3,H,W] float32, pids [B], camids [B], indices [B])``.

    ``B = batch_size`` per rank (P identities × ``num_instances`` images, grouped by
    identity); full batches only. An epoch is ``len(loader)`` batches; iterate with
    :func:`infinite_batches` for step-based training. ``workers=None`` means
    :func:`default_workers`; ``pin_memory=None`` pins only when CUDA is available.
    ``camera_aware`` takes each identity's K images from as many of its cameras as it has
    (see :class:`~crossreid.data.samplers.PKSampler`).
    Raises :class:`~crossreid.errors.ConfigError` for a bad batch size / K / too few ids.
    """
    transform = build_transforms(
        image_size, train=True, flip_prob=flip_prob, pad=pad, random_erasing=random_erasing
    )
    dataset = ImageDataset(records, transform, with_index=True, replace_corrupt=True)
    sampler = PKSampler(
        records,
        batch_size,
        num_instances,
        seed=seed,
        num_replicas=world_size,
        rank=rank,
        camera_aware=camera_aware,
    )
    return _loader(dataset, SeededBatches(sampler, seed, stream=0), workers, pin_memory, seed)


def build_target_loader(
    records: Sequence[ImageRecord],
    image_size: Sequence[int],
    batch_size: int,
    *,
    workers: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    random_erasing: float = 0.0,
    flip_prob: float = 0.5,
    pad: int = 10,
    pin_memory: bool | None = None,
) -> DataLoader:
    """Unlabelled shuffled batches: ``(images [B,3,H,W] float32, camids [B], indices [B])``.

    Never yields person ids (the dataset drops them). Same augmentation as the source;
    its random stream differs from a source loader built with the same ``seed``.
    """
    transform = build_transforms(
        image_size, train=True, flip_prob=flip_prob, pad=pad, random_erasing=random_erasing
    )
    dataset = UnlabelledImageDataset(records, transform, replace_corrupt=True)
    sampler = RandomBatchSampler(
        len(records), batch_size, seed=seed, num_replicas=world_size, rank=rank
    )
    return _loader(dataset, SeededBatches(sampler, seed, stream=1), workers, pin_memory, seed)


def build_test_loader(
    records: Sequence[ImageRecord],
    image_size: Sequence[int],
    batch_size: int,
    workers: int | None = None,
    *,
    pin_memory: bool | None = None,
) -> DataLoader:
    """Evaluation batches in dataset order: ``(images, pids [B], camids [B], indices [B])``.

    Resize + normalise only. Unreadable images are dropped from their batch (check
    ``indices``; a batch with none left is ``None``); afterwards
    ``loader.dataset.num_corrupt`` says how many, and :func:`log_corrupt_summary` logs it.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be >= 1")
    workers = default_workers() if workers is None else int(workers)
    dataset = ImageDataset(records, build_transforms(image_size, train=False), with_index=True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        collate_fn=collate_skip_corrupt,
        pin_memory=_resolve_pin(pin_memory),
    )


def infinite_batches(loader: DataLoader, *, start_step: int = 0) -> Iterator[tuple]:
    """Endless stream of ``loader``'s batches for step-based training.

    Epoch ``e`` is drawn with ``batch_sampler.set_epoch(e)``, so the stream is a function of
    the sampler's seed. ``start_step=n`` resumes at the ``n``-th batch of the uninterrupted
    stream (epoch ``n // len(loader)``, batch ``n % len(loader)``) without loading the
    skipped batches. ``None`` batches (every image unreadable) are skipped, and at the end
    of each epoch the number of unreadable images met so far is logged if it grew.

    Raises:
        DatasetError: a whole epoch produced no readable image.
    """
    per_epoch = len(loader)
    if per_epoch == 0:
        raise DatasetError("the data loader has no batches")
    epoch, skip = divmod(int(start_step), per_epoch)
    sampler = loader.batch_sampler
    can_seek = hasattr(sampler, "set_epoch")
    if skip and not can_seek:
        raise ValueError("start_step needs a batch sampler with set_epoch(epoch, start_batch)")
    reported = int(getattr(loader.dataset, "num_corrupt", 0))
    while True:
        if can_seek:
            sampler.set_epoch(epoch, skip)
        produced = 0
        for batch in loader:
            if batch is None:
                continue
            produced += 1
            yield batch
        if not produced:
            raise DatasetError(f"no readable image in a whole epoch of {len(loader.dataset)}")
        count = int(getattr(loader.dataset, "num_corrupt", 0))
        if count > reported:
            log_corrupt_summary(loader.dataset, f"epoch {epoch}")
            reported = count
        epoch += 1
        skip = 0
