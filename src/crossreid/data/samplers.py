"""Batch samplers: identity-balanced PK batches for the source, shuffled batches for the target.

Both samplers are *batch* samplers (pass them as ``DataLoader(batch_sampler=...)``), seeded
and deterministic: the batches of epoch ``e`` are a function of ``(seed, e)`` only, so a run
resumed at step ``n`` can restart the stream exactly where it stopped with
``set_epoch(n // len(sampler), start_batch=n % len(sampler))``.

Distributed training (``num_replicas > 1``): every rank draws the same *global* batches
from the shared seed (``num_replicas`` × the per-rank batch) and rank ``r`` keeps the
``r``-th slice. For :class:`PKSampler` the slices hold disjoint identities, so one training
step sees ``num_replicas × P`` distinct identities, each with K images, and every rank a
P×K batch of its own. Every rank gets the same number of batches per epoch, which DDP
needs.

:class:`SeededBatches` wraps either sampler and pairs each index with a per-sample seed;
the datasets in :mod:`crossreid.data.loaders` seed the augmentation with it, which makes
the augmented stream independent of the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from crossreid.errors import ConfigError

__all__ = ["PKSampler", "RandomBatchSampler", "SeededBatches"]


def _check_replicas(num_replicas: int, rank: int) -> None:
    if num_replicas < 1:
        raise ConfigError(f"num_replicas={num_replicas} must be >= 1")
    if not 0 <= rank < num_replicas:
        raise ConfigError(f"rank={rank} must be in [0, {num_replicas})")


def _camera_index(data_source: Sequence) -> np.ndarray:
    """Camera ids of ``data_source`` as ``0..cameras-1``, per dataset index."""
    camids = [getattr(item, "camid", None) for item in data_source]
    if any(camid is None for camid in camids):
        raise ConfigError("camera-aware PK sampling needs records with a camid (e.g. ImageRecord)")
    return np.unique(np.asarray(camids, dtype=np.int64), return_inverse=True)[1].reshape(-1)


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared epoch/offset bookkeeping: subclasses implement ``epoch_batches(epoch)``."""

    def __init__(self, seed: int, num_replicas: int, rank: int) -> None:
        _check_replicas(num_replicas, rank)
        if seed < 0:
            raise ConfigError(f"seed {seed} must be >= 0")
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch the next ``iter()`` yields, starting at batch ``start_batch``."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch={start_batch} must be in [0, {len(self)}]")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """This rank's batches of ``epoch`` as an int64 array ``[len(self), batch_size]``."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        for row in batches[self.start_batch :]:
            yield row.tolist()


class PKSampler(_EpochBatchSampler):
    """Identity-balanced batches: P identities × K images (``K = num_instances``).

    Each batch holds ``P = batch_size // num_instances`` distinct identities with exactly K
    indices each, grouped by identity (``batch[i*K:(i+1)*K]`` share a pid). An identity with
    at least K images contributes K distinct images; one with fewer is sampled with
    replacement.

    Epoch length (as torchreid's ``RandomIdentitySampler``, so an epoch shows roughly every
    image once): identity ``i`` with ``n_i`` images makes ``max(n_i, K) // K`` chunks of K,
    and an epoch has ``total_chunks // (P × num_replicas)`` batches. The images of each
    identity are shuffled per epoch and cut into chunks; each (global) batch draws its
    identities without replacement, weighted by their chunks not yet used, and when fewer
    identities than a batch needs have chunks left a new pass over all chunks begins.

    With ``camera_aware`` each identity's shuffled images are reordered to cycle through
    its cameras (round ``r`` holds each camera's ``r``-th image, the cameras in the same
    epoch-random order every round): an identity's first chunk spans ``min(K, cameras)``
    distinct cameras, and every chunk does when its cameras hold equally many images. An
    identity with fewer than K images repeats them in that order instead of drawing with
    replacement, so its chunk holds all its cameras.

    Args:
        data_source: records with a ``pid`` attribute (e.g. :class:`ImageRecord`) or the
            pids themselves, one per dataset index.
        batch_size: images per batch **per rank** (P × K).
        num_instances: K, images per identity in a batch.
        seed: shared by all ranks.
        num_replicas, rank: distributed world size and this process's rank.
        camera_aware: spread each identity's K images over its cameras (needs records
            with a ``camid`` attribute).

    Raises:
        ConfigError: ``batch_size`` not divisible by K, fewer than 2 identities, fewer
            identities than ``P × num_replicas``, or ``camera_aware`` without camera ids.

    Example::

        >>> sampler = PKSampler(dataset.train, batch_size=32, num_instances=4, seed=0)
        >>> loader = DataLoader(image_dataset, batch_sampler=sampler)   # doctest: +SKIP
        >>> sampler.set_epoch(3)                                         # before iter()
    """

    def __init__(
        self,
        data_source: Sequence,
        batch_size: int,
        num_instances: int,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        camera_aware: bool = False,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if num_instances < 1:
            raise ConfigError(f"num_instances={num_instances} must be >= 1")
        if batch_size < num_instances or batch_size % num_instances:
            raise ConfigError(
                f"batch size {batch_size} is not a positive multiple of "
                f"num_instances {num_instances} (a PK batch is P identities x K images)"
            )
        pids = np.asarray([getattr(item, "pid", item) for item in data_source], dtype=np.int64)
        unique_pids, pid_index, counts = np.unique(pids, return_inverse=True, return_counts=True)
        if len(unique_pids) < 2:
            raise ConfigError(
                f"PK sampling needs at least 2 identities, the data has {len(unique_pids)}"
            )
        self.batch_size = int(batch_size)
        self.num_instances = int(num_instances)
        self.num_pids_per_batch = self.batch_size // self.num_instances
        global_pids = self.num_pids_per_batch * self.num_replicas
        if global_pids > len(unique_pids):
            raise ConfigError(
                f"a batch needs {global_pids} distinct identities "
                f"({self.num_pids_per_batch} per rank x {self.num_replicas} ranks), "
                f"the data has only {len(unique_pids)}"
            )
        # Precomputed once: dataset indices grouped by identity (pid_index order), with
        # each identity's block starting at offsets[i] and holding counts[i] entries.
        self._num_samples = len(pids)
        self._pid_index = pid_index.astype(np.int64)
        self._counts = counts.astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)[:-1]]).astype(np.int64)
        self._chunks = np.maximum(self._counts, self.num_instances) // self.num_instances
        self._global_pids = global_pids
        self._num_batches = max(1, int(self._chunks.sum()) // global_pids)
        self._camera_index = _camera_index(data_source) if camera_aware else None

    @property
    def num_pids(self) -> int:
        return len(self._counts)

    def __len__(self) -> int:
        return self._num_batches

    def epoch_batches(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(epoch)])
        k = self.num_instances
        # Group dataset indices by identity in a fresh random order: a random permutation
        # stably sorted by identity keeps the randomness within each identity's block.
        order = rng.permutation(self._num_samples)
        grouped = order[np.argsort(self._pid_index[order], kind="stable")]
        if self._camera_index is not None:
            grouped = self._cycle_cameras(grouped)

        remaining = self._chunks.copy()
        used = np.zeros_like(self._chunks)
        arange_k = np.arange(k)
        out = np.empty((self._num_batches, self._global_pids, k), dtype=np.int64)
        for b in range(self._num_batches):
            if np.count_nonzero(remaining) < self._global_pids:
                remaining += self._chunks  # a new pass over every identity's chunks
            chosen = rng.choice(
                self.num_pids, self._global_pids, replace=False, p=remaining / remaining.sum()
            )
            counts = self._counts[chosen]
            chunk = used[chosen] % self._chunks[chosen]
            sequential = chunk[:, None] * k + arange_k  # the next unused chunk of K
            with_replacement = (rng.random((len(chosen), k)) * counts[:, None]).astype(np.int64)
            if self._camera_index is not None:  # repeat the cycle: each camera at least once
                with_replacement = arange_k % counts[:, None]
            within = np.where((counts >= k)[:, None], sequential, with_replacement)
            out[b] = grouped[self._offsets[chosen][:, None] + within]
            used[chosen] += 1
            remaining[chosen] -= 1
        per_rank = self.num_pids_per_batch
        mine = out[:, self.rank * per_rank : (self.rank + 1) * per_rank]
        return mine.reshape(self._num_batches, self.batch_size)

    def _cycle_cameras(self, grouped: np.ndarray) -> np.ndarray:
        """Reorder each identity's block of ``grouped`` (dataset indices in random order)
        by (round, camera): round ``r`` holds each camera's ``r``-th image, the cameras in
        the order of their first image in the block. One camera order for every round keeps
        a chunk that straddles two full rounds free of repeats."""
        n = len(grouped)
        pid = self._pid_index[grouped]
        camera = self._camera_index[grouped]
        position = np.arange(n)
        # Sorted by (identity, camera, position): each image's rank within its camera, and
        # the position of its camera's first image in the block.
        by_camera = np.lexsort((position, camera, pid))
        pair = pid[by_camera] * (int(camera.max()) + 1) + camera[by_camera]
        starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
        sizes = np.diff(np.r_[starts, n])
        rank = np.empty(n, dtype=np.int64)
        rank[by_camera] = position - np.repeat(starts, sizes)
        first = np.empty(n, dtype=np.int64)
        first[by_camera] = np.repeat(by_camera[starts], sizes)
        return grouped[np.lexsort((first, rank, pid))]


class RandomBatchSampler(_EpochBatchSampler):
    """Shuffled batches of ``batch_size`` per rank, dropping the last incomplete one.

    An epoch is one random permutation of the dataset cut into global batches of
    ``batch_size × num_replicas``; rank ``r`` takes the ``r``-th slice of each, so the
    ranks' images are disjoint within an epoch. A dataset smaller than one global batch
    gives one batch per epoch, filled by repeating the permutation.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if num_samples < 1:
            raise ConfigError("cannot sample batches from an empty dataset")
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size} must be >= 1")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self._global = self.batch_size * self.num_replicas
        self._num_batches = max(1, self.num_samples // self._global)

    def __len__(self) -> int:
        return self._num_batches

    def epoch_batches(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(epoch)])
        perm = rng.permutation(self.num_samples)
        needed = self._num_batches * self._global
        if needed > len(perm):
            perm = np.resize(perm, needed)  # np.resize repeats the array cyclically
        batches = perm[:needed].reshape(self._num_batches, self.num_replicas, self.batch_size)
        return batches[:, self.rank]


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """Pairs every index of a seeded batch sampler with its own augmentation seed.

    Yields ``[(index, sample_seed), ...]``. The seed is a function of ``(seed, stream,
    epoch, batch number, rank, position)``, so the same sample position gets the same
    augmentation however many workers load it and after a resume. ``stream`` keeps two
    loaders built with the same seed (source and target) from sharing augmentations.
    """

    def __init__(self, batch_sampler: _EpochBatchSampler, seed: int, stream: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.seed = int(seed)
        self.stream = int(stream)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch, start_batch)

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        inner = self.batch_sampler
        epoch, start = inner.epoch, inner.start_batch
        for number, batch in enumerate(inner, start=start):
            rng = np.random.default_rng([self.seed, self.stream, epoch, number, inner.rank])
            seeds = rng.integers(0, 2**63 - 1, size=len(batch), dtype=np.int64).tolist()
            yield list(zip(batch, seeds, strict=True))
