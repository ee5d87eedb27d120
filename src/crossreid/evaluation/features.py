"""Evaluation straight from features, one query chunk at a time.

For large benchmarks (MSMT17: 11,659 x 82,161) the full distance matrix would be 3.8 GB in
float32; :func:`evaluate_features` only ever holds ``chunk_size x G`` distances.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crossreid.errors import EvaluationError
from crossreid.evaluation.distance import GalleryDistance, _is_torch, check_metric
from crossreid.evaluation.rank import RankAccumulator, RankResult

__all__ = ["evaluate_features"]

# Default chunk: about 128 MB of float32 distances per query chunk.
_CHUNK_ELEMENTS = 1 << 25


def evaluate_features(
    qf: Any,
    gf: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "cosine",
    chunk_size: int | None = None,
    max_rank: int = 50,
    protocol: str = "market",
    seed: int = 0,
) -> RankResult:
    """Same result as ``evaluate_rank(pairwise_distance(qf, gf, metric), ...)``, without
    ever holding the ``Q x G`` matrix.

    Args:
        qf: ``(Q, d)`` query features (NumPy array or torch tensor).
        gf: ``(G, d)`` gallery features.
        q_pids, g_pids, q_camids, g_camids: identity and camera labels, ``(Q,)`` / ``(G,)``.
        metric: distance metric (see :func:`~crossreid.evaluation.pairwise_distance`).
        chunk_size: query rows per chunk; default about 128 MB of distances per chunk.
        max_rank, protocol, seed: as for :func:`~crossreid.evaluation.evaluate_rank`.

    Returns:
        :class:`~crossreid.evaluation.RankResult`.

    Raises:
        EvaluationError: as ``pairwise_distance`` and ``evaluate_rank``, or a bad chunk size.
    """
    metric = check_metric(metric)
    if not _is_torch(qf):
        qf = np.asarray(qf)
    if qf.ndim != 2:
        raise EvaluationError(
            f"query features must be a 2-D array (num_query, dim), got shape {tuple(qf.shape)}"
        )
    gallery = GalleryDistance(gf, metric)
    num_query = int(qf.shape[0])
    acc = RankAccumulator(
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        max_rank=max_rank,
        protocol=protocol,
        seed=seed,
        num_query=num_query,
        num_gallery=gallery.num_gallery,
    )
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // gallery.num_gallery)
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise EvaluationError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    out = None
    for start in range(0, num_query, chunk_size):
        block = qf[start : start + chunk_size]
        # Reuse one output buffer for every full chunk (saves page faults on big galleries).
        full = out is not None and out.shape[0] == block.shape[0]
        dist = gallery(block, out=out if full else None)
        if out is None:
            out = dist
        acc.add(dist, start)
    return acc.result()
