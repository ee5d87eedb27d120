"""Compiled loops (numba) of the k-reciprocal steps that NumPy can only do through large
temporaries.

The min-sum step (:class:`~crossreid.evaluation.kreciprocal.MinSumIndex`): NumPy has no
sparse "sum of minima" product. The NumPy formulation expanded every (entry of ``A``,
entry of ``B``) pair into index and value arrays (about 40 bytes of temporaries each; 145
million pairs at N = 25,909 in ``benchmarks/jaccard.py``), scattered them with
``bincount`` into a dense block, then scanned the block for its nonzeros. Here each row
accumulates in one dense float64 row that stays in the cache, a bitmap records the columns
it touched, and only those are visited: the same sums, bit for bit, and the min-sum step
of the Jaccard distance took 0.9-1.0 s instead of 2.8-3.4 s at N = 25,909 (fresh
processes, the output in small pages).

The encoding weights of the Jaccard distance (:func:`pair_dots`): for each pair of an
expanded set, its similarity from the k-nearest table or, for the quarter of pairs not in
it, the dot product of the two feature rows, read in place. NumPy needed a ``[pairs, k1]``
membership mask and copies of both gathered rows (16 KB per pair at d = 2048).

The expansion of the k-reciprocal sets (:func:`expansion_pairs`): NumPy tested every
member of every candidate set against every member of the row's set at once, a
``[rows, k1, k1/2, k1]`` boolean array; here the sets are scanned row by row.

The functions are compiled on first use and cached on disk next to this file (or in
numba's user cache directory when this folder is read-only); they release the GIL, so
callers run blocks of rows side by side in threads.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["dense_min_sums", "expansion_pairs", "pair_dots", "sparse_jaccard"]


def _compile(function=None, **options):
    if function is None:
        return lambda function: _compile(function, **options)
    try:
        return numba.njit(nogil=True, cache=True, **options)(function)
    except RuntimeError:  # numba found no writable cache location: compile in each process
        return numba.njit(nogil=True, **options)(function)


# Index of the lowest set bit of a 64-bit word w from (w & -w) * _DE_BRUIJN >> 58.
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_LOWEST_BIT = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _LOWEST_BIT[((1 << _bit) * 0x03F79D71B4CB0A89 % 2**64) >> 58] = _bit


@numba.njit(inline="always")
def _accumulate_row(row, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, sums, touched):
    """Add ``min(A[row, k], B[j, k])`` into ``sums[j]`` for every shared column ``k`` and
    mark ``j`` in the bitmap ``touched``."""
    one = np.uint64(1)
    for entry in range(a_indptr[row], a_indptr[row + 1]):
        column = a_indices[entry]
        value = a_data[entry]
        for position in range(b_indptr[column], b_indptr[column + 1]):
            other = b_data[position]
            j = b_indices[position]
            sums[j] += value if value < other else other
            touched[j >> 6] |= one << np.uint64(j & 63)


@numba.njit(inline="always")
def _row_min_sums(
    row, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, sums, touched, columns
):  # fmt: skip
    """Accumulate row ``row``'s min-sums into ``sums`` (zero beforehand) and list the
    columns it touched, ascending, in ``columns``; returns their count and leaves the
    bitmap ``touched`` cleared. The caller zeroes ``sums`` at those columns."""
    _accumulate_row(row, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, sums, touched)
    count = 0
    for word in range(touched.size):
        bits = touched[word]
        touched[word] = 0
        while bits:
            lowest = bits & (~bits + np.uint64(1))
            columns[count] = word * 64 + _LOWEST_BIT[(lowest * _DE_BRUIJN) >> np.uint64(58)]
            count += 1
            bits ^= lowest
    return count


@_compile
def dense_min_sums(start, stop, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, out):
    """Rows ``[start, stop)`` of ``A``'s min-sums with every row of ``B`` into the zeroed
    float32 ``out`` ``[stop - start, M]``."""
    width = out.shape[1]
    sums = np.zeros(width, dtype=np.float64)
    touched = np.zeros((width + 63) // 64, dtype=np.uint64)
    columns = np.empty(width, dtype=np.int64)
    for row in range(start, stop):
        count = _row_min_sums(
            row, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, sums, touched, columns
        )
        for position in range(count):
            column = columns[position]
            out[row - start, column] = np.float32(sums[column])
            sums[column] = 0.0


@_compile
def sparse_jaccard(
    start, stop, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, width, indices,
    values, counts,
):  # fmt: skip
    """Rows ``[start, stop)``'s Jaccard distances below 1 with the ``width`` rows of ``B``,
    row after row, columns ascending, into ``indices`` / ``values``; each row's count into
    ``counts``. Returns the total."""
    sums = np.zeros(width, dtype=np.float64)
    touched = np.zeros((width + 63) // 64, dtype=np.uint64)
    columns = np.empty(width, dtype=np.int64)
    one, two, zero = np.float32(1), np.float32(2), np.float32(0)
    written = 0
    for row in range(start, stop):
        first = written
        count = _row_min_sums(
            row, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, sums, touched, columns
        )
        for position in range(count):
            column = columns[position]
            total = sums[column]
            sums[column] = 0.0
            if total > 0:
                # The original's float32 operations: 1 - m / (2 - m), clipped at 0.
                m = np.float32(total)
                distance = one - m / (two - m)
                if distance < one:
                    indices[written] = column
                    values[written] = distance if distance > zero else zero
                    written += 1
        counts[row - start] = written - first
    return written


# Reassociation lets the dot products use SIMD lanes (a float32 sum in another order; the
# features are checked finite beforehand).
@_compile(fastmath={"reassoc", "contract"})
def pair_dots(features, ranks, similarity, rows, cols, out):
    """``out[t] = features[rows[t]] . features[cols[t]]``, taken from ``similarity[r, p]``
    where ``ranks[r, p] == cols[t]`` (``r = rows[t]``, the first such ``p``)."""
    width = ranks.shape[1]
    for t in range(rows.size):
        row, col = rows[t], cols[t]
        found = -1
        for p in range(width):
            if ranks[row, p] == col:
                found = p
                break
        if found >= 0:
            out[t] = similarity[row, found]
        else:
            total = np.float32(0)
            for q in range(features.shape[1]):
                total += features[row, q] * features[col, q]
            out[t] = total


@_compile
def expansion_pairs(reciprocal, reciprocal_half, start, stop, rows, cols):
    """The expanded sets of items ``[start, stop)`` as ``(row, col)`` pairs into ``rows`` /
    ``cols`` (room for ``w1 + w1 * w2`` per item), columns ascending and unique within a
    row. Returns the pairs written. A reciprocal neighbour's own (k1/2)-reciprocal set is
    merged when more than two thirds of its members lie in the item's k1-reciprocal set."""
    own_width, half_width = reciprocal.shape[1], reciprocal_half.shape[1]
    members = np.empty(own_width + own_width * half_width, dtype=np.int64)
    written = 0
    for item in range(start, stop):
        count = 0
        for a in range(own_width):
            neighbour = reciprocal[item, a]
            if neighbour < 0:
                continue
            members[count] = neighbour
            count += 1
            size = 0
            shared = 0
            for b in range(half_width):
                candidate = reciprocal_half[neighbour, b]
                if candidate < 0:
                    continue
                size += 1
                for o in range(own_width):
                    if reciprocal[item, o] == candidate:
                        shared += 1
                        break
            if shared > 2.0 / 3 * size:
                for b in range(half_width):
                    candidate = reciprocal_half[neighbour, b]
                    if candidate >= 0:
                        members[count] = candidate
                        count += 1
        ordered = np.sort(members[:count])
        for position in range(count):
            if position == 0 or ordered[position] != ordered[position - 1]:
                rows[written] = item
                cols[written] = ordered[position]
                written += 1
    return written
