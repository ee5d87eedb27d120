"""PK sampler, shuffled batch sampler and per-sample seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreid.data.base import ImageRecord
from crossreid.data.samplers import PKSampler, RandomBatchSampler, SeededBatches
from crossreid.errors import ConfigError


def _pids(counts: list[int]) -> list[int]:
    """Dataset pids where identity i has counts[i] images, interleaved (not sorted)."""
    pids = [pid for pid, n in enumerate(counts) for _ in range(n)]
    return [pids[i] for i in np.random.default_rng(123).permutation(len(pids))]


def _assert_pk_batch(batch: list[int], pids: list[int], p: int, k: int) -> None:
    assert len(batch) == p * k
    batch_pids = np.asarray(pids)[batch].reshape(p, k)
    assert (batch_pids == batch_pids[:, :1]).all(), "each block of K shares one identity"
    assert len(set(batch_pids[:, 0].tolist())) == p, "the P identities are distinct"


def test_pk_batches_hold_p_distinct_ids_with_k_images_each() -> None:
    counts = [1, 2, 4, 5, 8, 3, 6, 7]
    pids = _pids(counts)
    sampler = PKSampler(pids, batch_size=12, num_instances=4, seed=0)
    # Chunks per id: max(n, 4) // 4 = 1,1,1,1,2,1,1,1 → 9 chunks, 3 ids per batch.
    assert len(sampler) == 3
    batches = list(sampler)
    assert len(batches) == 3
    for batch in batches:
        _assert_pk_batch(batch, pids, p=3, k=4)
        for block in np.asarray(batch).reshape(3, 4):
            n = counts[pids[block[0]]]
            if n >= 4:
                assert len(set(block.tolist())) == 4, "ids with >= K images: K distinct images"
            else:
                assert len(set(block.tolist())) <= n, "ids with < K images repeat"


def test_id_with_a_single_image_repeats_it_k_times() -> None:
    records = [ImageRecord(f"{i}.jpg", pid, 0) for i, pid in enumerate([0, 1, 1, 1, 1])]
    sampler = PKSampler(records, batch_size=8, num_instances=4, seed=0)
    (batch,) = list(sampler)
    assert sorted(batch[:4] if batch[0] == 0 else batch[4:]) == [0, 0, 0, 0]


def test_balanced_data_shows_every_id_exactly_once_per_epoch() -> None:
    pids = _pids([4] * 8)
    sampler = PKSampler(pids, batch_size=8, num_instances=4, seed=5)
    batches = np.asarray(list(sampler))
    assert batches.shape == (4, 8)
    assert sorted(batches.flatten().tolist()) == list(range(32))


def test_pk_is_deterministic_per_seed_and_epoch() -> None:
    pids = _pids([5, 9, 4, 12, 7, 6, 8, 3, 10, 4])
    a = PKSampler(pids, 8, 4, seed=3)
    b = PKSampler(pids, 8, 4, seed=3)
    assert list(a) == list(b)
    epoch0 = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(a) != epoch0
    assert list(PKSampler(pids, 8, 4, seed=4)) != epoch0


def test_set_epoch_start_batch_resumes_inside_an_epoch() -> None:
    pids = _pids([5, 9, 4, 12, 7, 6, 8, 3, 10, 4])
    sampler = PKSampler(pids, 8, 4, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == full[3:]
    with pytest.raises(ValueError):
        sampler.set_epoch(0, start_batch=len(sampler) + 1)


def test_distributed_ranks_take_disjoint_ids_of_one_global_batch() -> None:
    pids = _pids([5, 9, 4, 12, 7, 6, 8, 3, 10, 4])
    world = PKSampler(pids, 16, 4, seed=2)  # 4 ids per step on one process
    ranks = [PKSampler(pids, 8, 4, seed=2, num_replicas=2, rank=r) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(world)
    for step, (b0, b1) in enumerate(zip(*ranks, strict=True)):
        _assert_pk_batch(b0, pids, 2, 4)
        _assert_pk_batch(b1, pids, 2, 4)
        ids0 = {pids[i] for i in b0}
        ids1 = {pids[i] for i in b1}
        assert not ids0 & ids1
        # The ranks' slices are exactly the one-process global batch.
        assert b0 + b1 == list(world)[step]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 10, "num_instances": 4}, "batch size 10"),
        ({"batch_size": 2, "num_instances": 4}, "batch size 2"),
        ({"batch_size": 8, "num_instances": 0}, "num_instances=0"),
        ({"batch_size": 12, "num_instances": 4, "num_replicas": 2}, "6 distinct identities"),
        ({"batch_size": 8, "num_instances": 4, "num_replicas": 2, "rank": 2}, "rank=2"),
        ({"batch_size": 8, "num_instances": 4, "seed": -1}, "seed -1"),
    ],
)
def test_pk_bad_options_raise_config_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PKSampler(_pids([4, 4, 4, 4, 4]), **kwargs)


def test_pk_needs_two_identities_and_says_how_many() -> None:
    with pytest.raises(ConfigError, match="at least 2 identities, the data has 1"):
        PKSampler([7, 7, 7, 7], batch_size=4, num_instances=4)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 12), min_size=2, max_size=20),
    k=st.integers(1, 5),
    p=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_pk_invariants_on_random_datasets(counts: list[int], k: int, p: int, seed: int) -> None:
    p = min(p, len(counts))
    pids = _pids(counts)
    sampler = PKSampler(pids, p * k, k, seed=seed)
    chunks = sum(max(n, k) // k for n in counts)
    assert len(sampler) == max(1, chunks // p)
    for batch in sampler:
        _assert_pk_batch(batch, pids, p, k)


def _camera_records(cameras: list[int], per_camera: int) -> list[ImageRecord]:
    """Identity i has per_camera images from each of its cameras[i] cameras, shuffled."""
    items = [
        (pid, camid)
        for pid, n in enumerate(cameras)
        for camid in range(n)
        for _ in range(per_camera)
    ]
    order = np.random.default_rng(7).permutation(len(items))
    return [ImageRecord(f"{i}.jpg", *items[i]) for i in order]


def _camera_blocks(sampler: PKSampler, records: list[ImageRecord]) -> list[tuple[int, list]]:
    """(pid, camids) of every K-image block of an epoch."""
    k = sampler.num_instances
    blocks = np.asarray(list(sampler)).reshape(-1, k)
    return [(records[b[0]].pid, [records[i].camid for i in b]) for b in blocks]


def test_camera_aware_chunks_span_k_cameras_when_the_identity_has_as_many() -> None:
    records = _camera_records([4, 6, 5, 4, 7, 4], per_camera=3)
    for epoch in range(3):
        sampler = PKSampler(records, 8, 4, seed=epoch, camera_aware=True)
        sampler.set_epoch(epoch)
        blocks = _camera_blocks(sampler, records)
        assert blocks
        for _, camids in blocks:
            assert len(set(camids)) == 4
    # Without it, some chunk repeats a camera.
    plain = _camera_blocks(PKSampler(records, 8, 4, seed=0), records)
    assert any(len(set(camids)) < 4 for _, camids in plain)


def test_camera_aware_chunks_hold_every_camera_of_an_identity_with_fewer_than_k() -> None:
    cameras = [2, 3, 1, 2, 3, 2]
    records = _camera_records(cameras, per_camera=4)
    sampler = PKSampler(records, 12, 6, seed=1, camera_aware=True)
    blocks = _camera_blocks(sampler, records)
    assert blocks
    for pid, camids in blocks:
        assert set(camids) == set(range(cameras[pid]))
        # as evenly as K allows: each camera K // cameras or one more times
        counts = np.bincount(camids)
        assert counts.max() - counts.min() <= 1


def test_camera_aware_identity_with_fewer_images_than_k_shows_each_image() -> None:
    records = [ImageRecord(f"{i}.jpg", pid, cam) for i, (pid, cam) in enumerate(
        [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 0), (1, 1)]
    )]  # fmt: skip
    sampler = PKSampler(records, 8, 4, seed=0, camera_aware=True)
    (batch,) = list(sampler)
    block = batch[:4] if records[batch[0]].pid == 0 else batch[4:]
    assert set(block) == {0, 1, 2}  # 3 images, 3 cameras, one repeated


def test_camera_aware_is_deterministic_and_keeps_the_pk_structure() -> None:
    records = _camera_records([3, 5, 2, 4, 6, 1, 3], per_camera=2)
    pids = [r.pid for r in records]
    a = list(PKSampler(records, 8, 4, seed=3, camera_aware=True))
    assert a == list(PKSampler(records, 8, 4, seed=3, camera_aware=True))
    assert a != list(PKSampler(records, 8, 4, seed=4, camera_aware=True))
    plain = PKSampler(records, 8, 4, seed=3)
    assert len(a) == len(plain)
    for batch in a:
        _assert_pk_batch(batch, pids, 2, 4)


def test_camera_aware_off_gives_the_batches_of_before() -> None:
    # Pinned from the sampler before camera_aware existed.
    records = _camera_records([3, 5, 2, 4], per_camera=2)
    assert list(PKSampler(records, 4, 2, seed=0)) == PINNED_PLAIN_BATCHES
    assert list(PKSampler(records, 4, 2, seed=0, camera_aware=False)) == PINNED_PLAIN_BATCHES


PINNED_PLAIN_BATCHES = [
    [4, 10, 11, 2], [23, 20, 19, 8], [0, 7, 27, 26], [6, 3, 16, 21], [18, 13, 24, 1],
    [5, 17, 12, 22], [14, 15, 9, 25],
]  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(
    cameras=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=12), min_size=2, max_size=12),
    k=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_camera_aware_keeps_pk_invariants_on_random_datasets(
    cameras: list[list[int]], k: int, seed: int
) -> None:
    # cameras[i]: the camera of each image of identity i
    records = [ImageRecord(f"{pid}_{j}.jpg", pid, cam) for pid, cams in enumerate(cameras)
               for j, cam in enumerate(cams)]  # fmt: skip
    pids = [r.pid for r in records]
    sampler = PKSampler(records, 2 * k, k, seed=seed, camera_aware=True)
    assert len(sampler) == len(PKSampler(records, 2 * k, k, seed=seed))
    for batch in sampler:
        _assert_pk_batch(batch, pids, 2, k)
        for block in np.asarray(batch).reshape(2, k):
            own = {i for i, pid in enumerate(pids) if pid == pids[block[0]]}
            if len(own) >= k:
                assert len(set(block.tolist())) == k, "K distinct images"
            else:
                assert set(block.tolist()) == own, "all of an identity's images"


def test_camera_aware_needs_camera_ids() -> None:
    with pytest.raises(ConfigError, match="camera-aware PK sampling needs records with a camid"):
        PKSampler(_pids([4, 4, 4]), 8, 4, camera_aware=True)


def test_random_batches_are_a_permutation_without_repeats() -> None:
    sampler = RandomBatchSampler(23, 5, seed=0)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 4  # 23 // 5, last incomplete batch dropped
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == 20
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_random_batches_ranks_are_disjoint_and_cover_the_global_batch() -> None:
    single = list(RandomBatchSampler(20, 6, seed=9))
    ranks = [list(RandomBatchSampler(20, 3, seed=9, num_replicas=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 3
    for b0, b1, whole in zip(ranks[0], ranks[1], single, strict=True):
        assert not set(b0) & set(b1)
        assert b0 + b1 == whole


def test_random_batches_on_a_dataset_smaller_than_a_batch_repeat_it() -> None:
    (batch,) = list(RandomBatchSampler(3, 8, seed=0))
    assert len(batch) == 8 and set(batch) == {0, 1, 2}


def test_seeded_batches_pair_indices_with_reproducible_stream_specific_seeds() -> None:
    inner = RandomBatchSampler(12, 4, seed=0)
    source = list(SeededBatches(inner, seed=0, stream=0))
    assert [[i for i, _ in b] for b in source] == list(inner)
    assert source == list(SeededBatches(RandomBatchSampler(12, 4, seed=0), seed=0, stream=0))
    other = list(SeededBatches(inner, seed=0, stream=1))
    assert [s for b in source for _, s in b] != [s for b in other for _, s in b]
    seeded = SeededBatches(inner, seed=0)
    seeded.set_epoch(0, start_batch=1)
    assert list(seeded) == source[1:]
    all_seeds = [s for b in source for _, s in b]
    assert len(set(all_seeds)) == len(all_seeds)
