"""The original k-reciprocal re-ranking algorithm, kept as the test oracle.

A plain transcription of Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding" (CVPR 2017), in the form of the authors' widely used
``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``: dense
(Q+G)x(Q+G) matrices, a full argsort of every row and Python loops. It is slow and needs
several N x N arrays on purpose: it is what ``crossreid.evaluation.re_ranking`` must
reproduce, not a model for it.

The one liberty taken: ``sort_kind`` defaults to ``"stable"`` so that equal distances
are ranked by item index. The original uses NumPy's default (unstable) sort, which makes
its output depend on the sort implementation whenever distances tie; the benchmark
passes ``sort_kind="quicksort"`` to time it exactly as published.
"""

from __future__ import annotations

import numpy as np


def _reciprocal_neighbours(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Items among the k+1 nearest of ``i`` that also hold ``i`` among their k+1 nearest."""
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    rows_holding_i = np.where(backward == i)[0]
    return forward[rows_holding_i]


def re_ranking_oracle(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    sort_kind: str = "stable",
) -> np.ndarray:
    """Re-ranked Q x G distance (float32) computed the original, dense way."""
    num_query = q_g_dist.shape[0]
    num_all = q_g_dist.shape[0] + q_g_dist.shape[1]

    # Whole (Q+G) x (Q+G) matrix, squared, each column divided by its maximum, then
    # transposed: row i of `original` holds column i of the squared matrix.
    original = np.concatenate(
        [
            np.concatenate([q_q_dist, q_g_dist], axis=1),
            np.concatenate([q_g_dist.T, g_g_dist], axis=1),
        ],
        axis=0,
    )
    original = np.power(original, 2).astype(np.float32)
    original = np.transpose(1.0 * original / np.max(original, axis=0))
    V = np.zeros_like(original).astype(np.float32)
    initial_rank = np.argsort(original, kind=sort_kind).astype(np.int32)

    half_k1 = int(np.around(k1 / 2.0))
    for i in range(num_all):
        k_reciprocal = _reciprocal_neighbours(initial_rank, i, k1)
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            candidate_reciprocal = _reciprocal_neighbours(initial_rank, candidate, half_k1)
            shared = np.intersect1d(candidate_reciprocal, k_reciprocal)
            if len(shared) > 2.0 / 3 * len(candidate_reciprocal):
                expansion = np.append(expansion, candidate_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = 1.0 * weight / np.sum(weight)

    original = original[:num_query,]
    if k2 != 1:
        # Local query expansion: average the vectors of the k2 nearest items (self included).
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(num_all):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    del initial_rank

    # Inverted index: for every item (column of V), the rows where it is nonzero.
    inverted = [np.where(V[:, column] != 0)[0] for column in range(num_all)]

    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(num_query):
        min_sum = np.zeros(shape=[1, num_all], dtype=np.float32)
        nonzero = np.where(V[i, :] != 0)[0]
        for column in nonzero:
            rows = inverted[column]
            min_sum[0, rows] = min_sum[0, rows] + np.minimum(V[i, column], V[rows, column])
        jaccard[i] = 1 - min_sum / (2.0 - min_sum)

    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:num_query, num_query:]
