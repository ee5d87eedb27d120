"""evaluate_rank against hand-computed cases and the naive reference algorithm (oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import naive_cuhk03, naive_market

import crossreid.evaluation.rank as rank_module
from crossreid.errors import EvaluationError
from crossreid.evaluation import RankResult, evaluate_rank

# --------------------------------------------------------------------------- by hand
# Query 0: pid 1, camera 0.  Query 1: pid 2, camera 1.
# Gallery: g0 (pid 1, cam 0) g1 (pid 1, cam 1) g2 (pid 2, cam 0) g3 (pid 3, cam 1)
#          g4 (pid 1, cam 2)
# q0 ranks g0 0.1 (same pid and camera: discarded), g2 0.2, g3 0.3, g1 0.4 (match),
#    g4 0.5 (match): kept hits 0 0 1 1 -> AP = (1/3 + 2/4) / 2 = 5/12, first hit at
#    rank 3, INP = 2/4.
# q1 ranks g3 0.1, then g0, g1, g2 all at 0.3 (ties: by gallery index), g4 0.9: its one
#    match g2 is 4th -> AP = 1/4, first hit at rank 4, INP = 1/4.
HAND_DIST = np.array([[0.1, 0.4, 0.2, 0.3, 0.5], [0.3, 0.3, 0.3, 0.1, 0.9]])
HAND_Q_PIDS, HAND_Q_CAMS = np.array([1, 2]), np.array([0, 1])
HAND_G_PIDS, HAND_G_CAMS = np.array([1, 1, 2, 3, 1]), np.array([0, 1, 0, 1, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_computed_two_queries(dtype):
    r = evaluate_rank(
        HAND_DIST.astype(dtype), HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS, max_rank=5
    )
    np.testing.assert_allclose(r.cmc, [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(r.ap, [5 / 12, 1 / 4])
    np.testing.assert_allclose(r.inp, [1 / 2, 1 / 4])
    assert r.mAP == pytest.approx(1 / 3)
    assert r.mINP == pytest.approx(3 / 8)
    assert r.num_valid_queries == 2


def test_hand_computed_rank_result_api():
    r = evaluate_rank(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS, max_rank=25)
    assert isinstance(r, RankResult)
    assert r.cmc.shape == (25,)
    # The gallery has 5 images: beyond them the curve stays at 1.
    np.testing.assert_allclose(r.cmc[3:], 1.0)
    assert r.rank(3) == pytest.approx(0.5)
    assert r.as_dict() == pytest.approx(
        {
            "rank1": 0.0,
            "rank5": 1.0,
            "rank10": 1.0,
            "rank20": 1.0,
            "mAP": 1 / 3,
            "mINP": 3 / 8,
            "num_valid_queries": 2,
        }
    )
    with pytest.raises(ValueError):
        r.rank(26)


def test_short_curve_as_dict_has_only_computed_ranks():
    r = evaluate_rank(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS, max_rank=5)
    assert set(r.as_dict()) == {"rank1", "rank5", "mAP", "mINP", "num_valid_queries"}


def test_skipped_query_has_nan_ap_and_is_not_counted():
    # Query 1 (pid 7) is absent from the gallery; query 2's only match shares its camera.
    dist = np.array([[0.2, 0.1, 0.3], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    r = evaluate_rank(dist, [1, 7, 2], [1, 2, 2], [0, 0, 1], [1, 1, 1], max_rank=3)
    assert r.num_valid_queries == 1
    assert np.isnan(r.ap[1]) and np.isnan(r.ap[2])
    # Query 0: ranked g1 (pid 2), g0 (match), g2: AP 1/2.
    assert r.ap[0] == pytest.approx(0.5)
    np.testing.assert_allclose(r.cmc, [0.0, 1.0, 1.0])


def test_string_pids_and_torch_inputs_match_numpy():
    q_pids = np.array(["a", "b"])
    g_pids = np.array(["a", "a", "b", "c", "a"])
    as_str = evaluate_rank(HAND_DIST, q_pids, g_pids, HAND_Q_CAMS, HAND_G_CAMS, max_rank=5)
    as_torch = evaluate_rank(
        torch.from_numpy(HAND_DIST),
        torch.from_numpy(HAND_Q_PIDS),
        torch.from_numpy(HAND_G_PIDS),
        torch.from_numpy(HAND_Q_CAMS),
        torch.from_numpy(HAND_G_CAMS),
        max_rank=5,
    )
    for r in (as_str, as_torch):
        assert r.mAP == pytest.approx(1 / 3)
        np.testing.assert_allclose(r.cmc, [0.0, 0.0, 0.5, 1.0, 1.0])


# --------------------------------------------------------------------------- vs oracle
def _random_case(rng, num_q, num_g, num_pids, num_cams, integer_distances):
    q_pids = rng.integers(0, num_pids, num_q)
    g_pids = rng.integers(0, num_pids, num_g)
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, num_g)
    if integer_distances:  # many exact ties
        dist = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)
    else:
        dist = rng.random((num_q, num_g))
    return dist, q_pids, g_pids, q_cams, g_cams


def _has_valid_query(q_pids, g_pids, q_cams, g_cams):
    match = (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] != g_cams[None, :])
    return bool(match.any())


def _assert_matches_oracle(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    cmc, m_ap, m_inp, num_valid, ap = naive_market(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    r = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    np.testing.assert_allclose(r.cmc, cmc, rtol=0, atol=1e-6)
    assert abs(r.mAP - m_ap) <= 1e-6
    assert abs(r.mINP - m_inp) <= 1e-6
    assert r.num_valid_queries == num_valid
    np.testing.assert_allclose(r.ap, ap, rtol=0, atol=1e-9)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    num_q=st.integers(1, 12),
    num_g=st.integers(1, 40),
    num_pids=st.integers(1, 9),
    num_cams=st.integers(1, 4),
    max_rank=st.integers(1, 45),
    integer_distances=st.booleans(),
)
def test_market_equals_naive_algorithm(
    seed, num_q, num_g, num_pids, num_cams, max_rank, integer_distances
):
    rng = np.random.default_rng(seed)
    case = _random_case(rng, num_q, num_g, num_pids, num_cams, integer_distances)
    if not _has_valid_query(*case[1:]):
        with pytest.raises(EvaluationError, match="no valid query"):
            evaluate_rank(*case, max_rank=max_rank)
        return
    _assert_matches_oracle(*case, max_rank)


@pytest.mark.parametrize("integer_distances", [False, True])
def test_market_equals_naive_with_distractors_and_absent_pids(integer_distances):
    rng = np.random.default_rng(7)
    num_q, num_g = 60, 400
    # Gallery: pids 1..40 plus distractors (pid 0) and junk (-1); queries use pids 1..50,
    # so pids 41..50 are absent from the gallery.
    g_pids = np.concatenate([rng.integers(1, 41, 300), np.zeros(70, int), -np.ones(30, int)])
    q_pids = rng.integers(1, 51, num_q)
    q_cams, g_cams = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    # Some queries whose only same-pid gallery images share their camera.
    for q in range(5):
        q_pids[q] = 100 + q
        g_pids[q] = 100 + q
        g_cams[q] = q_cams[q]
    dist = (
        rng.integers(0, 20, (num_q, num_g)).astype(np.float32)
        if integer_distances
        else rng.random((num_q, num_g)).astype(np.float32)
    )
    _assert_matches_oracle(dist, q_pids, g_pids, q_cams, g_cams, 50)
    r = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    assert np.isnan(r.ap[:5]).all()


def test_identical_rows_tie_everywhere():
    rng = np.random.default_rng(3)
    dist = np.zeros((8, 30), dtype=np.float32)  # every item tied: gallery order decides
    case = _random_case(rng, 8, 30, 4, 3, False)[1:]
    _assert_matches_oracle(dist, *case, 40)


def test_negative_zero_equals_zero():
    dist = np.array([[0.0, -0.0, 0.5, -0.0]], dtype=np.float32)
    _assert_matches_oracle(dist, np.array([1]), np.array([2, 1, 1, 1]), [0], [1, 1, 1, 1], 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("force", ["sort", "count"])
def test_both_counting_paths_and_small_blocks(monkeypatch, dtype, force):
    """The sort path, the per-match counting path for deep rows, and many row blocks."""
    if force == "count":
        monkeypatch.setattr(rank_module, "_PASS_NS", 0.0)
        monkeypatch.setattr(rank_module, "_CALL_NS", 0.0)
    else:
        monkeypatch.setattr(rank_module, "_SORT_NS", 0.0)
    monkeypatch.setattr(rank_module, "_BLOCK_ELEMENTS", 500)
    rng = np.random.default_rng(11)
    for integer_distances in (False, True):
        dist, *labels = _random_case(rng, 40, 120, 10, 4, integer_distances)
        _assert_matches_oracle(dist.astype(dtype), *labels, 30)


def test_float16_and_integer_distances_are_accepted():
    dist = np.array([[1, 4, 2, 3, 5], [3, 3, 3, 1, 9]])
    for d in (dist, dist.astype(np.float16)):
        r = evaluate_rank(d, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS, max_rank=5)
        assert r.mAP == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- CUHK03
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sample_seed=st.integers(0, 100),
    num_q=st.integers(1, 8),
    num_g=st.integers(1, 30),
    num_pids=st.integers(1, 6),
    integer_distances=st.booleans(),
)
def test_cuhk03_equals_naive_with_same_sampling(
    seed, sample_seed, num_q, num_g, num_pids, integer_distances
):
    rng = np.random.default_rng(seed)
    case = _random_case(rng, num_q, num_g, num_pids, 3, integer_distances)
    if not _has_valid_query(*case[1:]):
        return
    cmc, m_ap, num_valid = naive_cuhk03(*case, max_rank=20, seed=sample_seed)
    r = evaluate_rank(*case, max_rank=20, protocol="cuhk03", seed=sample_seed)
    np.testing.assert_allclose(r.cmc, cmc, rtol=0, atol=1e-6)
    assert abs(r.mAP - m_ap) <= 1e-6
    assert r.num_valid_queries == num_valid


def test_cuhk03_one_image_per_identity_is_deterministic():
    # With one kept image per gallery identity there is nothing to draw: the single-shot
    # CMC is the multi-shot one, whatever the seed.
    rng = np.random.default_rng(5)
    dist = rng.random((20, 12))
    g_pids, g_cams = np.arange(12), np.ones(12, int)
    q_pids, q_cams = rng.integers(0, 12, 20), np.zeros(20, int)
    market = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=12)
    for seed in (0, 1, 2):
        cuhk = evaluate_rank(
            dist, q_pids, g_pids, q_cams, g_cams, max_rank=12, protocol="cuhk03", seed=seed
        )
        np.testing.assert_allclose(cuhk.cmc, market.cmc)
        assert cuhk.mAP == pytest.approx(market.mAP)


def test_cuhk03_seed_changes_draws_not_map(monkeypatch):
    rng = np.random.default_rng(9)
    dist, *labels = _random_case(rng, 30, 200, 8, 2, False)
    monkeypatch.setattr(rank_module, "_SAMPLE_ELEMENTS", 100)  # several draw batches
    runs = [evaluate_rank(dist, *labels, max_rank=10, protocol="cuhk03", seed=s) for s in (0, 1)]
    assert runs[0].mAP == runs[1].mAP
    assert not np.allclose(runs[0].cmc, runs[1].cmc)
    again = evaluate_rank(dist, *labels, max_rank=10, protocol="cuhk03", seed=0)
    np.testing.assert_array_equal(again.cmc, runs[0].cmc)
    cmc, _, _ = naive_cuhk03(dist, *labels, max_rank=10, seed=0)
    np.testing.assert_allclose(runs[0].cmc, cmc, atol=1e-9)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"q_pids": [1]}, "q_pids has 1 entries but there are 2 queries"),
        ({"g_camids": [0, 1, 0]}, "g_camids has 3 entries"),
        ({"distmat": np.zeros((0, 5))}, "query set is empty"),
        ({"distmat": np.zeros((2, 0)), "g_pids": [], "g_camids": []}, "gallery is empty"),
        ({"distmat": np.zeros(5)}, "must be 2-D"),
        ({"max_rank": 0}, "max_rank must be a positive integer"),
        ({"protocol": "viper"}, "unknown evaluation protocol"),
        ({"q_camids": [1, 1], "g_camids": [1, 1, 1, 1, 1]}, "no valid query"),
    ],
)
def test_bad_input_raises_one_line_error(kwargs, message):
    args = {
        "distmat": HAND_DIST,
        "q_pids": HAND_Q_PIDS,
        "g_pids": HAND_G_PIDS,
        "q_camids": HAND_Q_CAMS,
        "g_camids": HAND_G_CAMS,
    }
    args.update(kwargs)
    with pytest.raises(EvaluationError, match=message) as info:
        evaluate_rank(**args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_distances_are_rejected(bad):
    dist = HAND_DIST.copy()
    dist[1, 2] = bad
    with pytest.raises(EvaluationError, match="NaN or inf.*query row 1"):
        evaluate_rank(dist, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS)


def test_huge_finite_distances_are_not_mistaken_for_inf():
    dist = (HAND_DIST * 3e38).astype(np.float32)  # the float32 sum overflows; values don't
    r = evaluate_rank(dist, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS, max_rank=5)
    assert r.mAP == pytest.approx(1 / 3)
