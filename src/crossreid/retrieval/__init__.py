"""Search a gallery for a person (faiss indexes) and draw ranked results.

``build_index(gallery_features, metric)`` returns a :class:`FeatureIndex` whose exact search
ranks like :func:`crossreid.evaluation.pairwise_distance`; ``render_ranked_rows`` and
``visualize_ranked_results`` draw queries with their top-k matches.
"""

from crossreid.retrieval.index import METRICS, FeatureIndex, build_index, load_index
from crossreid.retrieval.visualize import (
    RankedRow,
    match_status,
    render_ranked_rows,
    visualize_features,
    visualize_ranked_results,
)

__all__ = [
    "METRICS",
    "FeatureIndex",
    "RankedRow",
    "build_index",
    "load_index",
    "match_status",
    "render_ranked_rows",
    "visualize_features",
    "visualize_ranked_results",
]
