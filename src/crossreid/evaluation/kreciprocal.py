"""k-reciprocal encoding (Zhong et al., CVPR 2017) in sparse form, shared by two users.

:func:`crossreid.evaluation.re_ranking` (query-gallery re-ranking) and
:func:`crossreid.evaluation.jaccard_distance` (the clustering distance of SpCL / Cluster
Contrast) run the same steps on a table of nearest neighbours; they differ only in how
that table and the pairwise distances are obtained. The steps:

1. :func:`reciprocal_table`: the k-reciprocal neighbours of every item;
2. :func:`encode`: each set grown by its members' (k1/2)-reciprocal sets (the 2/3-overlap
   rule) and turned into the weights ``V`` (``exp(-distance)``, rows summing to one);
3. :func:`expand_queries`: local query expansion, each row the mean of its k2 nearest;
4. :class:`MinSumIndex` and :func:`jaccard_from_min_sum`: the Jaccard distance
   ``1 - m / (2 - m)`` with ``m = sum_k min(V_ik, V_jk)``, summed only over the columns two
   rows share.

``V`` is an ``[N, N]`` CSR matrix with a few dozen nonzeros per row (a few hundred after
query expansion), so nothing here is ever N x N dense.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np
import scipy.sparse as sp

from crossreid.utils.parallel import map_in_order

__all__ = [
    "MinSumIndex",
    "compiled_loops",
    "encode",
    "expand_queries",
    "expansion_pairs",
    "jaccard_from_min_sum",
    "reciprocal_table",
]

# Rows of the reciprocal test done at once: the [rows, width, width] index array is
# 4096 x 31 x 31 x 8 bytes, about 30 MB at k1 = 30.
_RECIPROCAL_ROWS = 4096
# Items whose expanded sets one thread lists at once (their room: 1,024 x 510 pairs at
# k1 = 30, 8 MB in all).
_EXPANSION_ROWS = 1024


def reciprocal_table(ranks: np.ndarray) -> np.ndarray:
    """k-reciprocal neighbours of every item, ``[N, k]`` with -1 where not reciprocal.

    Args:
        ranks: ``[N, k]`` integer array, row ``i`` the ``k`` nearest items of ``i`` (itself
            usually first), nearest first.

    Item ``ranks[i, r]`` is kept when ``i`` is among its own ``k`` nearest (the rows of
    ``ranks``): the original's forward/backward test, ``k`` being the width of ``ranks``.
    """
    n, width = ranks.shape
    table = np.full((n, width), -1, dtype=np.int64)
    items = np.arange(n)
    for start in range(0, n, _RECIPROCAL_ROWS):
        stop = min(start + _RECIPROCAL_ROWS, n)
        forward = ranks[start:stop]
        backward = ranks[forward]  # [rows, width, width]
        holds_self = (backward == items[start:stop, None, None]).any(axis=2)
        table[start:stop] = np.where(holds_self, forward, -1)
    return table


def expansion_pairs(
    reciprocal: np.ndarray, reciprocal_half: np.ndarray, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The expanded neighbour set of every item as ``(rows, cols)`` pairs, row-major, unique.

    Args:
        reciprocal: ``[N, w1]`` k1-reciprocal table (-1 = empty slot).
        reciprocal_half: ``[N, w2]`` (k1/2)-reciprocal table.
        threads: blocks of rows done side by side (the result does not depend on it).

    A reciprocal neighbour's own (k1/2)-reciprocal set is merged into a row's set when
    more than two thirds of it already lies in the row's k1-reciprocal set. Within a row
    the columns come out ascending.
    """
    n, own_width = reciprocal.shape
    room = own_width + own_width * reciprocal_half.shape[1]  # pairs an item can have
    reciprocal = np.ascontiguousarray(reciprocal, dtype=np.int64)
    reciprocal_half = np.ascontiguousarray(reciprocal_half, dtype=np.int64)
    expand = compiled_loops().expansion_pairs

    def block(start: int) -> tuple[np.ndarray, np.ndarray]:
        stop = min(start + _EXPANSION_ROWS, n)
        rows = np.empty((stop - start) * room, dtype=np.int64)
        cols = np.empty_like(rows)
        written = expand(reciprocal, reciprocal_half, start, stop, rows, cols)
        return rows[:written].copy(), cols[:written].copy()

    parts = list(map_in_order(block, range(0, n, _EXPANSION_ROWS), threads))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def encode(
    reciprocal: np.ndarray,
    reciprocal_half: np.ndarray,
    pair_distance: Callable[[np.ndarray, np.ndarray], np.ndarray],
    threads: int = 1,
) -> sp.csr_matrix:
    """The k-reciprocal feature ``V`` (``[N, N]`` CSR, float32), rows summing to one.

    Args:
        reciprocal: ``[N, w1]`` k1-reciprocal table from :func:`reciprocal_table`.
        reciprocal_half: ``[N, w2]`` (k1/2)-reciprocal table.
        pair_distance: ``pair_distance(rows, cols)`` gives the distance between items
            ``rows[t]`` and ``cols[t]`` (1-D arrays of equal length) as float32.
        threads: for :func:`expansion_pairs`.

    Row ``i`` holds ``exp(-d(i, j)) / sum`` over the expanded set of ``i``
    (:func:`expansion_pairs`), i.e. a softmax of the negated distances.
    """
    n = reciprocal.shape[0]
    rows, cols = expansion_pairs(reciprocal, reciprocal_half, threads)
    weight = np.exp(-pair_distance(rows, cols))
    counts = np.bincount(rows, minlength=n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # A row can be empty (an item outside its own nearest, with no reciprocal
    # neighbour); the original leaves such a row at zero, and so does this.
    row_sums = np.bincount(rows, weights=weight, minlength=n).astype(np.float32)
    data = weight / row_sums[rows]
    return sp.csr_matrix((data.astype(np.float32), cols, indptr), shape=(n, n))


def expand_queries(V: sp.csr_matrix, ranks_k2: np.ndarray) -> sp.csr_matrix:
    """Local query expansion: row ``i`` becomes the mean of the rows of its k2 nearest.

    Args:
        V: ``[N, N]`` CSR encoding from :func:`encode`.
        ranks_k2: ``[N, k2]`` nearest items of every item, itself included.
    """
    n, width = ranks_k2.shape
    selector = sp.csr_matrix(
        (
            np.ones(n * width, dtype=np.float32),
            ranks_k2.ravel(),
            np.arange(0, n * width + 1, width),
        ),
        shape=(n, n),
    )
    expanded = (selector @ V).tocsr()
    expanded.data /= np.float32(width)
    expanded.sort_indices()
    return expanded


def jaccard_from_min_sum(min_sum: np.ndarray) -> np.ndarray:
    """``1 - m / (2 - m)`` in place on a float32 array of min-sums ``m``; returns it.

    The original's float32 operations in the original's order, so results match it to
    the last bits.
    """
    np.divide(min_sum, 2.0 - min_sum, out=min_sum)
    np.subtract(1, min_sum, out=min_sum)
    return min_sum


class MinSumIndex:
    """``sum_k min(A_ik, B_jk)`` for blocks of rows of ``A`` against every row of ``B``.

    Args:
        rows: ``A``, ``[R, N]`` CSR (the rows whose min-sums are wanted).
        others: ``B``, ``[M, N]`` CSR (``A`` itself for the all-pairs case).

    A term is nonzero only where row ``i`` of ``A`` and row ``j`` of ``B`` both have
    column ``k``; those pairs are enumerated through a column-major copy of ``B`` (the
    inverted index), so the work is the number of such pairs, not ``R x M x N``. Each
    row's sums accumulate in float64 in the order of its entries (then of column ``k``'s
    entries), and are rounded to float32 once.

    The loops are compiled (:func:`compiled_loops`); they release the GIL, so blocks of
    rows can be computed side by side in threads.
    """

    def __init__(self, rows: sp.csr_matrix, others: sp.csr_matrix) -> None:
        self.rows = rows.tocsr()
        self.by_column = others.tocsc()
        self.num_others = others.shape[0]
        self._column_count = np.diff(self.by_column.indptr)
        # The compiled loops' one signature: int64 indices, float32 values (copies only
        # where the matrices differ; the caller's matrices are left as they are).
        self._arrays = tuple(
            array.astype(dtype, copy=False)
            for matrix in (self.rows, self.by_column)
            for array, dtype in (
                (matrix.indptr, np.int64), (matrix.indices, np.int64), (matrix.data, np.float32)
            )
        )  # fmt: skip

    def pairs_per_row(self) -> np.ndarray:
        """``[R]`` number of (entry of ``A``, entry of ``B``) pairs each row generates."""
        rows = self.rows
        pairs = np.add.reduceat(np.append(self._column_count[rows.indices], 0), rows.indptr[:-1])
        pairs[np.diff(rows.indptr) == 0] = 0
        return pairs

    def row_blocks(self, pair_budget: int, max_rows: int) -> Iterator[tuple[int, int]]:
        """Consecutive ``(start, stop)`` row ranges of at most ``max_rows`` rows generating
        at most ``pair_budget`` pairs (a single row may exceed it on its own)."""
        pairs = self.pairs_per_row()
        total = self.rows.shape[0]
        start = 0
        while start < total:
            stop = start + 1
            budget = pairs[start]
            while stop < total and stop - start < max_rows and budget + pairs[stop] <= pair_budget:
                budget += pairs[stop]
                stop += 1
            yield start, stop
            start = stop

    def block(self, start: int, stop: int) -> np.ndarray:
        """Min-sums of rows ``[start, stop)`` of ``A`` with all of ``B``: ``[stop - start, M]``
        float32."""
        out = np.zeros((stop - start, self.num_others), dtype=np.float32)
        compiled_loops().dense_min_sums(start, stop, *self._arrays, out)
        return out

    def jaccard_rows(
        self, start: int, stop: int, indices: np.ndarray, values: np.ndarray, counts: np.ndarray
    ) -> int:
        """The Jaccard distances ``1 - m / (2 - m)`` below 1 of rows ``[start, stop)`` of
        ``A`` with all of ``B``, written row after row, columns ascending, into
        ``indices`` and ``values`` (from their first element; room for
        :meth:`pairs_per_row`'s count, at most ``M``, per row), and each row's count into
        ``counts`` ``[stop - start]``. Returns the entries written.

        ``m`` is rounded to float32 first and the distance computed in float32 in the
        original's order (as :func:`jaccard_from_min_sum`), so a self-distance can round
        just below zero: it is clipped to 0, as the original clips it.
        """
        return int(
            compiled_loops().sparse_jaccard(
                start, stop, *self._arrays, self.num_others, indices, values, counts
            )
        )


def compiled_loops() -> ModuleType:
    """The compiled loops (:mod:`crossreid.evaluation._loops`), imported on first use:
    importing numba takes a few tenths of a second that most commands never need."""
    from crossreid.evaluation import _loops

    return _loops
