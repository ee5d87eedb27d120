"""``crossreid demo``: the demo's whole code path at a tiny size, its tables and its JSON."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from crossreid import demo
from crossreid.cli import main
from crossreid.demo import recipe as demo_recipe
from crossreid.models import read_checkpoint

# Tiny domains and a few steps: the same code path as the real demo, in seconds.
TINY = demo.DemoRecipe(
    ids=8,
    train_ids=None,
    images=4,
    cameras=2,
    data_size=(32, 16),
    train={
        **demo.DEFAULT_RECIPE.train,
        "image_size": (32, 16),
        "decoder_widths": (16, 8),
        "batch_size": 8,
        "num_instances": 2,
        "max_steps": 2,
        "warmup_steps": 1,
        "eval_batch_size": 64,
        "image_every": 1,
    },
    adapt=dict(demo.DEFAULT_RECIPE.adapt),
    # Two steps of the pseudo-label stage, clustering before each, at the tiny scale. With
    # min_samples 1 and a small eps every image is a cluster unless a near-duplicate is
    # within eps: the code path of the stage, whatever the two-step model's features.
    pseudo={
        **demo.DEFAULT_RECIPE.pseudo,
        "max_steps": 2,
        "warmup_steps": 1,
        "cluster_every": 1,
        "cluster_k1": 3,
        "cluster_min_samples": 1,
        "cluster_eps": 0.05,
        "batch_size": 4,
    },
)


@pytest.fixture(autouse=True)
def _tiny_and_private(tmp_path_factory, monkeypatch, one_torch_thread):
    monkeypatch.setenv("CROSSREID_CACHE", str(tmp_path_factory.getbasetemp() / "demo-cache"))


def _is_fraction_metrics(m: dict) -> bool:
    return all(0.0 <= m[k] <= 1.0 for k in ("rank1", "rank5", "rank10", "mAP", "mINP")) and (
        m["rank1"] <= m["rank5"] <= m["rank10"]
    )


def test_run_demo_trains_three_models_and_writes_everything(tmp_path):
    out = tmp_path / "demo"
    lines: list[str] = []
    results = demo.run_demo(
        seed=3, output=out, recipe=TINY, progress=False, log=lines.append, workers=1
    )

    assert results["seed"] == 3
    assert set(results["models"]) == {"source_only", "adapted", "oracle", "pseudo_labels"}
    for key, m in results["models"].items():
        assert _is_fraction_metrics(m), key
        assert _is_fraction_metrics(m["source_domain"]), key
        assert m["steps"] == 2 and m["train_seconds"] >= 0
    # The pseudo-label model averages the weights of two stage runs (other seeds).
    stage_runs = ["pseudo_labels_1", "pseudo_labels_2"]
    assert list(results["pseudo_label_runs"]) == stage_runs
    assert [r["seed"] for r in results["pseudo_label_runs"].values()] == [3, 3 + 12345]
    assert all(_is_fraction_metrics(r) for r in results["pseudo_label_runs"].values())
    runs = ["source_only", "adapted", "oracle", *stage_runs]
    for key in runs:
        # Each run has its own TensorBoard folder and its single (final) evaluation.
        assert list((out / key / "tensorboard").rglob("events.out.tfevents*")), key
        lines_ = [json.loads(x) for x in (out / key / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines_ if "kind" not in x] == [2]
    # The runs really differ in what they train on.
    configs = {k: (out / k / "config.yaml").read_text() for k in runs}
    assert "mode: source-only" in configs["source_only"]
    assert "mode: adapt" in configs["adapted"] and "mode: oracle" in configs["oracle"]
    # Camera-wise BatchNorm (target data at test time) belongs to the adapted model only.
    assert "camera_bn: true" in configs["adapted"]
    assert "camera_bn: false" in configs["source_only"] and "camera_bn: false" in configs["oracle"]
    assert "seed=3" in configs["adapted"]  # the demo seed also seeds the domains
    for key in stage_runs:
        # The pseudo-label stage starts from the adapted run and clusters B before each step.
        assert "method: cluster" in configs[key] and "method: arn" in configs["adapted"]
        assert f"init_from: {out / 'adapted'}" in configs[key] and "seed=3" in configs[key]
        clusterings = [
            json.loads(x)
            for x in (out / key / "metrics.jsonl").read_text().splitlines()
            if '"kind": "cluster"' in x
        ]
        assert [c["step"] for c in clusterings] == [0, 1] and all(
            c["clusters"] >= 2 for c in clusterings
        )
    assert "seed: 12348" in configs["pseudo_labels_2"]
    soup = read_checkpoint(out / "pseudo_labels" / "checkpoints" / "last.pt")
    members = [
        read_checkpoint(out / key / "checkpoints" / "last.pt")["model"] for key in stage_runs
    ]
    assert soup["soup"] == [str(out / key / "checkpoints" / "last.pt") for key in stage_runs]
    for name, value in soup["model"].items():
        if value.is_floating_point():
            assert torch.allclose(value, (members[0][name] + members[1][name]) / 2), name

    assert json.loads((out / "results.json").read_text())["models"] == results["models"]
    # ranked.png: 4 queries x (source-only, adapted, pseudo-labels) rows of a query and
    # 10 matches.
    with Image.open(out / "ranked.png") as picture:
        width, height = picture.size
    assert width > 10 * 32 and height > 12 * 64
    assert any(line.startswith("adapted (A→B): target mAP") for line in lines)


def test_runs_in_worker_processes_give_the_same_numbers(tmp_path):
    # Every run is single-threaded, in this process or in a worker: identical results.
    def metrics(workers):
        results = demo.run_demo(
            seed=6,
            output=tmp_path / "o",
            recipe=TINY,
            progress=False,
            log=lambda s: None,
            workers=workers,
        )
        shutil.rmtree(tmp_path / "o")  # four checkpoints, ~1 GB: one run's on disk at a time
        return {
            key: {k: m[k] for k in ("rank1", "rank5", "mAP", "mINP")}
            for key, m in results["models"].items()
        }

    assert metrics(1) == metrics(3)


def test_second_run_reuses_the_cached_domains(tmp_path, monkeypatch):
    import crossreid.data.specs as specs

    options = {"recipe": TINY, "progress": False, "log": lambda s: None, "workers": 1}
    demo.run_demo(seed=4, output=tmp_path / "a", **options)
    shutil.rmtree(tmp_path / "a")  # ~1 GB of checkpoints
    calls = []
    monkeypatch.setattr(specs, "generate_domain", lambda *a, **k: calls.append(a))
    demo.run_demo(seed=4, output=tmp_path / "b", **options)
    assert calls == []


def test_results_and_ablation_tables():
    m = {"rank1": 0.5, "rank5": 0.75, "rank10": 0.8, "mAP": 0.25, "mINP": 0.125}
    results = {
        "seed": 1,
        "models": {
            "source_only": {**m, "mAP": 0.2, "source_domain": {"mAP": 0.9}, "train_seconds": 12},
            "adapted": {**m, "mAP": 0.3, "source_domain": {"mAP": 0.8}, "train_seconds": 20},
            "oracle": {**m, "mAP": 0.6, "source_domain": {"mAP": 0.1}, "train_seconds": 10},
        },
    }
    table = demo.format_results_table(results).splitlines()
    assert table[0] == "target B (query/gallery), seed 1"
    assert table[3].split()[-7:] == ["50.0%", "75.0%", "80.0%", "20.0%", "12.5%", "90.0%", "12"]
    assert demo.summary_line(results) == (
        "adaptation: target mAP +10.0 points over source-only (25% of the gap to the oracle)"
    )
    results["models"]["pseudo_labels"] = {**m, "mAP": 0.5}
    assert demo.summary_line(results).splitlines()[1] == (
        "pseudo-labels: target mAP +20.0 points over the adapted model; +30.0 over "
        "source-only (75% of the gap to the oracle)"
    )
    assert demo.format_results_table(results).splitlines()[-1].startswith("ARN + pseudo-labels")
    del results["models"]["pseudo_labels"]
    results["models"]["oracle"]["mAP"] = 0.25
    assert demo.summary_line(results).endswith("(more than the whole gap: above the oracle)")
    results["models"]["oracle"]["mAP"] = 0.1
    assert demo.summary_line(results).endswith("(the oracle is not above source-only)")
    ablation = {"seed": 0, "rows": {"full": m, "w_mmd=0": {**m, "mAP": 0.2}}}
    rows = demo.format_ablation_table(ablation).splitlines()
    assert rows[3].split()[0] == "full" and rows[3].split()[5] == "+0.0"
    assert rows[4].split()[0] == "w_mmd=0" and rows[4].split()[5] == "-5.0"


def test_cli_demo_json_and_ablate(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_recipe, "QUICK_RECIPE", TINY)
    path = tmp_path / "r.json"
    argv = ["demo", "--quick", "--seed", "2", "--output", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--json", str(path), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "source-only (A)" in out and "adapted (A→B)" in out and "oracle (B labels)" in out
    assert "ARN + pseudo-labels" in out and "pseudo-labels: target mAP" in out
    data = json.loads(path.read_text())
    models = {"source_only", "adapted", "oracle", "pseudo_labels"}
    assert data["seed"] == 2 and set(data["models"]) == models
    assert set(data["models"]["pseudo_labels"]) == set(data["models"]["adapted"])
    assert data["seconds"] > 0
    shutil.rmtree(tmp_path / "o")  # ~1 GB of checkpoints; the ablation writes its own

    # w_ctr is already 0 in the recipe: zeroing it again would be a duplicate row.
    # w_cls=0 with w_ctr=0 leaves nothing to supervise identities: skipped, said so.
    monkeypatch.setattr(demo_recipe, "ABLATION_TERMS", ("w_mmd", "w_ctr", "w_cls", "camera_bn"))
    assert main([*argv, "--ablate", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "ablation on target B, seed 2" in out and "w_mmd=0" in out
    assert "camera_bn=off" in out and "full + pseudo-labels" in out
    assert "w_ctr=0" not in out
    assert "w_cls=0: skipped, not a valid training configuration" in out
    assert not any(line.startswith("w_cls=0 ") for line in out.splitlines())


def test_cli_demo_rejects_a_negative_seed_or_jobs(capsys):
    assert main(["demo", "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err
    assert main(["demo", "--jobs", "-1"]) == 2
    assert "--jobs must be >= 0" in capsys.readouterr().err
