"""Re-ID evaluation: distances, ranking metrics (CMC, mAP, mINP), re-ranking, and the
clustering distance and pseudo-labels of self-training, and the pipeline that evaluates a
model on a query/gallery split.

Example::

    from crossreid.evaluation import pairwise_distance, evaluate_rank
    dist = pairwise_distance(qf, gf, metric="cosine")
    r = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, max_rank=50)
    print(r.rank(1), r.mAP, r.mINP)

    from crossreid.evaluation import jaccard_distance, cluster_pseudo_labels, estimate_eps
    dist = jaccard_distance(train_features, k1=30, k2=6)  # sparse [N, N]
    pseudo = cluster_pseudo_labels(dist, eps=estimate_eps(dist), min_samples=4)
"""

from typing import TYPE_CHECKING, Any

from crossreid.evaluation.clustering import (
    PseudoLabels,
    Reliability,
    cluster_pseudo_labels,
    estimate_eps,
    reliable_pseudo_labels,
)
from crossreid.evaluation.distance import METRICS, pairwise_distance
from crossreid.evaluation.features import evaluate_features
from crossreid.evaluation.jaccard import jaccard_distance
from crossreid.evaluation.rank import PROTOCOLS, RANK_METRICS, RankResult, evaluate_rank
from crossreid.evaluation.rerank import re_ranking

if TYPE_CHECKING:
    from crossreid.evaluation.pipeline import ModelEvaluation, evaluate_arrays, evaluate_model

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "RANK_METRICS",
    "ModelEvaluation",
    "PseudoLabels",
    "RankResult",
    "Reliability",
    "cluster_pseudo_labels",
    "estimate_eps",
    "evaluate_arrays",
    "evaluate_features",
    "evaluate_model",
    "evaluate_rank",
    "jaccard_distance",
    "pairwise_distance",
    "re_ranking",
    "reliable_pseudo_labels",
]

# The pipeline runs models (torch); the metrics above are NumPy only. Loading it on first use
# keeps ``crossreid --help`` and the configuration free of a torch import.
_PIPELINE = {"ModelEvaluation", "evaluate_arrays", "evaluate_model"}


def __getattr__(name: str) -> Any:
    if name in _PIPELINE:
        from crossreid.evaluation import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
