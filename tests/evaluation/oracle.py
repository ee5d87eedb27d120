"""The standard (slow) re-ID evaluation, written plainly: the oracle for the fast code.

It follows the widely used reference implementation: argsort every distance row (stable,
so ties rank by gallery index), walk each query's ranked list, drop the gallery images of
the query's identity taken by the query's camera, and read CMC / AP / INP off the 0-1
match vector. The CUHK03 variant draws its single-shot samples exactly as documented in
``crossreid.evaluation.rank`` (uniforms of shape (repeats, gallery ids) per valid query).
"""

from __future__ import annotations

import numpy as np

REPEATS = 10


def _pad(curve: np.ndarray, max_rank: int) -> np.ndarray:
    """Cut or extend a CMC row to max_rank (the tail repeats the last value)."""
    out = np.empty(max_rank)
    n = min(max_rank, curve.size)
    out[:n] = curve[:n]
    out[n:] = curve[-1]
    return out


def naive_market(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Returns (cmc, mAP, mINP, num_valid, ap) with ap NaN for skipped queries."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q = distmat.shape[0]
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    ap_per_query = np.full(num_q, np.nan)
    for q in range(num_q):
        order = indices[q]
        remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        raw_cmc = matches[q][~remove]
        if not raw_cmc.any():
            continue
        cmc = raw_cmc.cumsum()
        last = np.flatnonzero(raw_cmc == 1).max()
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(_pad(cmc.astype(np.float64), max_rank))
        precision = raw_cmc.cumsum() / np.arange(1.0, raw_cmc.size + 1)
        ap = (precision * raw_cmc).sum() / raw_cmc.sum()
        all_ap.append(ap)
        ap_per_query[q] = ap
    num_valid = len(all_ap)
    assert num_valid > 0, "no valid query"
    cmc = np.asarray(all_cmc).sum(0) / num_valid
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp)), num_valid, ap_per_query


def naive_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, seed=0):
    """Returns (cmc, mAP, num_valid): single-gallery-shot CMC over REPEATS draws."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    rng = np.random.default_rng(seed)
    gallery_ids = np.unique(g_pids)
    indices = np.argsort(distmat, axis=1, kind="stable")
    all_cmc, all_ap = [], []
    for q in range(distmat.shape[0]):
        order = indices[q]
        remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        kept = order[~remove]  # gallery indices in ranked order
        raw_cmc = (g_pids[kept] == q_pids[q]).astype(np.int32)
        if not raw_cmc.any():
            continue
        u = rng.random((REPEATS, gallery_ids.size))
        cmc = np.zeros(max_rank)
        for r in range(REPEATS):
            chosen = set()
            for column, pid in enumerate(gallery_ids):
                candidates = np.sort(kept[g_pids[kept] == pid])  # gallery-index order
                chosen.add(int(candidates[int(u[r, column] * candidates.size)]))
            mask = np.array([int(g) in chosen for g in kept])
            hits = raw_cmc[mask].cumsum()
            hits[hits > 1] = 1
            cmc += _pad(hits.astype(np.float64), max_rank)
        all_cmc.append(cmc / REPEATS)
        precision = raw_cmc.cumsum() / np.arange(1.0, raw_cmc.size + 1)
        all_ap.append((precision * raw_cmc).sum() / raw_cmc.sum())
    num_valid = len(all_ap)
    assert num_valid > 0, "no valid query"
    return np.asarray(all_cmc).sum(0) / num_valid, float(np.mean(all_ap)), num_valid
