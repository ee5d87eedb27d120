"""Tests of crossreid.evaluation.clustering: DBSCAN pseudo-labels and MMT's eps."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from jaccard_oracle import clustered_features, jaccard_distance_oracle
from sklearn.cluster import DBSCAN

from crossreid.errors import ClusteringError
from crossreid.evaluation import (
    PseudoLabels,
    cluster_pseudo_labels,
    clustering,
    estimate_eps,
    jaccard_distance,
    reliable_pseudo_labels,
)


def hand_matrix() -> sp.csr_matrix:
    """Ten samples: 0-3 exact copies (distance 0, stored), 4-8 at 0.2 from each other,
    0 and 4 at 0.8, 9 alone. The diagonal is stored; every other pair is at 1."""
    dense = np.ones((10, 10), dtype=np.float32)
    dense[:4, :4] = 0.0
    dense[4:9, 4:9] = 0.2
    dense[0, 4] = dense[4, 0] = 0.8
    np.fill_diagonal(dense, 0.0)
    rows, cols = np.nonzero(dense < 1)
    return sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=(10, 10))


def test_hand_computed_clusters():
    dist = hand_matrix()
    assert dist.nnz == 16 + 25 + 2 + 1  # explicit zeros are stored
    result = cluster_pseudo_labels(dist, eps=0.5, min_samples=4)
    assert isinstance(result, PseudoLabels)
    np.testing.assert_array_equal(result.labels, [0, 0, 0, 0, 1, 1, 1, 1, 1, -1])
    assert result.labels.dtype == np.int64
    assert (result.num_clusters, result.num_outliers, result.largest) == (2, 1, 5)


@pytest.mark.parametrize(("k1", "k2"), [(20, 6), (10, 1)])
@pytest.mark.parametrize("eps", [0.3, 0.5, 0.7])
def test_same_labels_as_dbscan_on_the_dense_published_matrix(k1, k2, eps):
    features = clustered_features(240, 32, seed=k1 + k2, spread=0.5)
    dense = jaccard_distance_oracle(features, k1=k1, k2=k2)
    expected = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense)
    result = cluster_pseudo_labels(jaccard_distance(features, k1=k1, k2=k2), eps=eps)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.num_clusters == expected.max() + 1 >= 2
    assert result.num_outliers == np.count_nonzero(expected == -1)
    assert result.largest == np.bincount(expected[expected >= 0]).max()


def test_recovers_well_separated_identities():
    # 12 identities of 20 samples, far apart: one cluster per identity, no outlier.
    ids = np.repeat(np.arange(12), 20)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 64))[ids] + 0.2 * rng.normal(size=(240, 64))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    result = cluster_pseudo_labels(jaccard_distance(features, k1=20, k2=6), eps=0.6)
    assert (result.num_clusters, result.num_outliers, result.largest) == (12, 0, 20)
    # Same partition as the identities, whatever the cluster numbering.
    assert len(set(zip(ids.tolist(), result.labels.tolist(), strict=True))) == 12


def test_estimate_eps_by_hand():
    dist = hand_matrix()  # 45 pairs: 6 at 0, 10 at 0.2, 1 at 0.8, 28 at 1 (not stored)
    assert estimate_eps(dist, rho=0.3) == pytest.approx(8 * 0.2 / 14)  # round(13.5) = 14
    assert estimate_eps(dist, rho=1.0) == pytest.approx((10 * 0.2 + 0.8 + 28) / 45)
    assert estimate_eps(dist, rho=0.1) == 0.0  # round(4.5) = 4 pairs, all copies


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(26, 120),
    k1=st.integers(2, 20),
    rho=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**16),
)
def test_estimate_eps_matches_the_dense_rule(n, k1, rho, seed):
    # MMT: sort the upper triangle (diagonal excluded), average the smallest rho fraction.
    dist = jaccard_distance(clustered_features(n, 8, seed=seed), k1=min(k1, n))
    upper = np.sort(as_dense(dist)[np.triu_indices(n, 1)])
    count = int(np.round(rho * upper.size))
    if count == 0:
        with pytest.raises(ClusteringError, match="too few for rho"):
            estimate_eps(dist, rho=rho)
        return
    assert estimate_eps(dist, rho=rho) == pytest.approx(upper[:count].mean(dtype=np.float64))


@pytest.mark.parametrize("row_chunk", [1, 3, 17])
@pytest.mark.parametrize("rho", [2e-3, 0.05, 0.4, 1.0])
def test_estimate_eps_block_by_block_matches_the_dense_rule(monkeypatch, row_chunk, rho):
    # Small row blocks: the running pool is filtered by its bound and cut back many times.
    monkeypatch.setattr(clustering, "_ROW_CHUNK", row_chunk)
    dist = jaccard_distance(clustered_features(90, 8, seed=3), k1=12)
    upper = np.sort(as_dense(dist)[np.triu_indices(90, 1)])
    count = int(np.round(rho * upper.size))
    assert estimate_eps(dist, rho=rho) == pytest.approx(upper[:count].mean(dtype=np.float64))


def test_estimate_eps_default_rho_on_clustered_features():
    features = clustered_features(300, 32, seed=1, spread=0.5)
    dist = jaccard_distance(features)
    upper = np.sort(as_dense(dist)[np.triu_indices(300, 1)])
    count = round(1.6e-3 * upper.size)  # 72 of 44,850 pairs
    assert count == 72
    assert estimate_eps(dist) == pytest.approx(upper[:count].mean(dtype=np.float64))


def as_dense(dist: sp.csr_matrix) -> np.ndarray:
    dense = np.ones(dist.shape, dtype=np.float32)
    coo = dist.tocoo()
    dense[coo.row, coo.col] = coo.data
    return dense


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(eps=0.0), r"eps must be a number in \(0, 1\), got 0.0"),
        (dict(eps=1.0), r"eps must be a number in \(0, 1\)"),
        (dict(eps=float("nan")), "eps must be a number"),
        (dict(eps=True), "eps must be a number"),
        (dict(eps=0.5, min_samples=0), "min_samples must be an integer >= 1, got 0"),
        (dict(eps=0.5, min_samples=2.5), "min_samples must be an integer"),
        (dict(eps=0.5, min_samples=11), "10 samples cannot form a cluster of min_samples=11"),
    ],
)
def test_rejects_bad_parameters(params, message):
    with pytest.raises(ClusteringError, match=message):
        cluster_pseudo_labels(hand_matrix(), **params)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.zeros((3, 3)), "expected a scipy.sparse distance matrix .* got ndarray"),
        (sp.csr_matrix((3, 4), dtype=np.float32), r"square and non-empty, got \(3, 4\)"),
        (sp.csr_matrix((0, 0), dtype=np.float32), "non-empty"),
        (sp.csr_matrix(np.array([[0, np.nan], [np.nan, 0]])), "NaN or inf"),
        (sp.csr_matrix(np.array([[0, -0.5], [-0.5, 0]])), r"must lie in \[0, 1\], got values"),
        (sp.csr_matrix(np.array([[0, 0.5], [2.0, 0]])), r"from 0.5 to 2"),
    ],
)
def test_rejects_bad_matrices(matrix, message):
    with pytest.raises(ClusteringError, match=message):
        cluster_pseudo_labels(matrix, eps=0.5, min_samples=1)
    with pytest.raises(ClusteringError, match=message):
        estimate_eps(matrix)


def test_every_sample_an_outlier_names_eps_and_distance_quantiles():
    # Without query expansion no two samples are at distance 0 here (the closest: 0.14).
    dist = jaccard_distance(clustered_features(200, 16, seed=2), k2=1)
    with pytest.raises(ClusteringError) as caught:
        cluster_pseudo_labels(dist, eps=1e-4, min_samples=4)
    message = str(caught.value)
    assert "eps=0.0001, min_samples=4 on 200 samples: every sample is an outlier" in message
    assert "need at least 2 clusters" in message
    assert "1% at 0.324, 5% at 0.551, median 0.956" in message
    assert "\n" not in message


def test_a_single_cluster_is_an_error():
    # min_samples counts the sample itself: each of the copies 0-3 has only 4 within eps.
    with pytest.raises(ClusteringError, match="one cluster of 5, 5 outliers"):
        cluster_pseudo_labels(hand_matrix(), eps=0.5, min_samples=5)


def test_error_without_any_off_diagonal_distance():
    with pytest.raises(ClusteringError, match="no pair of distinct samples is closer than 1"):
        cluster_pseudo_labels(sp.identity(8, format="csr") * 0, eps=0.5, min_samples=2)


@pytest.mark.parametrize(
    ("rho", "message"),
    [(0.0, r"rho must be a number in \(0, 1\]"), (1.5, "rho must be"), (False, "rho must be")],
)
def test_estimate_eps_rejects_bad_rho(rho, message):
    with pytest.raises(ClusteringError, match=message):
        estimate_eps(hand_matrix(), rho=rho)


def test_estimate_eps_needs_enough_pairs():
    # 10 samples have 45 pairs; 1.6e-3 of them rounds to none.
    with pytest.raises(ClusteringError, match="10 samples have 45 pairs, too few for rho=0.0016"):
        estimate_eps(hand_matrix())


def line_matrix() -> sp.csr_matrix:
    """Fifteen samples on a line, distance |x_i - x_j|: A = 0.00-0.03 (steps of 0.01); B =
    0.30-0.32 and 0.36 (0.04 from the rest); C = 0.60-0.62 and D = 0.68-0.70 (0.06 apart);
    0.90 alone."""
    x = np.array([0.0, 0.01, 0.02, 0.03, 0.30, 0.31, 0.32, 0.36])
    x = np.concatenate([x, [0.60, 0.61, 0.62, 0.68, 0.69, 0.70, 0.90]])
    dense = np.abs(x[:, None] - x[None, :]).astype(np.float32)
    rows, cols = np.nonzero(dense < 1)
    return sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=dense.shape)


def test_spcl_reliability_by_hand():
    # At eps 0.05: A, B (with 0.36), C, D and one outlier. At 0.03 (tighter) 0.36 splits off
    # B: B's members score 1 - 3/4 and 0.36 scores 1 - 1/4, so 0.36 is dropped. At 0.07
    # (looser) C and D merge: each scores 1 - 3/6 for independence, A and B 0.
    dist = line_matrix()
    pseudo = cluster_pseudo_labels(dist, eps=0.05, min_samples=2)
    assert pseudo.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 3 + [3] * 3 + [-1]
    result = reliable_pseudo_labels(dist, pseudo, eps=0.05, min_samples=2, delta=0.02)
    # SpCL's threshold: the cluster at position round(0.9 x 4) = 4 -> the last, 0.5: C and D
    # stay.
    assert result.independence_threshold == pytest.approx(0.5)
    assert result.pseudo.labels.tolist() == [0] * 4 + [1] * 3 + [-1] + [2] * 3 + [3] * 3 + [-1]
    assert (result.unreliable, result.pseudo.num_clusters, result.pseudo.num_outliers) == (1, 4, 2)
    assert result.pseudo.largest == 4
    # A stricter threshold (from an earlier clustering) drops the merging clusters C and D.
    strict = reliable_pseudo_labels(dist, pseudo, 0.05, 2, 0.02, independence_threshold=0.4)
    assert strict.pseudo.labels.tolist() == [0] * 4 + [1] * 3 + [-1] * 8
    assert (strict.unreliable, strict.pseudo.num_clusters, strict.independence_threshold) == (
        7,
        2,
        0.4,
    )


def _dense_one_minus_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    same_a, same_b = a[:, None] == a[None, :], b[:, None] == b[None, :]
    return 1 - (same_a & same_b).sum(1) / (same_a | same_b).sum(1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 4), st.integers(-1, 4)), min_size=1, max_size=30))
def test_reliability_scores_match_the_dense_n_by_n_rule(pairs):
    # SpCL computes the scores from N x N same-cluster matrices; here from counts.
    a, b = (np.array(column) for column in zip(*pairs, strict=True))
    a, b = clustering._outliers_alone(a), clustering._outliers_alone(b)
    assert np.allclose(clustering._one_minus_iou(a, b), _dense_one_minus_iou(a, b), atol=1e-12)


@pytest.mark.parametrize("delta", [0.05, 0.5, -0.01])
def test_reliability_needs_eps_minus_and_plus_delta_in_0_1(delta):
    dist = line_matrix()
    pseudo = cluster_pseudo_labels(dist, eps=0.05, min_samples=2)
    with pytest.raises(ClusteringError, match="delta must be > 0 and eps 0.05 -/"):
        reliable_pseudo_labels(dist, pseudo, 0.05, 2, delta)
