"""Gallery search with faiss: exact (flat) and approximate (IVF) indexes.

An index ranks gallery vectors for a query **the same way** as
:func:`crossreid.evaluation.pairwise_distance` with the same metric, and reports the same
distances (smaller is closer):

==============  ===================================  ===========================================
metric          what the index stores / searches     reported distance
==============  ===================================  ===========================================
``cosine``      L2-normalised vectors, inner product ``1 - cos(q, g)``
``correlation`` vectors minus their own mean, then   ``1 - pearson(q, g)``
                L2-normalised, inner product
``L2``          raw vectors, squared L2              ``||q - g||`` (square root of faiss' value)
``L1``          raw vectors, L1 (``METRIC_L1``)      ``sum |q - g|``
==============  ===================================  ===========================================

Each transformation is monotone, so the order is the order of ``pairwise_distance``.

**Ties.** Gallery items at equal distance come out in ascending gallery index, which is what
``np.argsort(pairwise_distance(q, g), kind="stable")`` gives, both inside the top-k and at
its boundary (of several items tied for the k-th place, the lowest indices are returned).
faiss itself orders and cuts ties arbitrarily, so each result row is re-sorted by
``(score, gallery index)``, and a query whose k-th and (k+1)-th scores are equal is searched
again over the whole gallery before it is cut. Distances computed by faiss and by
``pairwise_distance`` may differ in the last float bits, so two items whose distances differ
by less than ~1e-6 can swap; exactly equal gallery vectors tie in both.

**Approximate search** (``approx=True``) uses an inverted-file index (``IndexIVFFlat``):
k-means with ``nlist`` cells trained on a sample of the gallery, and ``nprobe`` cells
visited per query. It is for galleries too large for exact search; its recall against
exact search is measured by ``benchmarks/search.py``.

Example::

    >>> index = build_index(gallery_features, metric="cosine")          # doctest: +SKIP
    >>> distances, indices = index.search(query_features, k=10)         # doctest: +SKIP
    >>> index.save("gallery.index.npz")                                 # doctest: +SKIP
    >>> index = load_index("gallery.index.npz")                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossreid.errors import ConfigError, EvaluationError
from crossreid.evaluation.distance import METRICS as DISTANCE_METRICS
from crossreid.inference.features_file import gallery_arrays, save_npz_atomic

logger = logging.getLogger(__name__)
# faiss announces at INFO which CPU build it loads; that is noise on the command line.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

__all__ = [
    "INDEX_FORMAT",
    "METRICS",
    "FeatureIndex",
    "build_index",
    "load_index",
    "open_index",
]

INDEX_FORMAT = "crossreid-faiss-index"
INDEX_VERSION = 1
METRICS = DISTANCE_METRICS
_INNER_PRODUCT_METRICS = ("cosine", "correlation")
_EPS = 1e-12


def canonical_metric(metric: str) -> str:
    """The spelling used in :data:`METRICS` for ``metric`` (case-insensitive)."""
    for name in METRICS:
        if str(metric).lower() == name.lower():
            return name
    raise ConfigError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def _as_matrix(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``[N, D]`` array, rejecting NaN/inf and wrong widths."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 1 and dim is not None and x.shape[0] == dim:
        x = x[None, :]
    if x.ndim != 2:
        raise EvaluationError(f"{what} must be a 2-d [N, D] array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise EvaluationError(
            f"{what} have dimension {x.shape[1]}, but the index was built for dimension {dim}"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise EvaluationError(f"{what} contain NaN or inf values")
    return x


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Map vectors into the space faiss searches for ``metric`` (a new array)."""
    if metric == "correlation":
        x = x - x.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    if metric in _INNER_PRODUCT_METRICS:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, _EPS)
    return np.ascontiguousarray(x, dtype=np.float32)


