"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in bounded memory.

The published algorithm builds the whole (Q+G) x (Q+G) distance matrix, argsorts every
row and keeps several dense N x N arrays (about 10 GB at Market-1501 scale). Every step
only ever looks at a row's few nearest neighbours, so this implementation:

* streams the N x N squared, normalised distance in row blocks built straight from the
  three input blocks (never concatenated) and keeps only the top ``max(k1 + 1, k2)``
  neighbours of each row, ordered by (distance, index);
* holds the k-reciprocal encoding ``V`` and its query expansion as sparse CSR matrices
  (a row has a few dozen nonzeros, a few hundred after expansion);
* computes the Jaccard distance for the Q x G block only, by summing ``min(V_ik, V_jk)``
  over the columns ``k`` a query and a gallery item share, one query block at a time.

The encoding steps live in :mod:`crossreid.evaluation.kreciprocal`, shared with
:func:`crossreid.evaluation.jaccard_distance`; this module supplies the neighbour table
and the distances read from the three blocks. The only dense output-sized array is the
Q x G float32 result. Results equal the original algorithm (to float32 rounding of sums)
when equal distances are ranked by item index, i.e. the original run with a stable sort.

Example:
    >>> from crossreid.evaluation import pairwise_distance, re_ranking
    >>> q_g = pairwise_distance(qf, gf, "L2")  # doctest: +SKIP
    >>> q_q = pairwise_distance(qf, qf, "L2")  # doctest: +SKIP
    >>> g_g = pairwise_distance(gf, gf, "L2")  # doctest: +SKIP
    >>> dist = re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)  # doctest: +SKIP
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import scipy.sparse as sp

from crossreid.errors import EvaluationError
from crossreid.evaluation.kreciprocal import (
    MinSumIndex,
    encode,
    expand_queries,
    jaccard_from_min_sum,
    reciprocal_table,
)

__all__ = ["re_ranking"]

# Rows of the N x N matrix materialised at once: 512 rows x 19,281 columns x 4 bytes is
# about 40 MB, small next to the inputs and large enough to amortise NumPy call overhead.
_ROW_BLOCK = 512
# Upper bound on (query, gallery) pairs expanded at once in the Jaccard step (~16 bytes each).
_PAIR_BUDGET = 4_000_000


