"""Searching a gallery index with query images: embed, search, describe each match.

Example::

    >>> index = open_index("gallery.npz")                                   # doctest: +SKIP
    >>> results = search_images(model, index, ["q1.jpg", "q2.jpg"], topk=5)  # doctest: +SKIP
    >>> results[0]["matches"][0]["path"], results[0]["matches"][0]["status"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from crossreid.errors import ConfigError
from crossreid.inference import extract_features, records_from_paths
from crossreid.retrieval.index import FeatureIndex
from crossreid.retrieval.visualize import RankedRow, match_status, render_ranked_rows

logger = logging.getLogger(__name__)

__all__ = ["draw_search_results", "search_images"]


def search_images(
    model: nn.Module,
    index: FeatureIndex,
    images: Sequence[str | os.PathLike[str]],
    topk: int = 10,
    *,
    names: tuple[str, str] = ("the index", "the model"),
    **extraction: Any,
) -> list[dict[str, Any]]:
    """The ``topk`` gallery matches of each query image.

    Args:
        model: the network that embedded the gallery (its feature size must match).
        index: the gallery (:func:`~crossreid.retrieval.index.open_index`).
        images: query image files (Market-style names give pid and camera, for the
            ``status`` of each match).
        topk: matches per query, clamped to the gallery size with a warning.
        names: how messages call the index and the model (e.g. their files).
        extraction: options of :func:`~crossreid.inference.extract_features` (``device``,
            ``batch_size``, ``flip``, ``engine``: ``"auto"``, ``"torch"`` or
            ``"onnxruntime"``, ...).

    Returns:
        One ``{"query", "pid", "camid", "matches": [{"rank", "index", "path", "pid", "camid",
        "distance", "status"}]}`` per readable query; ``status`` is ``match`` / ``wrong`` /
        ``junk`` (see :func:`~crossreid.retrieval.visualize.match_status`) or ``unknown``.

    Raises:
        ConfigError: the model's feature size differs from the index's, or bad ``topk``.
    """
    if topk < 1:
        raise ConfigError(f"--topk must be a positive integer, got {topk}")
    feature_dim = int(getattr(model, "feature_dim", index.dim))
    if feature_dim != index.dim:
        raise ConfigError(
            f"{names[0]} holds {index.dim}-d features, but {names[1]} gives {feature_dim}-d "
            "features: extract the gallery with it"
        )
    queries = extract_features(model, records_from_paths(images), desc="query", **extraction)
    if topk > index.ntotal:
        logger.warning(
            "--topk %d is larger than the gallery (%d images): showing all %d",
            topk,
            index.ntotal,
            index.ntotal,
        )
        topk = index.ntotal
    distances, ranked = index.search(queries.features, topk)
    results = []
    for qi, qpath in enumerate(queries.paths):
        qpid, qcam = int(queries.pids[qi]), int(queries.camids[qi])
        matches = []
        for rank, (j, d) in enumerate(zip(ranked[qi], distances[qi], strict=True), start=1):
            if j >= 0:
                matches.append({"rank": rank, **_describe(index, int(j)), "distance": float(d)})
        for match in matches:
            known = match["pid"] is not None and match["camid"] is not None
            match["status"] = (
                match_status(qpid, qcam, match["pid"], match["camid"]) if known else "unknown"
            )
        results.append({"query": qpath, "pid": qpid, "camid": qcam, "matches": matches})
    return results


def _describe(index: FeatureIndex, j: int) -> dict[str, Any]:
    return {
        "index": j,
        "path": index.paths[j] if index.paths is not None else None,
        "pid": int(index.pids[j]) if index.pids is not None else None,
        "camid": int(index.camids[j]) if index.camids is not None else None,
    }


def draw_search_results(
    results: Sequence[dict[str, Any]], out: str | os.PathLike[str], title: str
) -> Path:
    """One picture of :func:`search_images` results: a row per query, its matches coloured
    by status.

    Raises:
        ConfigError: the index stored no gallery paths to draw.
    """
    rows = []
    for result in results:
        if any(m["path"] is None for m in result["matches"]):
            raise ConfigError("the index stores no gallery paths to draw")
        rows.append(
            RankedRow(
                result["query"],
                [(m["path"], m["status"]) for m in result["matches"]],
                Path(result["query"]).name,
                [m["distance"] for m in result["matches"]],
            )
        )
    return render_ranked_rows(rows, out, title=title)