def _faiss_metric(metric: str) -> int:
    import faiss  # native library, loaded on first index use

    return {
        "cosine": faiss.METRIC_INNER_PRODUCT,
        "correlation": faiss.METRIC_INNER_PRODUCT,
        "L2": faiss.METRIC_L2,
        "L1": faiss.METRIC_L1,
    }[metric]


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: about ``4 * sqrt(n)``, but at least 39 training points
    per cell (faiss' k-means minimum) and at least one cell."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


@dataclass
class FeatureIndex:
    """A faiss index over gallery features, with the metric and dimension it was built for.

    Attributes:
        metric: one of :data:`METRICS`.
        dim: feature dimension ``D``.
        kind: ``"exact"`` (flat) or ``"ivf"`` (approximate).
        index: the underlying ``faiss.Index``.
        paths, pids, camids: optional gallery metadata, one entry per indexed vector (kept
            with the index when it is saved, so search results can name their images).
    """

    metric: str
    dim: int
    kind: str
    index: Any
    paths: list[str] | None = None
    pids: np.ndarray | None = None
    camids: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        """Number of indexed gallery vectors."""
        return int(self.index.ntotal)

    @property
    def nprobe(self) -> int | None:
        """IVF cells visited per query (``None`` for an exact index)."""
        return int(self._ivf().nprobe) if self.kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise ConfigError("nprobe applies only to an approximate (IVF) index")
        ivf = self._ivf()
        if int(value) < 1:
            raise ConfigError(f"nprobe must be a positive integer, got {value!r}")
        ivf.nprobe = min(int(value), int(ivf.nlist))

    def _ivf(self) -> Any:
        import faiss  # native library, loaded on first index use

        return faiss.extract_index_ivf(self.index)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery items of each query.

        Args:
            queries: ``[Q, D]`` (or ``[D]``) float array or tensor.
            k: number of results; clamped (with a warning) to the gallery size.

        Returns:
            ``(distances [Q, k] float32, indices [Q, k] int64)``, nearest first, distances in
            the units of ``pairwise_distance(queries, gallery, metric)``. An approximate
            index may return fewer than ``k`` hits for a query; the missing slots hold
            index ``-1`` and distance ``inf``.
        """
        if isinstance(k, bool) or int(k) < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if k > self.ntotal:
            logger.warning(
                "top-k %d is larger than the gallery (%d items); returning %d",
                k,
                self.ntotal,
                self.ntotal,
            )
            k = self.ntotal
        q = _prepare(_as_matrix(queries, "query features", self.dim), self.metric)
        inner_product = self.metric in _INNER_PRODUCT_METRICS
        scores, ids = self._search_stable(q, k, inner_product)
        missing = ids < 0
        if inner_product:
            distances = 1.0 - scores
        elif self.metric == "L2":
            distances = np.sqrt(np.maximum(scores, 0.0))
        else:
            distances = scores
        distances = np.where(missing, np.inf, distances).astype(np.float32)
        return distances, ids.astype(np.int64)

    def _search_stable(
        self, q: np.ndarray, k: int, inner_product: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss scores and ids of the top ``k``, equal scores in ascending id order.

        One extra result is requested: where the k-th and (k+1)-th scores are equal, a tie
        straddles the boundary and faiss may have kept any of the tied items, so that query
        is searched again over the whole gallery (rare with real features) and cut after a
        stable sort.
        """
        extra = 1 if k < self.ntotal else 0
        scores, ids = self.index.search(q, k + extra)
        scores, ids = _sort_rows(scores, ids, inner_product)
        if extra:
            tied = np.flatnonzero((scores[:, k - 1] == scores[:, k]) & (ids[:, k] >= 0))
            rows_per_call = max(1, (1 << 24) // self.ntotal)
            for start in range(0, len(tied), rows_per_call):
                rows = tied[start : start + rows_per_call]
                all_scores, all_ids = self.index.search(q[rows], self.ntotal)
                all_scores, all_ids = _sort_rows(all_scores, all_ids, inner_product)
                scores[rows], ids[rows] = all_scores[:, : k + 1], all_ids[:, : k + 1]
        return scores[:, :k], ids[:, :k]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index, its metric, dimension and gallery metadata to one ``.npz`` file
        (atomically: a temporary file renamed over ``path``)."""
        import faiss  # native library, loaded on first index use

        arrays: dict[str, np.ndarray] = {
            "format": np.array(INDEX_FORMAT),
            "version": np.array(INDEX_VERSION),
            "metric": np.array(self.metric),
            "dim": np.array(self.dim),
            "kind": np.array(self.kind),
            "faiss_index": faiss.serialize_index(self.index),
        }
        if self.paths is not None:
            arrays["paths"] = np.asarray(self.paths, dtype=str)
        if self.pids is not None:
            arrays["pids"] = np.asarray(self.pids, dtype=np.int64)
        if self.camids is not None:
            arrays["camids"] = np.asarray(self.camids, dtype=np.int64)
        return save_npz_atomic(path, arrays)


def _sort_rows(
    scores: np.ndarray, ids: np.ndarray, inner_product: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Each row best first, equal scores by ascending id, missing (-1) slots last."""
    missing = ids < 0
    key = np.where(missing, np.inf, -scores if inner_product else scores)
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, ids), key), axis=-1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def build_index(
    gallery: Any,
    metric: str = "cosine",
    *,
    approx: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    kmeans_iterations: int = 20,
    paths: Sequence[str] | None = None,
    pids: Sequence[int] | None = None,
    camids: Sequence[int] | None = None,
    add_batch_size: int = 65536,
) -> FeatureIndex:
    """Index gallery features for search.

    Args:
        gallery: ``[N, D]`` float array or tensor (N ≥ 1).
        metric: ``"cosine" | "correlation" | "L2" | "L1"`` (as ``pairwise_distance``).
        approx: build an IVF index instead of an exact one.
        nlist: IVF cells (default :func:`default_nlist`).
        nprobe: IVF cells visited per query (default ``max(1, nlist // 16)``, at least 8 when
            there are that many cells).
        train_size: gallery vectors sampled to train the IVF k-means (default
            ``min(N, 64 * nlist)``).
        seed: seed of the training sample and k-means.
        kmeans_iterations: k-means iterations of the IVF training.
        paths, pids, camids: optional gallery metadata stored with the index.
        add_batch_size: vectors transformed and added per step (bounds the extra memory).

    Returns:
        A :class:`FeatureIndex`.
    """
    import faiss  # native library, loaded on first index use

    metric = canonical_metric(metric)
    gallery = _as_matrix(gallery, "gallery features")
    n, dim = gallery.shape
    if n == 0:
        raise EvaluationError("cannot build an index over an empty gallery")
    for name, values in (("paths", paths), ("pids", pids), ("camids", camids)):
        if values is not None and len(values) != n:
            raise EvaluationError(f"{name} has {len(values)} entries for {n} gallery vectors")
    faiss_metric = _faiss_metric(metric)
    if approx:
        nlist = default_nlist(n) if nlist is None else int(nlist)
        if not 1 <= nlist <= n:
            raise ConfigError(f"nlist must be in [1, {n}] for {n} gallery vectors, got {nlist}")
        quantizer = faiss.IndexFlat(dim, faiss_metric)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)
        index.cp.seed = int(seed)
        index.cp.niter = int(kmeans_iterations)
        train_size = min(n, 64 * nlist) if train_size is None else min(n, int(train_size))
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=train_size, replace=False))
        index.train(_prepare(gallery[sample], metric))
        if nprobe is None:
            nprobe = max(1, nlist // 16, min(8, nlist))
        index.nprobe = min(int(nprobe), nlist)
        kind = "ivf"
    else:
        index = faiss.IndexFlat(dim, faiss_metric)
        kind = "exact"
    for start in range(0, n, add_batch_size):
        index.add(_prepare(gallery[start : start + add_batch_size], metric))
    return FeatureIndex(
        metric=metric,
        dim=dim,
        kind=kind,
        index=index,
        paths=None if paths is None else [str(p) for p in paths],
        pids=None if pids is None else np.asarray(pids, dtype=np.int64),
        camids=None if camids is None else np.asarray(camids, dtype=np.int64),
    )


def load_index(
    path: str | os.PathLike[str],
    *,
    metric: str | None = None,
    dim: int | None = None,
) -> FeatureIndex:
    """Read an index written by :meth:`FeatureIndex.save`.

    Args:
        path: the ``.npz`` file.
        metric, dim: when given, the metric/dimension the caller needs; an index built for
            another one is refused.

    Raises:
        ConfigError: missing or unreadable file, not a crossreid index, or a metric or
            dimension other than the one asked for.
    """
    import faiss  # native library, loaded on first index use

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"index file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != INDEX_FORMAT:
                raise ConfigError(f"{path} is not a crossreid faiss index (no format entry)")
            stored_metric = str(data["metric"])
            stored_dim = int(data["dim"])
            kind = str(data["kind"])
            raw = np.ascontiguousarray(data["faiss_index"], dtype=np.uint8)
            paths = [str(p) for p in data["paths"]] if "paths" in data.files else None
            pids = data["pids"] if "pids" in data.files else None
            camids = data["camids"] if "camids" in data.files else None
    except ConfigError:
        raise
    except Exception as exc:  # corrupt zip, truncated file, missing keys
        raise ConfigError(f"cannot read index file {path}: {exc}") from None
    if metric is not None and canonical_metric(metric) != stored_metric:
        raise ConfigError(
            f"index {path} was built for metric {stored_metric!r}, not {canonical_metric(metric)!r}"
        )
    if dim is not None and int(dim) != stored_dim:
        raise ConfigError(
            f"index {path} holds {stored_dim}-d features, but the model gives {int(dim)}-d features"
        )
    index = faiss.deserialize_index(raw)
    if int(index.d) != stored_dim:
        raise ConfigError(
            f"index {path} is inconsistent: recorded dim {stored_dim}, faiss {index.d}"
        )
    return FeatureIndex(
        metric=stored_metric,
        dim=stored_dim,
        kind=kind,
        index=index,
        paths=paths,
        pids=pids,
        camids=camids,
    )


def open_index(
    path: str | os.PathLike[str],
    *,
    metric: str | None = None,
    approx: bool = False,
    nlist: int | None = None,
    nprobe: int | None = None,
) -> FeatureIndex:
    """The :class:`FeatureIndex` of a file: an index saved by :meth:`FeatureIndex.save`
    (loaded; ``metric`` must agree with its own), or a features file written by ``crossreid
    extract`` (an index built over its gallery with ``metric``, default cosine; IVF when
    ``approx``).

    Raises:
        ConfigError: the file is missing, unreadable, or neither kind.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"index file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            saved = "format" in data.files and str(data["format"]) == INDEX_FORMAT
            if not saved:
                features, paths, pids, camids = gallery_arrays(path, data)
    except (ConfigError, FileNotFoundError):
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read {path} as a .npz file: {exc}") from None
    if saved:
        index = load_index(path, metric=metric)
        if approx and index.kind != "ivf":
            logger.warning("--approx ignored: %s is a saved exact index", path)
        if nprobe is not None and index.kind == "ivf":
            index.nprobe = nprobe
        return index
    return build_index(
        features,
        metric or "cosine",
        approx=approx,
        nlist=nlist,
        nprobe=nprobe,
        paths=paths,
        pids=pids,
        camids=camids,
    )
