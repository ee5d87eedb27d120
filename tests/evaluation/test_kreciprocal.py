"""Hand-computed cases for the k-reciprocal steps shared by re-ranking and jaccard_distance."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from crossreid.evaluation import kreciprocal
from crossreid.evaluation.kreciprocal import (
    MinSumIndex,
    encode,
    expand_queries,
    expansion_pairs,
    jaccard_from_min_sum,
    reciprocal_table,
)


def test_reciprocal_table_keeps_neighbours_that_rank_the_item_back():
    # 0's nearest are (0, 1) but 1's are (1, 2): 1 is not reciprocal for 0. 1 and 2 are.
    ranks = np.array([[0, 1], [1, 2], [2, 1]])
    np.testing.assert_array_equal(reciprocal_table(ranks), [[0, -1], [1, 2], [2, 1]])


# Row 0's k1-reciprocal set is {0, 1, 2}. Candidate 1's half set {1, 3} shares 1 of 2
# items with it (not more than 2/3 of 2): not merged. Candidate 2's {2, 0, 1, 4} shares
# 3 of 4 (more than 8/3): merged, bringing in 4. Candidate 0's {0} shares all of it.
RECIPROCAL = np.array([[0, 1, 2], [1, -1, -1], [2, -1, -1], [3, -1, -1], [4, -1, -1]])
RECIPROCAL_HALF = np.array(
    [[0, -1, -1, -1], [1, 3, -1, -1], [2, 0, 1, 4], [3, -1, -1, -1], [4, -1, -1, -1]]
)


def test_expansion_merges_half_sets_mostly_inside_the_row_set():
    rows, cols = expansion_pairs(RECIPROCAL, RECIPROCAL_HALF)
    np.testing.assert_array_equal(rows, [0, 0, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(cols, [0, 1, 2, 4, 1, 2, 3, 4])


def test_expansion_needs_strictly_more_than_two_thirds():
    # Candidate 1's half set {1, 0, 5} shares exactly 2 of 3 with {0, 1}: not merged.
    reciprocal = np.array([[0, 1]] + [[i, -1] for i in range(1, 6)])
    half = np.array([[0, -1, -1], [1, 0, 5]] + [[i, -1, -1] for i in range(2, 6)])
    rows, cols = expansion_pairs(reciprocal, half)
    np.testing.assert_array_equal(cols[rows == 0], [0, 1])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_expansion_matches_the_rule_on_random_tables(n, k, seed):
    # Any k-nearest table (self first), blocks of 3 items done two at a time in threads.
    rng = np.random.default_rng(seed)
    k = min(k, n)
    ranks = np.array([[i, *rng.permutation(np.delete(np.arange(n), i))[: k - 1]] for i in range(n)])
    own, half = reciprocal_table(ranks), reciprocal_table(ranks[:, : max(1, k // 2)])
    expected_rows, expected_cols = [], []
    for item in range(n):
        members = {int(x) for x in own[item] if x >= 0}
        merged = set(members)
        for neighbour in members:
            candidates = {int(x) for x in half[neighbour] if x >= 0}
            if len(candidates & members) > 2 / 3 * len(candidates):
                merged |= candidates
        expected_rows += [item] * len(merged)
        expected_cols += sorted(merged)
    with mock.patch.object(kreciprocal, "_EXPANSION_ROWS", 3):
        rows, cols = expansion_pairs(own, half, threads=2)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(cols, expected_cols)


def test_encode_is_a_softmax_of_negated_distances_over_the_expanded_set():
    V = encode(RECIPROCAL, RECIPROCAL_HALF, lambda r, c: np.abs(r - c).astype(np.float32))
    assert V.shape == (5, 5) and V.dtype == np.float32
    weights = [math.exp(-d) for d in (0, 1, 2, 4)]
    expected_row0 = np.array(weights) / sum(weights)
    np.testing.assert_allclose(V[0].toarray()[0, [0, 1, 2, 4]], expected_row0, rtol=1e-6)
    np.testing.assert_allclose(V[1:].toarray(), np.eye(5)[1:], rtol=0, atol=0)


def test_expand_queries_averages_the_k2_nearest_rows():
    V = sp.csr_matrix(np.array([[0.5, 0.5, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32))
    expanded = expand_queries(V, np.array([[0, 1], [1, 2], [2, 0]]))
    np.testing.assert_allclose(
        expanded.toarray(), [[0.25, 0.75, 0], [0, 0.5, 0.5], [0.25, 0.25, 0.5]], rtol=1e-7
    )


def test_min_sum_by_hand():
    A = sp.csr_matrix(np.array([[0.5, 0.5, 0], [0, 1, 0]], dtype=np.float32))
    B = sp.csr_matrix(np.array([[0.25, 0.75, 0], [0, 0, 1], [0.5, 0, 0.5]], dtype=np.float32))
    index = MinSumIndex(A, B)
    np.testing.assert_array_equal(index.pairs_per_row(), [3, 1])
    np.testing.assert_allclose(index.block(0, 2), [[0.75, 0, 0.5], [0.75, 0, 0]], rtol=1e-7)
    # A budget of 3 pairs fits row 0 alone; row 1 gets its own block.
    assert list(index.row_blocks(pair_budget=3, max_rows=10)) == [(0, 1), (1, 2)]
    assert list(index.row_blocks(pair_budget=10, max_rows=10)) == [(0, 2)]


def test_jaccard_from_min_sum_by_hand():
    min_sum = np.array([0, 1, 0.5], dtype=np.float32)
    np.testing.assert_allclose(jaccard_from_min_sum(min_sum), [1, 0, 2 / 3], rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    others=st.integers(1, 12),
    columns=st.integers(1, 15),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    budget=st.integers(1, 50),
)
def test_min_sum_matches_dense_sum_of_minima(rows, others, columns, density, seed, budget):
    rng = np.random.default_rng(seed)

    def random_sparse(n):
        dense = rng.uniform(0.01, 1, size=(n, columns)) * (rng.random((n, columns)) < density)
        return dense.astype(np.float32)

    a, b = random_sparse(rows), random_sparse(others)
    expected = np.minimum(a[:, None, :], b[None, :, :]).sum(axis=2)
    index = MinSumIndex(sp.csr_matrix(a), sp.csr_matrix(b))
    blocks = list(index.row_blocks(pair_budget=budget, max_rows=4))
    assert blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(stop == start for (_, stop), (start, _) in zip(blocks, blocks[1:], strict=False))
    result = np.concatenate([index.block(start, stop) for start, stop in blocks])
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


def test_compiled_loops_work_without_a_cache_location():
    # numba raises at decoration time when it finds no writable cache folder (a read-only
    # install without a user cache directory): the loops then compile in each process.
    from numba.core.dispatcher import Dispatcher

    from crossreid.evaluation import _loops

    def add_one(values):
        return values + 1

    def no_location(self):
        raise RuntimeError("cannot cache function: no locator available")

    with mock.patch.object(Dispatcher, "enable_caching", no_location):
        compiled = _loops._compile(add_one)
    assert compiled._cache.__class__.__name__ == "NullCache"
    np.testing.assert_array_equal(compiled(np.arange(3)), [1, 2, 3])


def test_min_sum_index_leaves_the_callers_matrices_as_they_are():
    A = sp.csr_matrix(np.array([[0.5, 0.5, 0], [0, 1, 0]], dtype=np.float64))
    dtypes = (A.indptr.dtype, A.indices.dtype, A.data.dtype)
    MinSumIndex(A, A).block(0, 2)
    assert (A.indptr.dtype, A.indices.dtype, A.data.dtype) == dtypes