def re_ranking(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-rank query-gallery distances with k-reciprocal encoding.

    Args:
        q_g_dist: query-gallery distances, shape ``[Q, G]`` (NumPy array or tensor).
        q_q_dist: query-query distances, shape ``[Q, Q]``.
        g_g_dist: gallery-gallery distances, shape ``[G, G]``.
        k1: size of the k-reciprocal neighbourhood (the paper uses 20).
        k2: neighbours averaged in local query expansion, the item itself included
            (6 in the paper; 1 switches query expansion off).
        lambda_value: weight of the original distance in the final blend, in [0, 1].

    Returns:
        float32 array ``[Q, G]``: ``(1 - lambda) * jaccard + lambda * original`` where
        ``original`` is the squared distance divided by the largest squared distance
        from that query to any item (query or gallery). Smaller is closer.

    Raises:
        EvaluationError: on shape mismatches, empty inputs, NaN/inf distances, a query or
            gallery item whose distances are all zero, or parameters out of range.
    """
    q_g, q_q, g_g = _validate(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)
    blocks = _DistanceBlocks(q_g, q_q, g_g)
    n = blocks.n

    width_k1 = min(k1 + 1, n)
    width_half = min(int(np.around(k1 / 2.0)) + 1, n)
    width_k2 = min(k2, n)
    ranks = _nearest_neighbours(blocks, max(width_k1, width_k2))

    reciprocal = reciprocal_table(ranks[:, :width_k1])
    reciprocal_half = reciprocal_table(ranks[:, :width_half])
    V = encode(reciprocal, reciprocal_half, blocks.normalised_at)
    if k2 != 1:
        V = expand_queries(V, ranks[:, :width_k2])
    del ranks, reciprocal, reciprocal_half
    return _blend(blocks, V, lambda_value)


def _as_array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 2:
        raise EvaluationError(f"re_ranking: {name} must be 2-D, got shape {array.shape}")
    if array.dtype.kind in "biu":
        array = array.astype(np.float64)
    elif array.dtype.kind != "f":
        raise EvaluationError(f"re_ranking: {name} must hold real numbers, got dtype {array.dtype}")
    return array


def _validate(
    q_g_dist: Any, q_q_dist: Any, g_g_dist: Any, k1: Any, k2: Any, lambda_value: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise EvaluationError(f"re_ranking: {name} must be an integer >= 1, got {value!r}")
    if (
        isinstance(lambda_value, bool)
        or not isinstance(lambda_value, numbers.Real)
        or not 0.0 <= float(lambda_value) <= 1.0
    ):
        raise EvaluationError(
            f"re_ranking: lambda_value must be a number in [0, 1], got {lambda_value!r}"
        )
    q_g = _as_array(q_g_dist, "q_g_dist")
    q_q = _as_array(q_q_dist, "q_q_dist")
    g_g = _as_array(g_g_dist, "g_g_dist")
    num_query, num_gallery = q_g.shape
    if num_query == 0 or num_gallery == 0:
        raise EvaluationError(f"re_ranking: empty query or gallery, q_g_dist has shape {q_g.shape}")
    if q_q.shape != (num_query, num_query):
        raise EvaluationError(
            f"re_ranking: q_q_dist must have shape ({num_query}, {num_query}) to match "
            f"q_g_dist {q_g.shape}, got {q_q.shape}"
        )
    if g_g.shape != (num_gallery, num_gallery):
        raise EvaluationError(
            f"re_ranking: g_g_dist must have shape ({num_gallery}, {num_gallery}) to match "
            f"q_g_dist {q_g.shape}, got {g_g.shape}"
        )
    return q_g, q_q, g_g


def _square(source: np.ndarray, out: np.ndarray) -> None:
    # Squared in the input precision, then rounded to float32, as the original's
    # np.power(...).astype(np.float32) does.
    np.square(source, out=out, casting="same_kind")


def _square_transposed(source: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = source.T ** 2`` in tiles, so the strided side of the transpose stays in cache."""
    tile = 256
    for first in range(0, source.shape[0], tile):
        _square(source[first : first + tile].T, out[:, first : first + tile])


class _DistanceBlocks:
    """Rows of the normalised squared (Q+G) x (Q+G) distance, read from the three blocks.

    The original concatenates ``[[q_q, q_g], [q_g.T, g_g]]``, squares it, divides each
    column by its maximum and transposes. Row ``i`` of that result is column ``i`` of the
    squared matrix, i.e. row ``i`` of ``A**2`` with ``A = [[q_q.T, q_g], [q_g.T, g_g.T]]``,
    divided by that row's maximum. Reading the blocks transposed keeps this exact even for
    asymmetric inputs.
    """

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_query, self.num_gallery = q_g.shape
        self.n = self.num_query + self.num_gallery
        self.row_max = self._row_maxima()

    def squared_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of ``A**2`` as float32, shape ``[stop - start, N]``."""
        nq = self.num_query
        out = np.empty((stop - start, self.n), dtype=np.float32)
        q_stop = min(stop, nq)
        if start < q_stop:
            rows = out[: q_stop - start]
            _square_transposed(self.q_q[:, start:q_stop], rows[:, :nq])
            _square(self.q_g[start:q_stop], rows[:, nq:])
        g_start = max(start, nq)
        if g_start < stop:
            rows = out[g_start - start :]
            columns = slice(g_start - nq, stop - nq)
            _square_transposed(self.q_g[:, columns], rows[:, :nq])
            _square_transposed(self.g_g[:, columns], rows[:, nq:])
        return out

    def normalised_rows(self, start: int, stop: int) -> np.ndarray:
        rows = self.squared_rows(start, stop)
        rows /= self.row_max[start:stop, None]
        return rows

    def normalised_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Entries ``(rows[t], cols[t])`` of the normalised matrix, float32."""
        nq = self.num_query
        raw = np.empty(rows.shape, dtype=np.result_type(self.q_g, self.q_q, self.g_g))
        row_q, col_q = rows < nq, cols < nq
        for mask, block, first, second in (
            (row_q & col_q, self.q_q, cols, rows),
            (row_q & ~col_q, self.q_g, rows, cols - nq),
            (~row_q & col_q, self.q_g, cols, rows - nq),
            (~row_q & ~col_q, self.g_g, cols - nq, rows - nq),
        ):
            raw[mask] = block[first[mask], second[mask]]
        squared = np.square(raw).astype(np.float32, copy=False)
        return squared / self.row_max[rows]

    def _row_maxima(self) -> np.ndarray:
        row_max = np.empty(self.n, dtype=np.float32)
        # Overflow and NaN are reported as an EvaluationError below, not as warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, self.n, _ROW_BLOCK):
                stop = min(start + _ROW_BLOCK, self.n)
                row_max[start:stop] = self.squared_rows(start, stop).max(axis=1)
        # A NaN or inf anywhere lands in some row maximum (every entry is in some row),
        # so this one check covers all three inputs, including float32 overflow of x**2.
        bad = np.flatnonzero(~np.isfinite(row_max))
        if bad.size:
            raise EvaluationError(
                f"re_ranking: distances involving {self._describe(int(bad[0]))} contain "
                "NaN or inf (or overflow float32 when squared)"
            )
        zero = np.flatnonzero(row_max == 0)
        if zero.size:
            raise EvaluationError(
                f"re_ranking: every distance involving {self._describe(int(zero[0]))} is "
                "zero; cannot normalise"
            )
        return row_max

    def _describe(self, item: int) -> str:
        if item < self.num_query:
            return f"query {item}"
        return f"gallery item {item - self.num_query}"


def _nearest_neighbours(blocks: _DistanceBlocks, width: int) -> np.ndarray:
    """The ``width`` nearest items of every row, ordered by (distance, index): ``[N, width]``.

    Equals the first ``width`` columns of a stable argsort of each row, without sorting
    whole rows: a partial selection (``torch.topk``, several times faster than
    ``np.argpartition``) finds the ``width`` smallest, and only rows where the largest of
    them is tied with an item outside the selection fall back to a full stable sort.
    """
    import torch  # deferred: importing torch is slow and only this step needs it

    n = blocks.n
    ranks = np.empty((n, width), dtype=np.int64)
    for start in range(0, n, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n)
        rows = blocks.normalised_rows(start, stop)
        if width >= n:
            ranks[start:stop] = np.argsort(rows, axis=1, kind="stable")[:, :width]
            continue
        values, chosen = torch.topk(
            torch.from_numpy(rows), width, dim=1, largest=False, sorted=False
        )
        values, chosen = values.numpy(), chosen.numpy()
        threshold = values.max(axis=1)
        # The selection is unambiguous when exactly `width` items are <= the threshold;
        # otherwise topk picked arbitrary members of a tie.
        at_most = np.count_nonzero(rows <= threshold[:, None], axis=1)
        order = np.lexsort((chosen, values), axis=1)
        ranks[start:stop] = np.take_along_axis(chosen, order, axis=1)
        for local in np.flatnonzero(at_most != width):
            ranks[start + local] = np.argsort(rows[local], kind="stable")[:width]
    return ranks


def _blend(blocks: _DistanceBlocks, V: sp.csr_matrix, lambda_value: float) -> np.ndarray:
    """``(1 - lambda) * jaccard + lambda * original`` for the query x gallery block."""
    nq = blocks.num_query
    index = MinSumIndex(V[:nq], V[nq:])
    result = np.empty((nq, blocks.num_gallery), dtype=np.float32)
    for start, stop in index.row_blocks(_PAIR_BUDGET, max_rows=2048):
        # In place, with the original's float32 operations in the original's order:
        # (1 - m / (2 - m)) * (1 - lambda) + (q_g**2 / row_max) * lambda.
        jaccard = jaccard_from_min_sum(index.block(start, stop))
        original = np.empty_like(jaccard)
        _square(blocks.q_g[start:stop], original)
        original /= blocks.row_max[start:stop, None]
        original *= lambda_value
        jaccard *= 1 - lambda_value
        np.add(jaccard, original, out=result[start:stop])
    return result
