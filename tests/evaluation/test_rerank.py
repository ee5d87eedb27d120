"""Tests of crossreid.evaluation.rerank against the original algorithm and by hand."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreid.errors import EvaluationError
from crossreid.evaluation.rerank import re_ranking


def _load_oracle():
    # Loaded by path so the test works whether or not tests/ is a package.
    path = Path(__file__).with_name("rerank_oracle.py")
    spec = importlib.util.spec_from_file_location("rerank_oracle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.re_ranking_oracle


re_ranking_oracle = _load_oracle()


def clustered_distances(num_query, num_gallery, seed, dim=8, dtype=np.float32, step=None):
    """Euclidean distance blocks between features clustered around a few identities.

    ``step`` rounds the distances to a multiple of it, which creates many ties.
    """
    rng = np.random.default_rng(seed)
    n = num_query + num_gallery
    centroids = rng.normal(size=(max(2, n // 6), dim))
    features = centroids[rng.integers(0, len(centroids), n)] + 0.6 * rng.normal(size=(n, dim))
    dist = np.sqrt(((features[:, None] - features[None]) ** 2).sum(-1))
    if step is not None:
        dist = np.round(dist / step) * step
    dist = dist.astype(dtype)
    return dist[:num_query, num_query:], dist[:num_query, :num_query], dist[num_query:, num_query:]


@pytest.mark.parametrize(
    ("num_query", "num_gallery", "k1", "k2", "lambda_value"),
    [
        (20, 100, 20, 6, 0.3),  # paper parameters
        (1, 40, 20, 6, 0.3),  # a single query
        (4, 10, 20, 6, 0.3),  # k1 + 1 larger than N: every row is fully ranked
        (3, 2, 2, 9, 0.5),  # k2 larger than N
        (10, 50, 7, 1, 0.2),  # k2 = 1: no query expansion
        (10, 50, 3, 25, 0.0),  # k2 wider than k1 + 1; lambda 0
        (15, 60, 1, 2, 1.0),  # k1 = 1 (half-neighbourhood rounds to 0)
        (60, 300, 20, 6, 0.3),  # a few hundred items
    ],
)
def test_matches_original_algorithm(num_query, num_gallery, k1, k2, lambda_value):
    blocks = clustered_distances(num_query, num_gallery, seed=num_query * 1000 + num_gallery)
    expected = re_ranking_oracle(*blocks, k1=k1, k2=k2, lambda_value=lambda_value)
    result = re_ranking(*blocks, k1=k1, k2=k2, lambda_value=lambda_value)
    assert result.shape == (num_query, num_gallery)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("step", [0.5, 0.1])
def test_matches_original_algorithm_with_tied_distances(seed, step):
    # Rounded distances tie everywhere, at the k1-th neighbour of most rows (step 0.5) or
    # of about a third of them (step 0.1, so both selection paths run); the oracle ranks
    # ties by index (stable sort) and so must re_ranking.
    blocks = clustered_distances(15, 70, seed=seed, step=step)
    expected = re_ranking_oracle(*blocks, k1=6, k2=4)
    np.testing.assert_allclose(re_ranking(*blocks, k1=6, k2=4), expected, rtol=0, atol=1e-5)


def test_matches_original_algorithm_with_duplicate_items():
    # Identical images: zero distances off the diagonal tie with each item's self-distance.
    q_g, q_q, g_g = clustered_distances(6, 30, seed=7)
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    copies = np.r_[np.arange(36), [0, 8, 8, 20]]  # query 0 and gallery items 2, 14 repeated
    order = np.r_[np.arange(6), np.arange(36, 40), np.arange(6, 36)]
    full = full[np.ix_(copies, copies)][np.ix_(order, order)]
    blocks = (full[:6, 6:], full[:6, :6], full[6:, 6:])
    expected = re_ranking_oracle(*blocks, k1=5, k2=3)
    np.testing.assert_allclose(re_ranking(*blocks, k1=5, k2=3), expected, rtol=0, atol=1e-5)


def test_matches_original_algorithm_on_asymmetric_float64_input():
    # The original reads column i of the squared matrix as row i; with asymmetric blocks
    # that differs from reading row i, and float64 inputs are squared before rounding.
    rng = np.random.default_rng(3)
    q_g = rng.uniform(0.1, 2.0, size=(12, 40))
    q_q = rng.uniform(0.1, 2.0, size=(12, 12))
    g_g = rng.uniform(0.1, 2.0, size=(40, 40))
    np.fill_diagonal(q_q, 0.0)
    np.fill_diagonal(g_g, 0.0)
    expected = re_ranking_oracle(q_g, q_q, g_g, k1=8, k2=3, lambda_value=0.4)
    result = re_ranking(q_g, q_q, g_g, k1=8, k2=3, lambda_value=0.4)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    num_query=st.integers(1, 12),
    num_gallery=st.integers(1, 40),
    k1=st.integers(1, 25),
    k2=st.integers(1, 10),
    lambda_value=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    tied=st.booleans(),
)
def test_matches_original_algorithm_on_random_inputs(
    num_query, num_gallery, k1, k2, lambda_value, seed, tied
):
    blocks = clustered_distances(num_query, num_gallery, seed, step=0.5 if tied else None)
    params = dict(k1=k1, k2=k2, lambda_value=lambda_value)
    with np.errstate(invalid="ignore"):
        expected = re_ranking_oracle(*blocks, **params)
    if not np.all(np.isfinite(expected)):
        # An item at zero distance from everything: the original divides 0 by 0.
        with pytest.raises(EvaluationError, match="zero"):
            re_ranking(*blocks, **params)
        return
    np.testing.assert_allclose(re_ranking(*blocks, **params), expected, rtol=0, atol=1e-5)


def test_hand_computed_case():
    # One query, two gallery items, k1 = 1 (half-neighbourhood 0), no query expansion.
    # Normalised rows: query [0, 1/4, 1]; gallery 0 [1/9, 0, 1]; gallery 1 [4/9, 1, 0].
    # Reciprocal sets: query {q, g0}, g0 {q, g0}, g1 {g1}. Gallery 1 shares nothing with
    # the query, so its Jaccard distance is 1.
    q_g = np.array([[1.0, 2.0]], dtype=np.float32)
    q_q = np.array([[0.0]], dtype=np.float32)
    g_g = np.array([[0.0, 3.0], [3.0, 0.0]], dtype=np.float32)
    result = re_ranking(q_g, q_q, g_g, k1=1, k2=1, lambda_value=0.3)

    def encode(d_self, d_other):
        total = math.exp(-d_self) + math.exp(-d_other)
        return math.exp(-d_self) / total, math.exp(-d_other) / total

    v_q_self, v_q_g0 = encode(0.0, 0.25)  # query row: weights on (q, g0)
    v_g0_self, v_g0_q = encode(0.0, 1 / 9)  # gallery 0 row: weights on (g0, q)
    shared = min(v_q_self, v_g0_q) + min(v_q_g0, v_g0_self)
    jaccard = 1 - shared / (2 - shared)
    expected = [0.7 * jaccard + 0.3 * 0.25, 0.7 * 1.0 + 0.3 * 1.0]
    np.testing.assert_allclose(result, [expected], rtol=0, atol=1e-6)


def test_lambda_one_gives_normalised_original_distance():
    q_g, q_q, g_g = clustered_distances(7, 25, seed=11)
    result = re_ranking(q_g, q_q, g_g, lambda_value=1.0)
    # Squared distance over the largest squared distance from that query to any item.
    row_max = np.maximum((q_q**2).max(axis=0), (q_g**2).max(axis=1))
    np.testing.assert_allclose(result, q_g**2 / row_max[:, None], rtol=1e-6, atol=0)


def test_lambda_zero_gives_pure_jaccard_distance_in_unit_interval():
    blocks = clustered_distances(7, 60, seed=12)
    result = re_ranking(*blocks, k1=4, k2=2, lambda_value=0.0)
    assert np.all(result >= 0) and np.all(result <= 1)
    assert np.any(result < 1) and np.any(result == 1)  # shared and disjoint neighbourhoods


def test_scaling_all_distances_by_two_changes_nothing():
    blocks = clustered_distances(9, 40, seed=13)
    doubled = [2 * block for block in blocks]  # exact in floating point
    np.testing.assert_array_equal(re_ranking(*doubled), re_ranking(*blocks))


def test_permuting_gallery_and_queries_permutes_result():
    q_g, q_q, g_g = clustered_distances(9, 40, seed=14)
    rng = np.random.default_rng(0)
    qp, gp = rng.permutation(9), rng.permutation(40)
    permuted = re_ranking(q_g[np.ix_(qp, gp)], q_q[np.ix_(qp, qp)], g_g[np.ix_(gp, gp)])
    np.testing.assert_allclose(permuted, re_ranking(q_g, q_q, g_g)[np.ix_(qp, gp)], atol=1e-6)


def test_accepts_torch_tensors():
    blocks = clustered_distances(5, 20, seed=15)
    from_tensors = re_ranking(*(torch.from_numpy(block) for block in blocks))
    assert isinstance(from_tensors, np.ndarray)
    np.testing.assert_array_equal(from_tensors, re_ranking(*blocks))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda q_g, q_q, g_g: (q_g, q_q[:, :3], g_g), "q_q_dist must have shape"),
        (lambda q_g, q_q, g_g: (q_g, q_q, g_g[:-1, :-1]), "g_g_dist must have shape"),
        (lambda q_g, q_q, g_g: (q_g[:, :-1], q_q, g_g), "g_g_dist must have shape"),
        (lambda q_g, q_q, g_g: (q_g[0], q_q, g_g), "q_g_dist must be 2-D"),
        (lambda q_g, q_q, g_g: (q_g[:0], q_q[:0, :0], g_g), "empty"),
        (lambda q_g, q_q, g_g: (q_g, q_q, g_g.astype(str)), "real numbers"),
    ],
)
def test_rejects_inconsistent_shapes(mutate, message):
    blocks = clustered_distances(4, 10, seed=16)
    with pytest.raises(EvaluationError, match=message):
        re_ranking(*mutate(*blocks))


@pytest.mark.parametrize(
    ("which", "index", "value", "message"),
    [
        (2, (3, 5), np.nan, "gallery item"),
        (0, (1, 2), np.inf, "query 1"),
        (1, (0, 2), -np.inf, "NaN or inf"),
        (2, (0, 0), np.float32(1e30), "overflow"),
    ],
)
def test_rejects_non_finite_distances(which, index, value, message):
    blocks = [block.copy() for block in clustered_distances(4, 10, seed=17)]
    blocks[which][index] = value
    with pytest.raises(EvaluationError, match=message):
        re_ranking(*blocks)


def test_rejects_all_zero_distances():
    zeros = (np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(EvaluationError, match="query 0 is zero"):
        re_ranking(*zeros)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(k1=0), "k1 must be an integer >= 1"),
        (dict(k1=2.5), "k1 must be an integer"),
        (dict(k2=0), "k2 must be an integer >= 1"),
        (dict(k2=True), "k2 must be an integer"),
        (dict(lambda_value=1.5), "lambda_value must be a number in"),
        (dict(lambda_value=float("nan")), "lambda_value"),
    ],
)
def test_rejects_bad_parameters(params, message):
    with pytest.raises(EvaluationError, match=message):
        re_ranking(*clustered_distances(3, 8, seed=18), **params)
