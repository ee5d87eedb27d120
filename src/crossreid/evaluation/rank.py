"""Ranking metrics for person re-identification: CMC, mAP and mINP.

:func:`evaluate_rank` gives, to rounding, the numbers of the standard algorithm (argsort
each distance row, drop the query's own-camera images of its identity, walk the ranked list)
without sorting any row. A query's AP, CMC and INP depend only on the positions of its true
matches in the ranked list, and the position of the match at gallery index ``j`` is

    #{kept k : d_k < d_j} + #{kept k : d_k == d_j and k < j}

(ties are broken by gallery index, as a stable sort would). So for each block of query rows:

1. gather the distances of each query's true matches (a handful per query);
2. keep only the gallery items no farther than the query's farthest match (one vectorised
   comparison over the block; for a useful model that is a few hundred items per query);
3. sort those few values, row by row, as integer keys ``row * K + order_key(value)``, and
   count the items before each match with ``np.searchsorted``;
4. correct for the discarded same-camera images of the query's identity and for exact ties.

Nothing of size Q x G is allocated besides a boolean mask for one block of rows; the work
after the comparison scales with the number of items ranked above the last match.

Protocols
---------
``"market"`` (also Duke, MSMT17): gallery images with the query's pid *and* camera are
discarded; queries left without a true match are skipped; AP is the mean precision at each
true match; CMC is the clipped cumulative match curve; INP = #matches / rank of the last
match (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook").

``"cuhk03"``: single-gallery-shot CMC. For each valid query and each of 10 repeats, one
image is drawn per gallery identity among its kept images (those not discarded above,
taken in gallery-index order, index ``floor(u * n)`` for a uniform ``u``), and the rank of
the query's drawn true match among the drawn images is recorded; the CMC averages the
repeats. The uniforms come from ``numpy.random.default_rng(seed)``, an array of shape
``(10, num_gallery_ids)`` per valid query in query order, so results do not depend on
chunking. mAP and mINP are computed as for ``"market"`` (on all kept images), as in the
classic CUHK03 evaluation code.

If ``max_rank`` exceeds the number of gallery images the CMC keeps length ``max_rank``;
its tail is 1.0 (every valid query has found its match by then).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossreid.errors import EvaluationError

__all__ = ["RankResult", "evaluate_rank", "RankAccumulator", "PROTOCOLS", "RANK_METRICS"]

PROTOCOLS = ("market", "cuhk03")
#: The metrics every evaluation reports (:meth:`RankResult.as_dict` keys, fractions in [0, 1]):
#: the names used in ``metrics.jsonl``, TensorBoard, checkpoints and the demo's results.
RANK_METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
_PROTOCOL_ALIASES = {
    "market": "market",
    "market1501": "market",
    "duke": "market",
    "dukemtmcreid": "market",
    "msmt17": "market",
    "cuhk03": "cuhk03",
}
CUHK03_REPEATS = 10
# Distance elements examined per block (bounds the mask and candidate arrays).
_BLOCK_ELEMENTS = 1 << 21
# Drawn gallery images per block for the CUHK03 protocol (rows x repeats x identities).
_SAMPLE_ELEMENTS = 1 << 21
_F32_KEY_RANGE = 1 << 32
# Rough costs (ns) deciding, per query row, between sorting the items ranked above its
# farthest match and counting with one full-row comparison per match.
_SORT_NS = 25.0
_PASS_NS = 0.3
_CALL_NS = 500.0


@dataclass(frozen=True)
class RankResult:
    """Result of :func:`evaluate_rank` / ``evaluate_features``.

    Attributes:
        cmc: ``(max_rank,)`` float64, ``cmc[k]`` = fraction of valid queries with a true
            match within the top ``k + 1``.
        mAP: mean average precision over valid queries, in ``[0, 1]``.
        mINP: mean inverse negative penalty over valid queries, in ``[0, 1]``.
        num_valid_queries: queries with at least one true match after the discard rule.
        ap: ``(Q,)`` float64 per-query AP, NaN for skipped queries.
        inp: ``(Q,)`` float64 per-query INP, NaN for skipped queries.
        protocol: ``"market"`` or ``"cuhk03"``.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    ap: np.ndarray = field(repr=False)
    inp: np.ndarray = field(repr=False)
    protocol: str = "market"

    def rank(self, k: int) -> float:
        """Rank-``k`` accuracy (``cmc[k - 1]``), ``1 <= k <= max_rank``."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank {k} outside the computed CMC (1..{len(self.cmc)})")
        return float(self.cmc[k - 1])

    def as_dict(self) -> dict[str, float | int]:
        """``rank1, rank5, rank10, rank20`` (those within ``max_rank``), ``mAP``, ``mINP``,
        ``num_valid_queries``; accuracies as fractions in ``[0, 1]``."""
        out: dict[str, float | int] = {
            f"rank{k}": self.rank(k) for k in (1, 5, 10, 20) if k <= len(self.cmc)
        }
        out["mAP"] = float(self.mAP)
        out["mINP"] = float(self.mINP)
        out["num_valid_queries"] = int(self.num_valid_queries)
        return out


# --------------------------------------------------------------------------- helpers
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(name: str, values: Any, expected: int, what: str) -> np.ndarray:
    arr = _to_numpy(values)
    if arr.ndim != 1:
        raise EvaluationError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != expected:
        raise EvaluationError(
            f"{name} has {arr.shape[0]} entries but there are {expected} {what} "
            "(rows/columns of the distance matrix or features)"
        )
    return arr


def _check_protocol(protocol: str) -> str:
    name = _PROTOCOL_ALIASES.get(str(protocol).lower())
    if name is None:
        raise EvaluationError(
            f"unknown evaluation protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}"
        )
    return name


def _order_keys(values: np.ndarray, *more: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Exact order-preserving int64 keys in ``[0, K)`` for ``values`` (and ``more``).

    float32 maps its bit pattern to a monotone integer (no sort); other types are ranked
    against the sorted distinct values of ``values``, which must contain every element of
    ``more``. Equal values (including ``-0.0`` and ``0.0``) get equal keys.
    """
    if values.dtype == np.float32:
        keys = []
        for v in (values, *more):
            bits = (v + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
            # Negative floats order backwards by magnitude: flip their 31 low bits.
            keys.append((bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64) + (1 << 31))
        return keys, _F32_KEY_RANGE
    distinct = np.unique(values)
    return [np.searchsorted(distinct, v) for v in (values, *more)], max(1, distinct.size)


class RankAccumulator:
    """Evaluates blocks of distance rows and accumulates the ranking metrics.

    :func:`evaluate_rank` feeds it the whole matrix; ``evaluate_features`` feeds it one
    query chunk at a time, so Q x G is never held. Blocks must be added in query order
    (the CUHK03 protocol draws its random samples in that order).

    Args:
        q_pids, q_camids: ``(Q,)`` identity and camera of each query.
        g_pids, g_camids: ``(G,)`` identity and camera of each gallery image.
        max_rank: length of the CMC curve.
        protocol: ``"market"`` or ``"cuhk03"`` (see the module docstring).
        seed: seed of the CUHK03 sampling.
    """

    def __init__(
        self,
        q_pids: Any,
        g_pids: Any,
        q_camids: Any,
        g_camids: Any,
        max_rank: int = 50,
        protocol: str = "market",
        seed: int = 0,
        num_query: int | None = None,
        num_gallery: int | None = None,
    ) -> None:
        self.protocol = _check_protocol(protocol)
        if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)):
            raise EvaluationError(f"max_rank must be a positive integer, got {max_rank!r}")
        if max_rank < 1:
            raise EvaluationError(f"max_rank must be a positive integer, got {max_rank}")
        self.max_rank = int(max_rank)
        num_query = len(_to_numpy(q_pids)) if num_query is None else num_query
        num_gallery = len(_to_numpy(g_pids)) if num_gallery is None else num_gallery
        if num_query == 0:
            raise EvaluationError("the query set is empty (0 queries)")
        if num_gallery == 0:
            raise EvaluationError("the gallery is empty (0 gallery images)")
        q_pids = _labels("q_pids", q_pids, num_query, "queries")
        g_pids = _labels("g_pids", g_pids, num_gallery, "gallery images")
        q_camids = _labels("q_camids", q_camids, num_query, "queries")
        g_camids = _labels("g_camids", g_camids, num_gallery, "gallery images")
        self.num_query, self.num_gallery = num_query, num_gallery

        # Dense labels shared by query and gallery (also accepts string ids).
        try:
            _, pid_lab = np.unique(np.concatenate([q_pids, g_pids]), return_inverse=True)
            _, cam_lab = np.unique(np.concatenate([q_camids, g_camids]), return_inverse=True)
        except TypeError as err:
            raise EvaluationError(f"pids/camids of mixed, unorderable types: {err}") from None
        self._q_lab, g_lab = pid_lab[:num_query], pid_lab[num_query:]
        self._q_cam, self._g_cam = cam_lab[:num_query], cam_lab[num_query:]
        num_labels = int(pid_lab.max()) + 1
        # Gallery grouped by identity, each group in gallery-index order.
        self._g_order = np.argsort(g_lab, kind="stable")
        self._g_count = np.bincount(g_lab, minlength=num_labels)
        self._g_start = np.cumsum(self._g_count) - self._g_count
        # Identities present in the gallery, for the CUHK03 draws.
        self._g_ids = np.flatnonzero(self._g_count)

        self._ap = np.full(num_query, np.nan)
        self._inp = np.full(num_query, np.nan)
        # Histogram of the first true match's rank (CUHK03: of each draw's match).
        self._first_hist = np.zeros(self.max_rank + 1)
        self._rng = np.random.default_rng(seed)
        self._next_row = 0
        self._mask: np.ndarray | None = None  # reused comparison buffer, one block

    # ------------------------------------------------------------------ public
    def add(self, distances: Any, start: int | None = None) -> None:
        """Evaluate distance rows ``start .. start + len(distances)`` (``(b, G)``)."""
        d = _to_numpy(distances)
        start = self._next_row if start is None else start
        if start != self._next_row:
            raise EvaluationError(f"rows must be added in order: expected {self._next_row}")
        if d.ndim != 2 or d.shape[1] != self.num_gallery:
            raise EvaluationError(
                f"distance block has shape {d.shape}; expected (rows, {self.num_gallery})"
            )
        if start + d.shape[0] > self.num_query:
            raise EvaluationError(
                f"distance rows {start}..{start + d.shape[0]} exceed the {self.num_query} queries"
            )
        if d.dtype not in (np.float32, np.float64):
            d = d.astype(np.float64)
        block = max(1, _BLOCK_ELEMENTS // self.num_gallery)
        for s in range(0, d.shape[0], block):
            self._add_block(np.ascontiguousarray(d[s : s + block]), start + s)
        self._next_row = start + d.shape[0]

    def result(self) -> RankResult:
        """The metrics over all rows added so far (all queries must have been added)."""
        if self._next_row != self.num_query:
            raise EvaluationError(
                f"only {self._next_row} of {self.num_query} query rows were evaluated"
            )
        valid = ~np.isnan(self._ap)
        num_valid = int(valid.sum())
        if num_valid == 0:
            raise EvaluationError(
                "no valid query: no query identity appears in the gallery under another camera"
            )
        # Integer counts until here, so the curve does not depend on chunking.
        draws = CUHK03_REPEATS if self.protocol == "cuhk03" else 1
        cmc = np.cumsum(self._first_hist[: self.max_rank]) / (num_valid * draws)
        return RankResult(
            cmc=np.minimum(cmc, 1.0),
            mAP=float(np.mean(self._ap[valid])),
            mINP=float(np.mean(self._inp[valid])),
            num_valid_queries=num_valid,
            ap=self._ap.copy(),
            inp=self._inp.copy(),
            protocol=self.protocol,
        )

    # ------------------------------------------------------------------ internals
    def _add_block(self, d: np.ndarray, start: int) -> None:
        b, num_g = d.shape
        with np.errstate(over="ignore"):
            total = d.sum()
        # A NaN/inf anywhere makes the sum non-finite (so can overflow; confirm then).
        if not np.isfinite(total) and not np.isfinite(d).all():
            bad = start + int(np.flatnonzero(~np.isfinite(d).all(axis=1))[0])
            raise EvaluationError(f"the distance matrix contains NaN or inf (query row {bad})")

        # Same-identity gallery items of each query in the block, row by row.
        lab = self._q_lab[start : start + b]
        lens = self._g_count[lab]
        row = np.repeat(np.arange(b), lens)
        offset = np.arange(row.size) - np.repeat(np.cumsum(lens) - lens, lens)
        gidx = self._g_order[self._g_start[lab][row] + offset]
        junk = self._g_cam[gidx] == self._q_cam[start : start + b][row]
        m_row, m_g = row[~junk], gidx[~junk]
        j_row, j_g = row[junk], gidx[junk]

        m_count = np.bincount(m_row, minlength=b)
        m_start = np.cumsum(m_count) - m_count
        valid = np.flatnonzero(m_count)
        if valid.size == 0:
            return
        t = d[m_row, m_g]

        before = self._items_before(d, m_row, m_g, t, m_count, m_start, valid)
        if j_row.size:
            before -= self._junk_before(m_row, m_g, t, j_row, j_g, d[j_row, j_g], b)

        # Rank positions (0-based, among kept items) of each query's matches, ascending.
        composite = m_row * (num_g + 1) + before
        composite.sort()
        pos = composite - m_row * (num_g + 1)
        nth = np.arange(m_row.size) - m_start[m_row] + 1
        q_idx = start + valid
        self._ap[q_idx] = np.add.reduceat(nth / (pos + 1.0), m_start[valid]) / m_count[valid]
        last = pos[m_start[valid] + m_count[valid] - 1]
        self._inp[q_idx] = m_count[valid] / (last + 1.0)

        if self.protocol == "market":
            first = pos[m_start[valid]]
            self._first_hist += np.bincount(
                np.minimum(first, self.max_rank), minlength=self.max_rank + 1
            )
        else:
            self._cuhk03_block(d, start, valid, m_g, m_start, m_count)

    def _items_before(self, d, m_row, m_g, t, m_count, m_start, valid) -> np.ndarray:
        """Per true match: gallery items (all, junk included) ranked before it in its row."""
        b, num_g = d.shape
        # Only items no farther than a query's farthest match can precede any of its matches.
        t_max = np.full(b, -np.inf, dtype=d.dtype)
        t_max[valid] = np.maximum.reduceat(t, m_start[valid])
        if self._mask is None or self._mask.size < d.size:
            self._mask = np.empty(d.size, dtype=bool)
        mask = self._mask[: d.size].reshape(d.shape)
        np.less_equal(d, t_max[:, None], out=mask)
        cand = np.flatnonzero(mask)
        c_row = cand // num_g
        before = np.empty(m_row.size, dtype=np.int64)

        # Rows whose farthest match is deep (a weak model) are cheaper to count with one
        # comparison pass per match than to sort; the cost model is in nanoseconds.
        c_count = np.bincount(c_row, minlength=b)
        deep = c_count * _SORT_NS > m_count * (num_g * _PASS_NS + _CALL_NS)
        if deep.any():
            shallow_items = ~deep[c_row]
            cand, c_row = cand[shallow_items], c_row[shallow_items]
            for r in np.flatnonzero(deep).tolist():
                row = d[r]
                span = slice(int(m_start[r]), int(m_start[r] + m_count[r]))
                pairs = zip(t[span].tolist(), m_g[span].tolist(), strict=True)
                for i, (value, g) in enumerate(pairs, start=span.start):
                    before[i] = np.count_nonzero(row < value)
                    if np.count_nonzero(row == value) > 1:  # exact ties: gallery index decides
                        before[i] += np.count_nonzero(row[:g] == value)
        shallow = np.flatnonzero(~deep[m_row])
        if shallow.size == 0:
            return before

        s_row, s_t = m_row[shallow], t[shallow]
        (c_key, t_key), key_range = _order_keys(d.ravel()[cand], s_t)
        del cand
        # (row, value) as one integer per item: a single flat sort orders every row.
        c_key += c_row * key_range
        c_key.sort()
        del c_row
        t_key += s_row * key_range
        row_start = np.searchsorted(c_key, np.arange(b, dtype=np.int64) * key_range)
        lo = np.searchsorted(c_key, t_key, side="left")
        hi = np.searchsorted(c_key, t_key, side="right")
        del c_key
        before[shallow] = lo - row_start[s_row]
        # Exact ties: items with the same distance rank by gallery index.
        for k in np.flatnonzero(hi - lo > 1):
            i = shallow[k]
            before[i] += np.count_nonzero(d[m_row[i], : m_g[i]] == t[i])
        return before

    @staticmethod
    def _junk_before(m_row, m_g, t, j_row, j_g, j_t, b) -> np.ndarray:
        """Per match: discarded same-camera items of its query that rank before it."""
        n_m = m_row.size
        rows = np.concatenate([m_row, j_row])
        vals = np.concatenate([t, j_t])
        gids = np.concatenate([m_g, j_g])
        is_junk = np.concatenate([np.zeros(n_m, np.int64), np.ones(j_row.size, np.int64)])
        order = np.lexsort((gids, vals, rows))
        junk_upto = np.cumsum(is_junk[order])
        where = np.empty_like(order)
        where[order] = np.arange(order.size)
        j_count = np.bincount(j_row, minlength=b)
        junk_prev_rows = np.cumsum(j_count) - j_count
        return junk_upto[where[:n_m]] - junk_prev_rows[m_row]

    def _cuhk03_block(self, d, start, valid, m_g, m_start, m_count) -> None:
        """Single-gallery-shot CMC of the valid rows ``valid`` of block ``d``."""
        ids = self._g_ids
        n_ids = ids.size
        step = max(1, _SAMPLE_ELEMENTS // (CUHK03_REPEATS * n_ids))
        for s in range(0, valid.size, step):
            rows = valid[s : s + step]
            n = rows.size
            u = self._rng.random((n, CUHK03_REPEATS, n_ids))
            q_lab = self._q_lab[start + rows]
            own = np.searchsorted(ids, q_lab)  # column of the query's own identity
            sizes = np.broadcast_to(self._g_count[ids], (n, n_ids)).copy()
            sizes[np.arange(n), own] = m_count[rows]
            pick = np.minimum((u * sizes[:, None, :]).astype(np.int64), sizes[:, None, :] - 1)
            del u
            gidx = self._g_order[self._g_start[ids][None, None, :] + pick]
            # The query's own identity draws among its true matches only.
            own_pick = pick[np.arange(n), :, own]  # (n, repeats)
            own_g = m_g[m_start[rows][:, None] + own_pick]
            gidx[np.arange(n), :, own] = own_g
            dist = d[rows[:, None, None], gidx]
            own_d = dist[np.arange(n), :, own][..., None]
            ahead = (dist < own_d) | ((dist == own_d) & (gidx < own_g[..., None]))
            rank0 = np.count_nonzero(ahead, axis=2)  # (n, repeats)
            self._first_hist += np.bincount(
                np.minimum(rank0, self.max_rank).ravel(), minlength=self.max_rank + 1
            )


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    protocol: str = "market",
    seed: int = 0,
) -> RankResult:
    """CMC, mAP and mINP of a query x gallery distance matrix (smaller = closer).

    Args:
        distmat: ``(Q, G)`` distances, NumPy array or torch tensor (float32 is evaluated
            as is, anything else as float64).
        q_pids, g_pids: ``(Q,)`` / ``(G,)`` identity labels (any sortable type).
        q_camids, g_camids: ``(Q,)`` / ``(G,)`` camera labels.
        max_rank: length of the returned CMC curve.
        protocol: ``"market"`` (also for Duke/MSMT17) or ``"cuhk03"``.
        seed: seed of the CUHK03 single-shot sampling (unused for ``"market"``).

    Returns:
        :class:`RankResult`; ``ap``/``inp`` hold NaN for skipped queries.

    Raises:
        EvaluationError: inconsistent lengths, empty query set or gallery, NaN/inf
            distances, unknown protocol, or no query with a valid true match.

    Example::

        >>> import numpy as np
        >>> d = np.array([[0.1, 0.5, 0.3]])
        >>> r = evaluate_rank(d, [1], [1, 2, 1], [0], [1, 1, 1], max_rank=3)
        >>> r.cmc.tolist(), round(r.mAP, 4)
        ([1.0, 1.0, 1.0], 1.0)
    """
    d = _to_numpy(distmat)
    if d.ndim != 2:
        raise EvaluationError(f"the distance matrix must be 2-D (Q, G), got shape {d.shape}")
    acc = RankAccumulator(
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        max_rank=max_rank,
        protocol=protocol,
        seed=seed,
        num_query=d.shape[0],
        num_gallery=d.shape[1],
    )
    acc.add(d, 0)
    return acc.result()
