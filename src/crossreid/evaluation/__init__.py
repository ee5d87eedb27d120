"""Re-ID evaluation: distances, ranking metrics (CMC, mAP, mINP), re-ranking, and the
clustering distance and pseudo-labels of self-training.

Example::

    from crossreid.evaluation import pairwise_distance, evaluate_rank
    dist = pairwise_distance(qf, gf, metric="cosine")
    r = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, max_rank=50)
    print(r.rank(1), r.mAP, r.mINP)

    from crossreid.evaluation import jaccard_distance, cluster_pseudo_labels, estimate_eps
    dist = jaccard_distance(train_features, k1=30, k2=6)  # sparse [N, N]
    pseudo = cluster_pseudo_labels(dist, eps=estimate_eps(dist), min_samples=4)
"""

from crossreid.evaluation.clustering import PseudoLabels, cluster_pseudo_labels, estimate_eps
from crossreid.evaluation.distance import METRICS, pairwise_distance
from crossreid.evaluation.features import evaluate_features
from crossreid.evaluation.jaccard import jaccard_distance
from crossreid.evaluation.rank import PROTOCOLS, RankResult, evaluate_rank
from crossreid.evaluation.rerank import re_ranking

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "PseudoLabels",
    "RankResult",
    "cluster_pseudo_labels",
    "estimate_eps",
    "evaluate_features",
    "evaluate_rank",
    "jaccard_distance",
    "pairwise_distance",
    "re_ranking",
]
