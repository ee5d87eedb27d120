"""The one evaluation pipeline: a model on a query/gallery split, or saved features.

:func:`evaluate_model` runs extraction (:mod:`crossreid.inference`; split across ranks under
``torchrun``, optionally with camera-wise BatchNorm), then :func:`evaluate_arrays`: the
distance, optional k-reciprocal re-ranking, and the ranking metrics. The trainer's periodic
evaluation, the demo and ``crossreid evaluate`` all call these two functions.

Example::

    >>> evaluation = evaluate_model(model, dataset.query, dataset.gallery)   # doctest: +SKIP
    >>> evaluation.metrics["mAP"]                                           # doctest: +SKIP
    0.352
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossreid.data.base import ImageRecord
from crossreid.errors import EvaluationError
from crossreid.evaluation.distance import pairwise_distance
from crossreid.evaluation.features import evaluate_features
from crossreid.evaluation.rank import RANK_METRICS, RankResult, evaluate_rank
from crossreid.evaluation.rerank import re_ranking
from crossreid.inference import extract_query_gallery

__all__ = ["RERANK_PARAMETERS", "ModelEvaluation", "evaluate_arrays", "evaluate_model"]

#: k-reciprocal re-ranking parameters (Zhong et al., CVPR 2017, the paper's defaults).
RERANK_PARAMETERS = {"k1": 20, "k2": 6, "lambda_value": 0.3}


@dataclass
class ModelEvaluation:
    """What :func:`evaluate_model` measured.

    Attributes:
        result: the :class:`~crossreid.evaluation.RankResult` (CMC, mAP, mINP).
        arrays: the query/gallery features and labels (the features-file arrays, see
            :mod:`crossreid.inference.features_file`).
    """

    result: RankResult
    arrays: dict[str, np.ndarray]

    @property
    def metrics(self) -> dict[str, float]:
        """:data:`~crossreid.evaluation.rank.RANK_METRICS` as fractions."""
        values = self.result.as_dict()
        return {key: float(values[key]) for key in RANK_METRICS if key in values}

    @property
    def cmc(self) -> list[float]:
        return [float(v) for v in self.result.cmc]


def evaluate_arrays(
    arrays: Mapping[str, Any],
    *,
    metric: str = "cosine",
    max_rank: int = 50,
    rerank: bool = False,
    protocol: str = "market",
    seed: int = 0,
) -> RankResult:
    """Rank-k, mAP and mINP of query/gallery features (``qf, gf, q_pids, g_pids, q_camids,
    g_camids``).

    Without re-ranking the distances are computed one query chunk at a time
    (:func:`~crossreid.evaluation.evaluate_features`), so a large benchmark never holds the
    ``Q x G`` matrix; re-ranking needs the query-query and gallery-gallery distances too
    (:data:`RERANK_PARAMETERS`).

    Raises:
        EvaluationError: inconsistent arrays, an unknown metric or protocol, ``max_rank < 1``.
    """
    if max_rank < 1:
        raise EvaluationError(f"max_rank must be at least 1, got {max_rank}")
    qf, gf = arrays["qf"], arrays["gf"]
    labels = (arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"])
    if not rerank:
        return evaluate_features(
            qf, gf, *labels, metric=metric, max_rank=max_rank, protocol=protocol, seed=seed
        )
    dist = re_ranking(
        pairwise_distance(qf, gf, metric),
        pairwise_distance(qf, qf, metric),
        pairwise_distance(gf, gf, metric),
        **RERANK_PARAMETERS,
    )
    return evaluate_rank(dist, *labels, max_rank=max_rank, protocol=protocol, seed=seed)


def evaluate_model(
    model: Any,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    *,
    image_size: Sequence[int] | None = None,
    metric: str = "cosine",
    max_rank: int = 50,
    rerank: bool = False,
    protocol: str = "market",
    seed: int = 0,
    camera_bn: Sequence[ImageRecord] | None = None,
    **extraction: Any,
) -> ModelEvaluation | None:
    """Extract the features of ``query`` and ``gallery`` with ``model`` and evaluate them.

    Args:
        model: maps normalised images to features (e.g. ``CrossDomainReID``); its training
            flag is left as it was.
        query, gallery: the records to rank (their pids and cameras are the ground truth).
        image_size: ``(H, W)``; default ``model.image_size``.
        metric, max_rank, rerank, protocol, seed: as for :func:`evaluate_arrays`.
        camera_bn: unlabelled images of the same cameras for camera-wise BatchNorm
            statistics (see :mod:`crossreid.inference.camera_bn`).
        extraction: options of :func:`~crossreid.inference.extract_features_distributed`
            (``batch_size``, ``device``, ``flip``, ``workers``, ``progress``,
            ``channels_last``, ``engine``: ``"auto"``, ``"torch"`` or ``"onnxruntime"``, ...).

    Returns:
        :class:`ModelEvaluation`, or ``None`` on ranks other than 0 under ``torchrun``.
    """
    arrays = extract_query_gallery(
        model, query, gallery, image_size, camera_bn=camera_bn, **extraction
    )
    if arrays is None:
        return None
    result = evaluate_arrays(
        arrays, metric=metric, max_rank=max_rank, rerank=rerank, protocol=protocol, seed=seed
    )
    return ModelEvaluation(result, arrays)
