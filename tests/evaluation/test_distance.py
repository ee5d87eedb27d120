"""pairwise_distance against the direct formulas (scipy.spatial.distance.cdist)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import crossreid.evaluation.distance as distance_module
from crossreid.errors import EvaluationError
from crossreid.evaluation import METRICS, pairwise_distance
from crossreid.evaluation.distance import GalleryDistance

SCIPY_NAME = {
    "L1": "cityblock",
    "L2": "euclidean",
    "cosine": "cosine",
    "correlation": "correlation",
}
# float32 tolerances: L2 goes through |q|^2 + |g|^2 - 2 q.g, which loses digits when the
# two vectors are close; the ranking only needs the order.
TOL = {np.float32: {"L1": 1e-4, "L2": 1e-3, "cosine": 1e-5, "correlation": 1e-5}}


def _features(seed: int, num: int, dim: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((num, dim))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_matches_direct_formula(metric, dtype, backend):
    qf, gf = _features(0, 7).astype(dtype), _features(1, 11).astype(dtype)
    expected = cdist(qf.astype(np.float64), gf.astype(np.float64), SCIPY_NAME[metric])
    if backend == "torch":
        result = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf), metric)
        assert isinstance(result, torch.Tensor)
        assert result.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
        result = result.numpy()
    else:
        result = pairwise_distance(qf, gf, metric)
        assert isinstance(result, np.ndarray)
        assert result.dtype == dtype
    assert result.shape == (7, 11)
    atol = 1e-9 if dtype == np.float64 else TOL[np.float32][metric]
    np.testing.assert_allclose(result, expected, rtol=0, atol=atol)


def test_hand_computed_values():
    q = np.array([[1.0, 0.0]])
    g = np.array([[0.0, 2.0], [3.0, 0.0], [-1.0, 0.0], [4.0, 4.0]])
    np.testing.assert_allclose(pairwise_distance(q, g, "cosine"), [[1.0, 0.0, 2.0, 1 - 0.5**0.5]])
    np.testing.assert_allclose(pairwise_distance(q, g, "L1"), [[3.0, 2.0, 2.0, 7.0]])
    np.testing.assert_allclose(pairwise_distance(q, g, "L2"), [[5**0.5, 2.0, 2.0, (9 + 16) ** 0.5]])
    # Pearson of (1, 2, 3) with (3, 2, 1) is -1 and with (2, 4, 6) is +1.
    np.testing.assert_allclose(
        pairwise_distance([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0], [2.0, 4.0, 6.0]], "correlation"),
        [[2.0, 0.0]],
        atol=1e-12,
    )


def test_zero_and_constant_vectors_are_at_distance_one():
    q = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    g = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(pairwise_distance(q[:1], g, "cosine"), [[1.0]])
    np.testing.assert_allclose(pairwise_distance(q, g, "correlation"), [[1.0], [1.0]])


def test_metric_names_are_case_insensitive():
    qf, gf = _features(2, 3), _features(3, 4)
    np.testing.assert_array_equal(
        pairwise_distance(qf, gf, "COSINE"), pairwise_distance(qf, gf, "cosine")
    )
    np.testing.assert_array_equal(pairwise_distance(qf, gf, "l2"), pairwise_distance(qf, gf, "L2"))


def test_integer_features_give_float64_and_mixed_inputs_give_torch():
    qi = np.array([[1, 2], [3, 4]])
    assert pairwise_distance(qi, qi, "L2").dtype == np.float64
    mixed = pairwise_distance(torch.ones(2, 3), np.ones((4, 3), dtype=np.float32), "cosine")
    assert isinstance(mixed, torch.Tensor) and mixed.shape == (2, 4)
    np.testing.assert_allclose(mixed.numpy(), 0.0, atol=1e-6)
    mixed = pairwise_distance(np.ones((2, 3), dtype=np.float32), torch.ones(4, 3), "L1")
    assert isinstance(mixed, torch.Tensor)


def test_torch_inputs_keep_no_autograd_graph():
    qf = torch.randn(3, 5, requires_grad=True)
    out = pairwise_distance(qf, torch.randn(4, 5), "cosine")
    assert not out.requires_grad


def test_gallery_distance_reused_over_query_chunks():
    qf, gf = _features(4, 20).astype(np.float32), _features(5, 9).astype(np.float32)
    for metric in METRICS:
        gallery = GalleryDistance(gf, metric)
        chunks = np.concatenate([gallery(qf[s : s + 6]) for s in range(0, 20, 6)])
        np.testing.assert_allclose(chunks, pairwise_distance(qf, gf, metric), atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_l1_blocks_are_stitched_correctly(monkeypatch, backend):
    monkeypatch.setattr(distance_module, "_L1_BLOCK_ELEMENTS", 7)
    qf, gf = _features(6, 9), _features(7, 13)
    if backend == "torch":
        result = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf), "L1").numpy()
    else:
        result = pairwise_distance(qf, gf, "L1")
    np.testing.assert_allclose(result, cdist(qf, gf, "cityblock"), atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(0.01, 100.0),
    shift=st.floats(-10.0, 10.0),
)
def test_invariances(seed, scale, shift):
    """cosine ignores positive scaling; correlation also ignores adding a constant."""
    qf, gf = _features(seed, 4, 8), _features(seed + 1, 6, 8)
    np.testing.assert_allclose(
        pairwise_distance(qf * scale, gf, "cosine"), pairwise_distance(qf, gf, "cosine"), atol=1e-9
    )
    np.testing.assert_allclose(
        pairwise_distance(qf * scale + shift, gf, "correlation"),
        pairwise_distance(qf, gf, "correlation"),
        atol=1e-9,
    )
    # Every metric puts a vector closest to itself.
    for metric in METRICS:
        d = pairwise_distance(gf, gf, metric)
        np.testing.assert_array_equal(np.argmin(d, axis=1), np.arange(6))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("where", ["query", "gallery"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_non_finite_features_are_rejected(metric, where, bad, backend):
    qf, gf = _features(8, 3), _features(9, 4)
    (qf if where == "query" else gf)[1, 2] = bad
    if backend == "torch":
        qf, gf = torch.from_numpy(qf), torch.from_numpy(gf)
    with pytest.raises(EvaluationError, match=f"{where} features contain NaN or infinite"):
        pairwise_distance(qf, gf, metric)


def test_huge_finite_features_are_accepted():
    qf = np.full((2, 4), 1e30, dtype=np.float32)  # squares overflow float32, values do not
    np.testing.assert_array_equal(pairwise_distance(qf, qf, "L1"), 0.0)
    np.testing.assert_allclose(pairwise_distance(qf, qf, "cosine"), 0.0, atol=1e-6)


@pytest.mark.parametrize(
    ("qf", "gf", "metric", "message"),
    [
        (np.ones((2, 3)), np.ones((4, 5)), "cosine", "different dimensions: 3 vs 5"),
        (np.ones(3), np.ones((4, 3)), "cosine", "query features must be a 2-D array"),
        (np.ones((2, 3)), np.ones((4, 3, 1)), "L2", "gallery features must be a 2-D array"),
        (np.ones((0, 3)), np.ones((4, 3)), "cosine", "query set is empty"),
        (np.ones((2, 3)), np.ones((0, 3)), "L1", "gallery is empty"),
        (np.ones((2, 3)), np.ones((4, 3)), "hamming", "unknown distance metric 'hamming'"),
    ],
)
def test_bad_input_raises_one_line_error(qf, gf, metric, message):
    with pytest.raises(EvaluationError, match=message) as info:
        pairwise_distance(qf, gf, metric)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_float64_query_against_float32_gallery_is_computed_in_float64(backend):
    qf, gf = _features(10, 3), _features(11, 5)
    gf32 = gf.astype(np.float32)
    expected = cdist(qf, gf32.astype(np.float64), "cosine")
    if backend == "torch":
        result = GalleryDistance(torch.from_numpy(gf32), "cosine")(torch.from_numpy(qf)).numpy()
    else:
        result = GalleryDistance(gf32, "cosine")(qf)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-12)
