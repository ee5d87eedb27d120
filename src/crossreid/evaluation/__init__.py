"""Re-ID evaluation: distances, ranking metrics (CMC, mAP, mINP) and re-ranking.

Example::

    from crossreid.evaluation import pairwise_distance, evaluate_rank
    dist = pairwise_distance(qf, gf, metric="cosine")
    r = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, max_rank=50)
    print(r.rank(1), r.mAP, r.mINP)
"""

from crossreid.evaluation.distance import METRICS, pairwise_distance
from crossreid.evaluation.features import evaluate_features
from crossreid.evaluation.rank import PROTOCOLS, RankResult, evaluate_rank
from crossreid.evaluation.rerank import re_ranking

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "RankResult",
    "evaluate_features",
    "evaluate_rank",
    "pairwise_distance",
    "re_ranking",
]
