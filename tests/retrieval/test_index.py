"""faiss indexes rank (and measure) exactly like pairwise_distance."""

from __future__ import annotations

import errno
import logging
import os
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreid.errors import ConfigError, EvaluationError, StorageError
from crossreid.evaluation import pairwise_distance
from crossreid.retrieval import METRICS, build_index, load_index
from crossreid.retrieval.index import default_nlist


def _data(seed: int, nq: int, ng: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(nq, dim)).astype(np.float32)
    g = rng.normal(size=(ng, dim)).astype(np.float32)
    return q, g


def _min_gap(dist: np.ndarray) -> float:
    """Smallest gap between the distances of a row (0 means a tie)."""
    return float(np.diff(np.sort(dist, axis=1), axis=1).min())


def _untied(nq: int, ng: int, dim: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Random data whose distances differ by more than float32 rounding in every row (the
    first such seed, so the test is deterministic)."""
    for seed in range(100):
        q, g = _data(seed, nq, ng, dim)
        if _min_gap(pairwise_distance(q, g, metric)) > 1e-5:
            return q, g
    raise AssertionError("no untied data found")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [3, 40])  # faiss uses a different kernel from 20 queries on
def test_exact_ranking_equals_stable_argsort_of_pairwise_distance(metric: str, nq: int) -> None:
    q, g = _untied(nq, 60, 24, metric)
    dist = pairwise_distance(q, g, metric)
    distances, indices = build_index(g, metric).search(q, len(g))
    np.testing.assert_array_equal(indices, np.argsort(dist, axis=1, kind="stable"))
    np.testing.assert_allclose(distances, np.sort(dist, axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [2, 30])
def test_ties_come_out_in_gallery_order_inside_and_at_the_topk_boundary(
    metric: str, nq: int
) -> None:
    rng = np.random.default_rng(1)
    prototypes = rng.normal(size=(4, 8)).astype(np.float32)
    g = prototypes[rng.integers(0, 4, size=300)]  # every distance is shared ~75 times
    q = rng.normal(size=(nq, 8)).astype(np.float32)
    expected = np.argsort(pairwise_distance(q, g, metric), axis=1, kind="stable")
    for k in (1, 7, 100):
        _, indices = build_index(g, metric).search(q, k)
        np.testing.assert_array_equal(indices, expected[:, :k])


def test_hand_computed_cosine_and_l2_results() -> None:
    g = np.array([[1, 0], [0, 2], [3, 3], [-1, 0]], dtype=np.float32)
    q = np.array([[2, 0]], dtype=np.float32)
    d, i = build_index(g, "cosine").search(q, 4)
    np.testing.assert_array_equal(i, [[0, 2, 1, 3]])
    np.testing.assert_allclose(d, [[0.0, 1 - np.sqrt(0.5), 1.0, 2.0]], atol=1e-6)
    d, i = build_index(g, "L2").search(q, 4)  # |(1,0)|, |(2,-2)|, |(3,0)|, |(-1,-3)|
    np.testing.assert_allclose(d, [[1.0, np.sqrt(8), 3.0, np.sqrt(10)]], rtol=1e-6)
    np.testing.assert_array_equal(i, [[0, 1, 3, 2]])
    d, i = build_index(g, "L1").search(q, 4)
    np.testing.assert_allclose(d, [[1.0, 3.0, 4.0, 4.0]])
    np.testing.assert_array_equal(i, [[0, 3, 1, 2]])  # the 4.0 tie: gallery order


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    nq=st.integers(1, 25),
    ng=st.integers(1, 60),
    dim=st.integers(1, 12),
    k=st.integers(1, 70),
    metric=st.sampled_from(METRICS),
)
def test_topk_is_a_prefix_of_the_sorted_distances(seed, nq, ng, dim, k, metric) -> None:
    q, g = _data(seed, nq, ng, dim)
    dist = pairwise_distance(q, g, metric)
    distances, indices = build_index(g, metric).search(q, k)
    k = min(k, ng)
    assert indices.shape == (nq, k)
    # pairwise_distance computes L2 as sqrt(|q|^2 + |g|^2 - 2 q.g), whose rounding error
    # is amplified by the square root near 0; faiss' small-batch L2 kernel is direct.
    tol = 1e-4 if metric == "L2" else 1e-5
    # Exact search returns the k smallest distances, in order (up to float rounding) …
    reference = np.take_along_axis(dist, indices, axis=1)
    np.testing.assert_allclose(reference, np.sort(dist, axis=1)[:, :k], rtol=tol, atol=tol)
    np.testing.assert_allclose(distances, reference, rtol=tol, atol=tol)
    # … of distinct gallery items; any disagreement with a stable argsort is a near-tie.
    assert all(len(set(row)) == k for row in indices.tolist())
    expected = np.argsort(dist, axis=1, kind="stable")[:, :k]
    differ = indices != expected
    if differ.any():
        gap = np.abs(reference - np.take_along_axis(dist, expected, axis=1))[differ]
        assert (gap <= tol).all()


@pytest.mark.parametrize("metric", ["cosine", "L2", "L1", "correlation"])
def test_ivf_visiting_every_cell_equals_exact_search(metric: str) -> None:
    q, g = _data(2, 5, 400, 8)
    exact = build_index(g, metric).search(q, 10)[1]
    index = build_index(g, metric, approx=True, nlist=4, nprobe=4)
    assert index.kind == "ivf" and index.nprobe == 4
    np.testing.assert_array_equal(index.search(q, 10)[1], exact)


def test_ivf_recall_on_clustered_data() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 16)).astype(np.float32)
    labels = rng.integers(0, 40, size=4000)
    g = centres[labels] + 0.1 * rng.normal(size=(4000, 16)).astype(np.float32)
    q = centres[rng.integers(0, 40, size=50)] + 0.1 * rng.normal(size=(50, 16)).astype(np.float32)
    exact = build_index(g, "cosine").search(q, 10)[1]
    approx = build_index(g, "cosine", approx=True)  # default nlist/nprobe
    assert approx.index.nlist == default_nlist(4000) and approx.nprobe >= 1
    found = approx.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
    assert recall >= 0.95


def test_default_nlist() -> None:
    assert default_nlist(1) == 1
    assert default_nlist(390) == 10  # 4 * sqrt(390) = 79 > 390 // 39
    assert default_nlist(1_000_000) == 4000


def test_save_and_load_keeps_metric_dim_results_and_metadata(tmp_path) -> None:
    q, g = _data(4, 3, 50, 6)
    index = build_index(
        g, "correlation", paths=[f"g{i}.jpg" for i in range(50)], pids=range(50), camids=[0] * 50
    )
    path = index.save(tmp_path / "sub" / "gallery.npz")
    loaded = load_index(path, metric="correlation", dim=6)
    assert (loaded.metric, loaded.dim, loaded.kind, loaded.ntotal) == (
        "correlation",
        6,
        "exact",
        50,
    )
    assert loaded.paths[7] == "g7.jpg" and loaded.pids[7] == 7 and loaded.camids[7] == 0
    for a, b in zip(index.search(q, 5), loaded.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    ivf = build_index(g, "L2", approx=True, nlist=2, nprobe=1)
    again = load_index(ivf.save(tmp_path / "ivf.npz"))
    assert again.kind == "ivf" and again.nprobe == 1 and again.paths is None


def test_loading_for_another_metric_or_dimension_is_refused(tmp_path) -> None:
    path = build_index(_data(5, 1, 10, 6)[1], "cosine").save(tmp_path / "i.npz")
    with pytest.raises(ConfigError, match=r"built for metric 'cosine', not 'L2'"):
        load_index(path, metric="l2")
    with pytest.raises(ConfigError, match=r"6-d features, but the model gives 512-d"):
        load_index(path, dim=512)
    np.savez(tmp_path / "other.npz", gf=np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="not a crossreid faiss index"):
        load_index(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read index file"):
        load_index(tmp_path / "junk.npz")
    with pytest.raises(ConfigError, match="does not exist"):
        load_index(tmp_path / "missing.npz")


def test_topk_larger_than_gallery_is_clamped_with_a_warning(caplog) -> None:
    q, g = _data(6, 2, 5, 4)
    with caplog.at_level(logging.WARNING):
        distances, indices = build_index(g).search(q, 9)
    assert indices.shape == (2, 5) and distances.shape == (2, 5)
    assert "larger than the gallery (5 items)" in caplog.text


def test_bad_inputs() -> None:
    q, g = _data(7, 2, 5, 4)
    with pytest.raises(ConfigError, match="unknown metric"):
        build_index(g, "hamming")
    bad = g.copy()
    bad[1, 2] = np.nan
    with pytest.raises(EvaluationError, match="NaN or inf"):
        build_index(bad)
    with pytest.raises(EvaluationError, match="empty gallery"):
        build_index(np.zeros((0, 4), np.float32))
    with pytest.raises(EvaluationError, match="paths has 2 entries for 5"):
        build_index(g, paths=["a", "b"])
    index = build_index(g)
    with pytest.raises(
        EvaluationError, match="dimension 3, but the index was built for dimension 4"
    ):
        index.search(q[:, :3], 2)
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        index.search(q, 0)
    with pytest.raises(ConfigError, match="nprobe applies only"):
        index.nprobe = 3


def test_torch_tensors_and_single_vectors_are_accepted() -> None:
    q, g = _data(8, 1, 20, 5)
    ref = build_index(g).search(q, 3)
    got = build_index(torch.from_numpy(g)).search(torch.from_numpy(q[0]), 3)
    np.testing.assert_array_equal(ref[1], got[1])


def test_a_full_disk_while_saving_keeps_the_previous_index(tmp_path, monkeypatch) -> None:
    index = build_index(_data(6, 1, 1000, 64)[1], "cosine")
    path = index.save(tmp_path / "gallery.npz")
    before = path.read_bytes()

    def fill_the_disk(stream, **arrays):
        stream.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", fill_the_disk)
    with pytest.raises(StorageError) as info:
        index.save(path)
    # The size needed is the arrays' (the serialised index holds 1000 x 64 float32).
    assert re.match(
        r"cannot write \S+gallery\.npz: no space left on device \(needs about 25\d kB, ",
        str(info.value),
    )
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.npz"]
    assert path.read_bytes() == before
