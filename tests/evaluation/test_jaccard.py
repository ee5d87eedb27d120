"""Tests of crossreid.evaluation.jaccard against the published algorithm and by hand."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jaccard_oracle import clustered_features, jaccard_distance_oracle

import crossreid.evaluation.jaccard as jaccard_module
from crossreid.errors import ClusteringError
from crossreid.evaluation import jaccard_distance


def as_dense(dist: sp.csr_matrix) -> np.ndarray:
    """The full matrix the sparse one stands for: pairs not stored are at distance 1."""
    dense = np.ones(dist.shape, dtype=np.float32)
    coo = dist.tocoo()
    dense[coo.row, coo.col] = coo.data
    return dense


def stored_mask(dist: sp.csr_matrix) -> np.ndarray:
    mask = np.zeros(dist.shape, dtype=bool)
    coo = dist.tocoo()
    mask[coo.row, coo.col] = True
    return mask


def assert_matches_oracle(features: np.ndarray, k1: int, k2: int) -> sp.csr_matrix:
    expected = jaccard_distance_oracle(features, k1=k1, k2=k2)
    result = jaccard_distance(features, k1=k1, k2=k2)
    assert isinstance(result, sp.csr_matrix)
    assert result.dtype == np.float32
    np.testing.assert_allclose(as_dense(result), expected, rtol=0, atol=1e-5)
    # Exactly the pairs below 1 are stored (a pair whose float32 sum rounds to 1 in one
    # and just below in the other may differ, hence the tolerance on the values only).
    np.testing.assert_array_equal(stored_mask(result), expected < 1 - 1e-6)
    return result


@pytest.mark.parametrize(
    ("n", "dim", "k1", "k2"),
    [
        (240, 16, 30, 6),  # SpCL / Cluster Contrast parameters
        (150, 8, 20, 6),  # re-ranking's k1
        (120, 12, 7, 1),  # no query expansion; round(3.5) = 4
        (120, 12, 5, 3),  # round(2.5) = 2 (banker's rounding, as np.around)
        (60, 6, 12, 20),  # k2 above k1 acts as k1
        (40, 4, 40, 6),  # k1 = N: every row fully ranked, no tie check
        (30, 4, 1, 1),  # k1 = 1: every sample is its own only neighbour
        (400, 32, 30, 6),  # a few hundred samples
    ],
)
def test_matches_published_algorithm(n, dim, k1, k2):
    assert_matches_oracle(clustered_features(n, dim, seed=n + k1 + k2), k1, k2)


@pytest.mark.parametrize("seed", range(3))
def test_matches_published_algorithm_with_duplicate_samples(seed):
    # Exact copies tie in similarity, often at the k1-th place, where faiss keeps any of
    # them (without the second search over all samples these differ by up to 0.14).
    rng = np.random.default_rng(seed)
    base = clustered_features(40, 8, seed=seed)
    copies = np.r_[np.arange(40), rng.integers(0, 40, 40), np.zeros(10, dtype=np.int64)]
    assert_matches_oracle(base[rng.permutation(copies)], k1=8, k2=4)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 60),
    dim=st.integers(1, 12),
    k1=st.integers(1, 40),
    k2=st.integers(1, 10),
    seed=st.integers(0, 2**16),
    duplicates=st.booleans(),
)
def test_matches_published_algorithm_on_random_inputs(n, dim, k1, k2, seed, duplicates):
    features = clustered_features(n, dim, seed=seed)
    if duplicates:
        features = features[np.random.default_rng(seed).integers(0, n, n)]
    k1 = min(k1, n)
    assert_matches_oracle(features, k1, k2)


def small_blocks(rows: int, columns: int, seed_columns: int):
    """Patch the neighbour search's block, panel and seed sizes (the defaults need
    thousands of items before a second block appears)."""
    return mock.patch.multiple(
        jaccard_module,
        _SEARCH_ROWS=rows,
        _SEARCH_COLUMNS=columns,
        _SEED_COLUMNS=seed_columns,
    )


def brute_force_neighbours(features: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k1 columns of a stable sort of each row of the full similarity matrix."""
    similarity = features @ features.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k1]
    return np.take_along_axis(similarity, order, axis=1), order


