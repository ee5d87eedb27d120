"""evaluate_features: chunked evaluation equals evaluate_rank on the full matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossreid.errors import EvaluationError
from crossreid.evaluation import METRICS, evaluate_features, evaluate_rank, pairwise_distance


def _dataset(seed: int = 0, num_q: int = 37, num_g: int = 150, dim: int = 12):
    """Features with identity structure, so the metrics are far from trivial."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((15, dim))
    q_pids, g_pids = rng.integers(0, 15, num_q), rng.integers(0, 15, num_g)
    qf = (centroids[q_pids] + 1.5 * rng.standard_normal((num_q, dim))).astype(np.float32)
    gf = (centroids[g_pids] + 1.5 * rng.standard_normal((num_g, dim))).astype(np.float32)
    return qf, gf, q_pids, g_pids, rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [1, 5, 37, None])
def test_equals_evaluate_rank_on_full_matrix(metric, chunk_size):
    qf, gf, *labels = _dataset()
    full = evaluate_rank(pairwise_distance(qf, gf, metric), *labels, max_rank=20)
    chunked = evaluate_features(qf, gf, *labels, metric=metric, chunk_size=chunk_size, max_rank=20)
    np.testing.assert_array_equal(chunked.cmc, full.cmc)
    np.testing.assert_array_equal(chunked.ap, full.ap)
    assert chunked.mAP == full.mAP and chunked.mINP == full.mINP
    assert 0.0 < full.mAP < 1.0  # a meaningful case, not all-or-nothing


def test_cuhk03_draws_do_not_depend_on_chunking():
    qf, gf, *labels = _dataset(1)
    dist = pairwise_distance(qf, gf, "cosine")
    full = evaluate_rank(dist, *labels, max_rank=10, protocol="cuhk03", seed=4)
    for chunk_size in (3, 16):
        chunked = evaluate_features(
            qf, gf, *labels, chunk_size=chunk_size, max_rank=10, protocol="cuhk03", seed=4
        )
        np.testing.assert_array_equal(chunked.cmc, full.cmc)


def test_torch_and_float64_features():
    qf, gf, *labels = _dataset(2)
    reference = evaluate_features(qf, gf, *labels, chunk_size=8)
    as_torch = evaluate_features(torch.from_numpy(qf), torch.from_numpy(gf), *labels, chunk_size=8)
    as_f64 = evaluate_features(qf.astype(np.float64), gf.astype(np.float64), *labels)
    for r in (as_torch, as_f64):
        np.testing.assert_allclose(r.cmc, reference.cmc)
        assert r.mAP == pytest.approx(reference.mAP, abs=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"chunk_size": 2.5}, "chunk_size must be a positive integer"),
        ({"q_pids": np.zeros(3)}, "q_pids has 3 entries but there are 37 queries"),
        ({"gf": np.ones((150, 5), np.float32)}, "different dimensions: 12 vs 5"),
        ({"qf": np.ones(12, np.float32)}, "query features must be a 2-D array"),
        ({"qf": np.ones((0, 12), np.float32), "q_pids": [], "q_camids": []}, "query set is empty"),
        ({"metric": "jaccard"}, "unknown distance metric"),
    ],
)
def test_bad_input(change, message):
    qf, gf, q_pids, g_pids, q_cams, g_cams = _dataset()
    args = dict(qf=qf, gf=gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_cams, g_camids=g_cams)
    args.update(change)
    with pytest.raises(EvaluationError, match=message):
        evaluate_features(**args)


def test_nan_feature_is_reported():
    qf, gf, *labels = _dataset()
    qf[30, 3] = np.nan
    with pytest.raises(EvaluationError, match="query features contain NaN"):
        evaluate_features(qf, gf, *labels, chunk_size=10)
