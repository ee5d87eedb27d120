"""``crossreid search``: faiss search over an extract output or a saved index."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from crossreid.cli import main
from crossreid.evaluation import pairwise_distance
from crossreid.models import CrossDomainReID, build_checkpoint, save_checkpoint
from crossreid.retrieval import match_status

SPEC = "synthetic:B?ids=6&images=4&cameras=2&size=64x32"


@pytest.fixture(scope="module")
def setup(module_tmp_path) -> dict:
    root = module_tmp_path
    torch.manual_seed(1)
    model = CrossDomainReID("resnet18", num_classes=6, image_size=(64, 32), decoder_widths=(8,) * 4)
    checkpoint = root / "model.pt"
    save_checkpoint(checkpoint, build_checkpoint(model))
    features = root / "features.npz"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROSSREID_CACHE", str(root / "cache"))
        args = ["extract", "--checkpoint", str(checkpoint), "--dataset", SPEC, "--workers", "0"]
        assert main([*args, "--out", str(features), "--no-progress"]) == 0
    with np.load(features) as data:
        arrays = {key: data[key] for key in data.files}
    return {"root": root, "checkpoint": str(checkpoint), "features": str(features), **arrays}


def _search(capsys, setup, *extra: str) -> tuple[int, dict | None, str]:
    """Search with the dataset's query images: ``(exit code, JSON output or None, stderr)``."""
    queries = [str(p) for p in setup["q_paths"]]
    rc = main(["search", "--checkpoint", setup["checkpoint"], "--query", *queries, *extra])
    captured = capsys.readouterr()
    result = json.loads(captured.out) if rc == 0 and "--json" in extra else None
    return rc, result, captured.err


def test_search_ranks_like_pairwise_distance_and_labels_matches(setup, capsys) -> None:
    rc, result, _ = _search(capsys, setup, "--index", setup["features"], "--topk", "5", "--json")
    assert rc == 0 and result["metric"] == "cosine" and result["kind"] == "exact"
    expected = np.argsort(
        pairwise_distance(setup["qf"], setup["gf"], "cosine"), axis=1, kind="stable"
    )
    assert len(result["queries"]) == len(setup["qf"])
    for i, query in enumerate(result["queries"]):
        assert query["query"] == setup["q_paths"][i]
        assert [m["index"] for m in query["matches"]] == expected[i, :5].tolist()
        for m in query["matches"]:
            j = m["index"]
            assert m["path"] == setup["g_paths"][j] and m["pid"] == setup["g_pids"][j]
            assert m["status"] == match_status(
                int(setup["q_pids"][i]), int(setup["q_camids"][i]), m["pid"], m["camid"]
            )
        distances = [m["distance"] for m in query["matches"]]
        assert distances == sorted(distances)


def test_text_output_and_ranked_picture(setup, capsys, tmp_path) -> None:
    picture = tmp_path / "ranked.png"
    queries = [str(p) for p in setup["q_paths"]]
    argv = ["search", "--index", setup["features"], "--checkpoint", setup["checkpoint"]]
    assert main([*argv, "--query", *queries, "--topk", "4", "--out", str(picture)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query {queries[0]}"
    assert len(lines) == len(queries) * (1 + 4)
    rank, distance, path, pid, cam = lines[1].split()
    assert rank == "1" and float(distance) >= 0 and path in set(setup["g_paths"].tolist())
    assert pid.startswith("pid=") and cam.startswith("cam=")
    with Image.open(picture) as image:
        width, height = image.size
    cell_w, cell_h = 64 + 8, 128 + 8
    assert width == 6 + cell_w + 18 + 4 * (cell_w + 6)
    assert height == 12 + 6 + 6 + len(setup["qf"]) * (2 * 12 + cell_h + 12 + 6)


def test_topk_larger_than_the_gallery_warns_and_clamps(setup, capsys, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        rc, result, _ = _search(
            capsys, setup, "--index", setup["features"], "--topk", "999", "--json"
        )
    assert rc == 0 and "larger than the gallery" in caplog.text
    assert result["topk"] == len(setup["gf"])
    assert all(len(q["matches"]) == len(setup["gf"]) for q in result["queries"])


def test_saved_index_keeps_its_metric_and_refuses_another(setup, capsys, tmp_path) -> None:
    saved = tmp_path / "index.npz"
    rc = main(
        ["search", "--index", setup["features"], "--metric", "L2", "--save-index", str(saved)]
    )
    assert rc == 0 and saved.is_file()
    rc, result, _ = _search(capsys, setup, "--index", str(saved), "--topk", "3", "--json")
    assert rc == 0 and result["metric"] == "L2"
    expected = np.argsort(pairwise_distance(setup["qf"], setup["gf"], "L2"), axis=1, kind="stable")
    assert [m["index"] for m in result["queries"][0]["matches"]] == expected[0, :3].tolist()
    rc, _, err = _search(capsys, setup, "--index", str(saved), "--metric", "cosine")
    assert rc == 2 and "built for metric 'L2', not 'cosine'" in err


def test_approximate_search_runs(setup, capsys) -> None:
    rc, result, _ = _search(capsys, setup, "--index", setup["features"], "--approx", "--json")
    assert rc == 0 and result["kind"] == "ivf"
    assert all(len(q["matches"]) == 10 for q in result["queries"])


def test_bad_inputs_exit_2(setup, capsys, tmp_path) -> None:
    other_dim = tmp_path / "dim16.npz"
    np.savez(other_dim, features=np.ones((4, 16), np.float32), paths=np.array(["a"] * 4))
    rc, _, err = _search(capsys, setup, "--index", str(other_dim))
    assert rc == 2 and "holds 16-d features, but checkpoint" in err
    not_npz = tmp_path / "x.npz"
    not_npz.write_text("hello")
    rc, _, err = _search(capsys, setup, "--index", str(not_npz))
    assert rc == 2 and "cannot read" in err
    wrong_keys = tmp_path / "keys.npz"
    np.savez(wrong_keys, something=np.ones(3))
    rc, _, err = _search(capsys, setup, "--index", str(wrong_keys))
    assert rc == 2 and "neither a crossreid index nor an extract output" in err
    assert main(["search", "--index", str(tmp_path / "missing.npz"), "--save-index", "y"]) == 2
    assert "does not exist" in capsys.readouterr().err
    rc = main(["search", "--index", setup["features"], "--query", str(tmp_path / "none.jpg")])
    assert rc == 2 and "needs --checkpoint" in capsys.readouterr().err
    rc = main(
        ["search", "--index", setup["features"], "--checkpoint", setup["checkpoint"]]
        + ["--query", str(tmp_path / "none.jpg")]
    )
    assert rc == 2 and "none.jpg does not exist" in capsys.readouterr().err
    assert main(["search", "--index", setup["features"]]) == 2
    assert "give --query" in capsys.readouterr().err
