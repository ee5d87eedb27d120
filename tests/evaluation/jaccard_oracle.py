"""The published k-reciprocal Jaccard distance for clustering, kept as the test oracle.

A plain transcription of ``compute_jaccard_distance`` as SpCL (Ge et al., NeurIPS 2020)
and Cluster Contrast publish it: an exact faiss search for the k1 nearest of every
feature, dense N x N float32 encodings ``V``, Python loops over N. It is slow and needs
several N x N arrays on purpose: it is what ``crossreid.evaluation.jaccard_distance``
must reproduce, not a model for it.

The one liberty taken, as in ``rerank_oracle.py``: with ``exact_ties=True`` (the default)
the neighbour table is the first k1 columns of a stable sort of faiss' similarities over
all items, so equal similarities are ranked by item index. The original keeps whatever
faiss' k1 search returns, which orders and cuts ties arbitrarily; the benchmark passes
``exact_ties=False`` to run it as published.
"""

from __future__ import annotations

import faiss
import numpy as np


def _reciprocal_neighbours(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Items among the first k+1 columns of row ``i`` that hold ``i`` in their own first k+1.

    ``initial_rank`` has k1 columns, so for ``k = k1`` the slice is the whole row.
    """
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    rows_holding_i = np.where(backward == i)[0]
    return forward[rows_holding_i]


def _initial_rank(features: np.ndarray, k1: int, exact_ties: bool) -> np.ndarray:
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(features)
    if not exact_ties:
        _, initial_rank = index.search(features, k1)
        return initial_rank
    n = features.shape[0]
    scores, ids = index.search(features, n)
    similarity = np.empty((n, n), dtype=np.float32)
    np.put_along_axis(similarity, ids, scores, axis=1)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k1]


def jaccard_distance_oracle(
    features: np.ndarray, k1: int = 30, k2: int = 6, exact_ties: bool = True
) -> np.ndarray:
    """Dense ``[N, N]`` float32 Jaccard distance of L2-normalised ``[N, d]`` features."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    n = features.shape[0]
    initial_rank = _initial_rank(features, k1, exact_ties)

    nn_k1 = []
    nn_k1_half = []
    for i in range(n):
        nn_k1.append(_reciprocal_neighbours(initial_rank, i, k1))
        nn_k1_half.append(_reciprocal_neighbours(initial_rank, i, int(np.around(k1 / 2))))

    V = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        k_reciprocal = nn_k1[i]
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            candidate_reciprocal = nn_k1_half[candidate]
            shared = np.intersect1d(candidate_reciprocal, k_reciprocal)
            if len(shared) > 2 / 3 * len(candidate_reciprocal):
                expansion = np.append(expansion, candidate_reciprocal)
        expansion = np.unique(expansion)
        if expansion.size == 0:
            # A sample outside its own k1 nearest (more than k1 exact copies of it come
            # first) may have no reciprocal neighbour; torch's softmax of nothing is
            # nothing, so the original leaves the row at zero.
            continue
        # Softmax of the negated squared distance 2 - 2 cos of unit vectors.
        dist = 2 - 2 * (features[i][None, :] @ features[expansion].T)
        weight = np.exp(-dist - (-dist).max())
        V[i, expansion] = (weight / weight.sum()).ravel()
    del nn_k1, nn_k1_half

    if k2 != 1:
        # Local query expansion: the mean of the k2 nearest items' vectors (self included).
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(n):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
        del V_qe
    del initial_rank

    # Inverted index: for every item (column of V), the rows where it is nonzero.
    inverted = [np.where(V[:, column] != 0)[0] for column in range(n)]

    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        min_sum = np.zeros((1, n), dtype=np.float32)
        nonzero = np.where(V[i, :] != 0)[0]
        for column in nonzero:
            rows = inverted[column]
            min_sum[0, rows] = min_sum[0, rows] + np.minimum(V[i, column], V[rows, column])
        jaccard[i] = 1 - min_sum / (2 - min_sum)
    del inverted, V

    jaccard[jaccard < 0] = 0.0
    return jaccard


def clustered_features(
    n: int, dim: int = 16, seed: int = 0, spread: float = 0.6, num_ids: int | None = None
) -> np.ndarray:
    """Test input: ``[n, dim]`` float32 unit vectors around ``num_ids`` random centres
    (``n // 8`` by default, about 8 samples each), with Gaussian noise of ``spread``."""
    rng = np.random.default_rng(seed)
    num_ids = max(2, n // 8) if num_ids is None else num_ids
    centres = rng.normal(size=(num_ids, dim))
    features = centres[rng.integers(0, num_ids, n)] + spread * rng.normal(size=(n, dim))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features.astype(np.float32)
