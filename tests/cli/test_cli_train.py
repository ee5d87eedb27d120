"""``crossreid train``: flags, YAML config, resume, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml

from crossreid.cli import main

SOURCE = "synthetic:A?ids=12&images=4&cameras=2&size=64x32"
TARGET = "synthetic:B?ids=12&images=4&cameras=2&size=64x32"
TINY = [
    "--backbone", "resnet18", "--pretrained", "none", "--image-size", "32x16",
    "--decoder-widths", "16,8", "--batch-size", "8", "--num-instances", "2",
    "--workers", "0", "--device", "cpu", "--eval-batch-size", "64", "--no-progress",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _tiny_and_private(tmp_path_factory, monkeypatch, one_torch_thread):
    monkeypatch.setenv("CROSSREID_CACHE", str(tmp_path_factory.getbasetemp() / "synthetic-cache"))


def _steps(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_yaml_config_flags_override_and_resume(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"source: '{SOURCE}'\ntarget: '{TARGET}'\nmax_steps: 50\nlr: 0.002\nw-mmd: 0.3\n"
        "eval_every: 2\nschedule: constant\n"
    )
    run = tmp_path / "run"
    argv = ["train", "--config", str(config), *TINY, "--max-steps", "2", "--output", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "final (step 2): rank-1" in out and "mAP" in out
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert (stored["max_steps"], stored["lr"], stored["w_mmd"]) == (2, 0.002, 0.3)
    assert stored["image_size"] == [32, 16]

    # Resume from the folder alone: the stored configuration comes back, flags extend it.
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 0
    assert _steps(run) == [2, 3]
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert (stored["max_steps"], stored["lr"], stored["resume"]) == (3, 0.002, str(run))


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("crossreid train: error:"), err
    return err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "nosuch:thing", "--target", TARGET], "nosuch:thing"),
        (["--source", "synthetic:A?ids=2&images=4&size=64x32", "--target", TARGET],
         "has 1 identity; at least 2 are needed"),
        (["--source", SOURCE, "--target", TARGET, "--batch-size", "9"],
         "batch_size 9 is not divisible by num_instances 2"),
        (["--source", SOURCE, "--config", "/nonexistent/train.yaml"],
         "cannot read config file /nonexistent/train.yaml"),
        (["--source", SOURCE, "--target", TARGET, "--max-steps", "many"],
         "max_steps: 'many' is not a valid int"),
        (["--source", SOURCE, "--resume", "/nonexistent/run"], "does not exist"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    err = _error(["train", *TINY, "--output", str(tmp_path / "run"), *extra], capsys)
    assert message in err


def test_invalid_yaml_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed\n")
    assert f"config file {bad} is not valid YAML" in _error(["train", "--config", str(bad)], capsys)
    bad.write_text("sauce: synthetic:A\n")
    assert "unknown option 'sauce'" in _error(["train", "--config", str(bad)], capsys)


def test_nan_loss_exits_2_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from crossreid import losses

    calls = {"n": 0}
    real = losses.reconstruction_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value + float("inf") if calls["n"] >= 2 else value

    monkeypatch.setattr(losses, "reconstruction_loss", poisoned)
    run = tmp_path / "run"
    argv = ["train", "--source", SOURCE, "--target", TARGET, *TINY, "--max-steps", "3",
            "--save-every", "1", "--output", str(run)]  # fmt: skip
    err = _error(argv, capsys)
    assert "loss is not finite at step 2" in err and "last good checkpoint" in err
    from crossreid.models import read_checkpoint

    assert read_checkpoint(run / "checkpoints/last.pt")["step"] == 1
