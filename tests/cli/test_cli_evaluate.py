"""``crossreid evaluate --features FILE.npz``: table, JSON, re-ranking and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossreid.cli import main
from crossreid.evaluation import evaluate_rank, pairwise_distance


def _write_features(path, seed=0, num_q=12, num_g=60, dim=8, **override):
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((6, dim))
    q_pids, g_pids = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    arrays = {
        "qf": (centroids[q_pids] + rng.standard_normal((num_q, dim))).astype(np.float32),
        "gf": (centroids[g_pids] + rng.standard_normal((num_g, dim))).astype(np.float32),
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_camids": rng.integers(0, 3, num_q),
        "g_camids": rng.integers(0, 3, num_g),
        "q_paths": np.array([f"q{i}.jpg" for i in range(num_q)]),  # extra keys are ignored
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def _expected(arrays, metric="cosine", protocol="market"):
    dist = pairwise_distance(arrays["qf"], arrays["gf"], metric)
    return evaluate_rank(
        dist,
        arrays["q_pids"],
        arrays["g_pids"],
        arrays["q_camids"],
        arrays["g_camids"],
        max_rank=50,
        protocol=protocol,
    )


@pytest.mark.parametrize("metric", ["cosine", "L2"])
@pytest.mark.parametrize("protocol", ["market", "cuhk03"])
def test_json_output_equals_library(tmp_path, capsys, metric, protocol):
    arrays = _write_features(tmp_path / "f.npz")
    code = main(
        ["evaluate", "--features", str(tmp_path / "f.npz"), "--json", "--metric", metric]
        + ["--protocol", protocol]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    expected = _expected(arrays, metric, protocol)
    assert set(out) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "num_valid_queries"}
    assert out["mAP"] == pytest.approx(expected.mAP)
    assert out["rank1"] == pytest.approx(expected.rank(1))
    assert out["rank20"] == pytest.approx(expected.rank(20))
    assert out["num_valid_queries"] == expected.num_valid_queries
    assert all(0.0 <= out[k] <= 1.0 for k in out if k != "num_valid_queries")


def test_table_prints_percentages(tmp_path, capsys):
    arrays = _write_features(tmp_path / "f.npz")
    assert main(["evaluate", "--features", str(tmp_path / "f.npz"), "--max-rank", "30"]) == 0
    out = capsys.readouterr().out
    expected = _expected(arrays)
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert list(lines) == ["rank-1", "rank-5", "rank-10", "rank-20", "rank-30", "mAP", "mINP"]
    assert lines["mAP"] == f"{100 * expected.mAP:.2f}%"
    assert lines["rank-5"] == f"{100 * expected.rank(5):.2f}%"
    assert "market protocol, cosine distance" in out


def test_rerank_uses_k_reciprocal_distances(tmp_path, capsys):
    rerank = pytest.importorskip("crossreid.evaluation.rerank")
    arrays = _write_features(tmp_path / "f.npz", num_q=10, num_g=40)
    assert main(["evaluate", "--features", str(tmp_path / "f.npz"), "--rerank", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    qf, gf = arrays["qf"], arrays["gf"]
    dist = rerank.re_ranking(
        pairwise_distance(qf, gf, "cosine"),
        pairwise_distance(qf, qf, "cosine"),
        pairwise_distance(gf, gf, "cosine"),
        k1=20,
        k2=6,
        lambda_value=0.3,
    )
    expected = evaluate_rank(
        dist, arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"]
    )
    assert out["mAP"] == pytest.approx(expected.mAP)
    assert out["rank1"] == pytest.approx(expected.rank(1))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"g_pids": None}, "lacks g_pids"),
        ({"q_camids": np.zeros(5, int)}, "q_camids has 5 entries but there are 12 queries"),
        ({"gf": np.full((60, 8), np.nan, np.float32)}, "gallery features contain NaN"),
        ({"qf": np.zeros((0, 8), np.float32)}, "query set is empty"),
        ({"g_camids": None, "q_camids": None}, "lacks q_camids, g_camids"),
    ],
)
def test_bad_files_exit_2_with_one_line(tmp_path, capsys, override, message):
    _write_features(tmp_path / "f.npz", **override)
    assert main(["evaluate", "--features", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossreid evaluate: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_no_valid_query_exits_2(tmp_path, capsys):
    # Every query identity is missing from the gallery.
    _write_features(tmp_path / "f.npz", q_pids=np.arange(100, 112))
    assert main(["evaluate", "--features", str(tmp_path / "f.npz")]) == 2
    assert "no valid query" in capsys.readouterr().err


def test_missing_and_unreadable_files_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--features", str(tmp_path / "absent.npz")]) == 2
    assert "features file not found" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_text("not a zip")
    assert main(["evaluate", "--features", str(tmp_path / "junk.npz")]) == 2
    assert "cannot read" in capsys.readouterr().err