def integer_features(n: int, dim: int, seed: int, values: int = 2) -> np.ndarray:
    """Small integers as float32, with exact duplicate rows: every inner product is exact
    whatever the order of the sums, and many of them tie."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-values, values + 1, (max(1, n // 2), dim)).astype(np.float32)
    return base[rng.integers(0, base.shape[0], n)]


@pytest.mark.parametrize("k1", [1, 2, 7, 30, 119, 120])
def test_blocked_search_equals_a_stable_sort(k1):
    # 120 items in 8 blocks of 15 rows, panels of 20 columns, with ties everywhere
    # (exact duplicates and equal integer products), up to k1 = N.
    features = integer_features(120, 5, seed=k1)
    expected_scores, expected_ids = brute_force_neighbours(features, k1)
    with small_blocks(rows=16, columns=20, seed_columns=4):
        scores, ids = jaccard_module._nearest_neighbours(features, k1, None)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)


def test_blocked_search_on_unit_vectors():
    features = clustered_features(300, 16, seed=12)
    features = features[np.random.default_rng(12).integers(0, 300, 300)]  # duplicates
    expected_scores, expected_ids = brute_force_neighbours(features, 30)
    with small_blocks(rows=64, columns=100, seed_columns=32):
        scores, ids = jaccard_module._nearest_neighbours(features, 30, None)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 80),
    dim=st.integers(1, 6),
    k1=st.integers(1, 80),
    rows=st.integers(1, 24),
    columns=st.integers(1, 40),
    seed_columns=st.integers(1, 24),
    seed=st.integers(0, 2**16),
)
def test_blocked_search_on_random_block_sizes(n, dim, k1, rows, columns, seed_columns, seed):
    features = integer_features(n, dim, seed)
    k1 = min(k1, n)
    expected_scores, expected_ids = brute_force_neighbours(features, k1)
    with small_blocks(rows, columns, seed_columns):
        scores, ids = jaccard_module._nearest_neighbours(features, k1, None)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)


def test_matches_published_algorithm_across_search_blocks():
    # As test_matches_published_algorithm_with_duplicate_samples, the search in blocks.
    rng = np.random.default_rng(3)
    base = clustered_features(60, 8, seed=3)
    copies = np.r_[np.arange(60), rng.integers(0, 60, 60), np.zeros(12, dtype=np.int64)]
    with small_blocks(rows=20, columns=32, seed_columns=8):
        assert_matches_oracle(base[rng.permutation(copies)], k1=10, k2=4)


def test_two_mutual_pairs_by_hand():
    # a, b and c, d are each other's nearest. With k1 = 2 (half-neighbourhood 1) each
    # encoding is a softmax over {self, partner}: p = 1 / (1 + e^-delta) on itself and
    # q = 1 - p on the partner, delta = 2 - 2 cos. Then m = 2q and
    # 1 - m / (2 - m) = 1 - q / p = 1 - exp(-delta); pairs across the groups share nothing.
    features = np.array(
        [[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1], [0, 0.28, 0.96]],
        dtype=np.float32,
    )
    result = jaccard_distance(features, k1=2, k2=1)
    ab, cd = 1 - math.exp(-(2 - 2 * 0.8)), 1 - math.exp(-(2 - 2 * 0.96))
    expected = np.array(
        [[0, ab, 1, 1], [ab, 0, 1, 1], [1, 1, 0, cd], [1, 1, cd, 0]], dtype=np.float32
    )
    np.testing.assert_allclose(as_dense(result), expected, rtol=0, atol=1e-6)
    assert result.nnz == 8  # the four zeros of the diagonal are stored explicitly


def test_query_expansion_merges_mutual_pairs_by_hand():
    # With k2 = 2 each sample's encoding becomes the mean of its own and its partner's,
    # which is the same for both: distance 0 within a pair, stored, still 1 across.
    features = np.array(
        [[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1], [0, 0.28, 0.96]],
        dtype=np.float32,
    )
    result = jaccard_distance(features, k1=2, k2=2)
    pairs = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(as_dense(result), pairs, rtol=0, atol=1e-6)
    assert result.nnz == 8 and np.all(result.data <= 1e-6)


def test_k1_one_stores_only_the_zero_diagonal():
    result = jaccard_distance(clustered_features(25, 4, seed=4), k1=1, k2=1)
    assert result.nnz == 25
    np.testing.assert_array_equal(result.indices, np.arange(25))
    np.testing.assert_array_equal(result.data, np.zeros(25, dtype=np.float32))


def test_sparse_layout():
    result = jaccard_distance(clustered_features(200, 64, seed=5, spread=0.3))
    assert result.shape == (200, 200)
    assert result.has_sorted_indices
    assert result.data.min() >= 0 and result.data.max() < 1
    # The diagonal is 1 - m / (2 - m) with m a sum of weights that is 1 up to rounding.
    np.testing.assert_allclose(result.diagonal(), np.zeros(200), rtol=0, atol=1e-6)
    assert np.all(stored_mask(result).diagonal())
    # Symmetric up to the order the min-sums are added in.
    np.testing.assert_allclose(as_dense(result), as_dense(result).T, rtol=0, atol=1e-6)
    assert 200 < result.nnz < 200 * 200  # neither only the diagonal nor everything


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("budget", [1, 700, 5_000])
def test_min_sum_blocks_and_threads_give_the_same_matrix(threads, budget):
    # Small pair budgets cut the rows into many blocks, written a round of `threads` at a
    # time at offsets with room to spare, then moved left over the unused room.
    features = clustered_features(180, 24, seed=8, spread=0.35)
    expected = jaccard_distance(features, k1=12, k2=4)
    with (
        mock.patch.object(jaccard_module, "_PAIR_BUDGET", budget),
        mock.patch.object(jaccard_module, "_threads", lambda: threads),
    ):
        result = jaccard_distance(features, k1=12, k2=4)
    assert result.nnz == expected.nnz > 180
    np.testing.assert_array_equal(result.indptr, expected.indptr)
    np.testing.assert_array_equal(result.indices, expected.indices)
    np.testing.assert_array_equal(result.data, expected.data)


def test_permuting_samples_permutes_distances():
    features = clustered_features(150, 16, seed=6)
    order = np.random.default_rng(1).permutation(150)
    permuted = as_dense(jaccard_distance(features[order]))
    np.testing.assert_allclose(
        permuted, as_dense(jaccard_distance(features))[np.ix_(order, order)], atol=1e-6
    )


def test_bfloat16_tensor_is_searched_as_float32():
    # Rounded to bfloat16, unit vectors stay within the normalisation tolerance.
    features = torch.from_numpy(clustered_features(60, 8, seed=11)).to(torch.bfloat16)
    expected = jaccard_distance(features.float().numpy(), k1=10)
    result = jaccard_distance(features, k1=10)
    np.testing.assert_array_equal(result.toarray(), expected.toarray())


def test_accepts_torch_tensors_and_other_float_dtypes():
    features = clustered_features(80, 8, seed=7)
    expected = jaccard_distance(features, k1=10)
    others = (
        torch.from_numpy(features),
        torch.from_numpy(features).to(torch.float64),
        features.astype(np.float64),
    )
    for other in others:
        result = jaccard_distance(other, k1=10)
        np.testing.assert_array_equal(result.indptr, expected.indptr)
        np.testing.assert_array_equal(result.indices, expected.indices)
        np.testing.assert_array_equal(result.data, expected.data)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_gives_the_cpu_result():
    features = clustered_features(300, 32, seed=8)
    expected = as_dense(jaccard_distance(features))
    result = jaccard_distance(torch.from_numpy(features).cuda())
    # faiss on the GPU (where built with GPU support) rounds similarities differently,
    # which can swap near-tied neighbours; these features have none.
    np.testing.assert_allclose(as_dense(result), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "NaN or inf"),
        (np.inf, "NaN or inf"),
        (3.0, r"L2-normalised; 1 are not \(row 4 has norm"),
    ],
)
def test_rejects_bad_feature_values(value, message):
    features = clustered_features(40, 4, seed=9)
    features[4, 1] = value
    with pytest.raises(ClusteringError, match=message):
        jaccard_distance(features, k1=5)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (np.ones(8, dtype=np.float32), r"non-empty \[N, d\] array, got shape \(8,\)"),
        (np.ones((0, 4), dtype=np.float32), "non-empty"),
        (np.eye(4, dtype=np.int64), "floating point, got dtype int64"),
        (torch.eye(4, dtype=torch.int64), "floating point, got torch.int64"),
        (np.zeros((10, 3), dtype=np.float32), "L2-normalised; 10 are not"),
    ],
)
def test_rejects_bad_feature_arrays(features, message):
    with pytest.raises(ClusteringError, match=message):
        jaccard_distance(features, k1=2)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(k1=0), "k1 must be an integer >= 1, got 0"),
        (dict(k1=2.5), "k1 must be an integer"),
        (dict(k1=True), "k1 must be an integer"),
        (dict(k2=0), "k2 must be an integer >= 1"),
        (dict(k1=31), "k1=31 neighbours need at least 31 points, got 30"),
    ],
)
def test_rejects_bad_parameters(params, message):
    with pytest.raises(ClusteringError, match=message):
        jaccard_distance(clustered_features(30, 4, seed=10), **params)
