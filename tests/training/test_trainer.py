"""The training loop on tiny synthetic domains (CPU, resnet18 at 64x32)."""

from __future__ import annotations

import json

import pytest
import torch

from crossreid.errors import CheckpointError, ConfigError, TrainingError
from crossreid.models import load_checkpoint, read_checkpoint
from crossreid.models.checkpoint import find_checkpoint
from crossreid.training import data as training_data
from crossreid.training.trainer import train
from crossreid.utils.devices import resolve_device


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_thirty_steps_loss_falls_and_outputs_exist(tmp_path, tiny_config):
    config = tiny_config(
        tmp_path / "run",
        image_size=(64, 32),
        max_steps=30,
        eval_every=15,
        image_every=15,
        log_every=5,
    )
    result = train(config, progress=False)

    totals = [h["total"] for h in result.history]
    assert len(totals) == 30 and result.steps == 30
    assert sum(totals[-5:]) / 5 < sum(totals[:5]) / 5
    assert set(result.history[0]) == {"total", "cls", "rec", "dif", "mmd", "ctr"}  # w_tri = 0

    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [15, 30]
    assert set(records[0]) == {"step", "rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}
    assert records[-1] == {"step": 30, **result.final_metrics}
    assert all(0.0 <= records[-1][k] <= 1.0 for k in records[-1] if k != "step")

    last = read_checkpoint(tmp_path / "run/checkpoints/last.pt")
    best = read_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert last["step"] == 30 and best["step"] == result.best_step
    assert best["best_mAP"] == pytest.approx(result.best_metrics["mAP"])
    assert last["train_config"]["image_size"] == [64, 32]
    assert {"optimizer", "scheduler", "rng"} <= set(last)
    reloaded = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    x = torch.randn(2, 3, 64, 32)
    result.model.eval()
    torch.testing.assert_close(reloaded(x), result.model(x))
    assert (tmp_path / "run/config.yaml").read_text().startswith("source: synthetic:A")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run/tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/rec", "loss/mmd", "lr/backbone", "lr/head"} <= scalars
    assert {"eval/rank1", "eval/rank20", "eval/mAP", "eval/mINP"} <= scalars
    images = set(events.Tags()["images"])
    assert {"images/input", "images/pose_input", "images/reconstruction"} <= images


def test_restart_every_drives_the_optimiser(tmp_path, tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from crossreid.training.schedule import LRSchedule

    config = tiny_config(
        tmp_path / "run", max_steps=8, warmup_steps=2, restart_every=3, log_every=1, image_every=100
    )
    train(config, progress=False)
    events = EventAccumulator(str(tmp_path / "run/tensorboard")).Reload()
    logged = {e.step: e.value for e in events.Scalars("lr/head")}
    # Logged after step s, the rate is the one step s + 1 uses: lr x the schedule at s.
    f = LRSchedule(max_steps=8, warmup_steps=2, restart_every=3)
    assert sorted(logged) == list(range(1, 9))
    assert [logged[s] for s in logged] == pytest.approx([0.01 * f(s) for s in logged], rel=1e-6)
    assert logged[5] == pytest.approx(0.01) and logged[8] == pytest.approx(0.01)  # restarts


def test_resume_continues_bit_for_bit(tmp_path, tiny_config):
    # The step schedule with explicit milestones does not depend on max_steps, so a 2-step
    # run extended to 4 must equal a 4-step run. The interrupted run loads with workers.
    common = dict(schedule="step", milestones=(3,), warmup_steps=1)
    straight = train(tiny_config(tmp_path / "a", max_steps=4, **common), progress=False)
    train(tiny_config(tmp_path / "b", max_steps=2, workers=2, **common), progress=False)
    resumed = train(
        tiny_config(tmp_path / "b", max_steps=4, workers=2, resume=str(tmp_path / "b"), **common),
        progress=False,
    )
    assert resumed.steps == 4 and len(resumed.history) == 2
    assert [h["total"] for h in resumed.history] == [h["total"] for h in straight.history[2:]]
    a, b = _weights(straight.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_target_labels_are_never_read(tmp_path, tiny_config, monkeypatch):
    real = training_data.resolve_dataset

    def scrambled(spec, data_root, **kwargs):
        dataset = real(spec, data_root, **kwargs)
        if spec.startswith("synthetic:B"):
            g = torch.Generator().manual_seed(0)
            pids = torch.randperm(1000, generator=g)[: len(dataset.train)].tolist()
            dataset.train = [r._replace(pid=p) for r, p in zip(dataset.train, pids, strict=True)]
        return dataset

    honest = train(tiny_config(tmp_path / "a", max_steps=2), progress=False)
    monkeypatch.setattr(training_data, "resolve_dataset", scrambled)
    scrambled_run = train(tiny_config(tmp_path / "b", max_steps=2), progress=False)
    assert honest.history == scrambled_run.history
    assert all(h["mmd"] > 0 for h in honest.history)  # the target batches did take part


def test_source_only_and_oracle_modes(tmp_path, tiny_config):
    only = train(tiny_config(tmp_path / "s", mode="source-only", max_steps=1), progress=False)
    assert set(only.history[0]) == {"total", "cls", "rec", "dif", "ctr"}  # no target, no MMD
    oracle = train(
        tiny_config(tmp_path / "o", mode="oracle", source=None, max_steps=1, w_rec=0, w_dif=0),
        progress=False,
    )
    assert set(oracle.history[0]) == {"total", "cls", "ctr"}
    # The pose encoder and decoder were frozen (no loss reaches them).
    assert not any(p.requires_grad for p in oracle.model.pose_encoder.parameters())
    assert oracle.final_metrics and oracle.best_checkpoint.is_file()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config, monkeypatch):
    from crossreid import losses

    calls = {"n": 0}
    real_mmd = losses.mmd_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real_mmd(*args, **kwargs)
        return value * float("nan") if calls["n"] >= 3 else value

    monkeypatch.setattr(losses, "mmd_loss", poisoned)
    config = tiny_config(tmp_path / "run", max_steps=4, save_every=2)
    with pytest.raises(TrainingError, match=r"loss is not finite at step 3 .*mmd=nan.*step 2\)"):
        train(config, progress=False)
    checkpoint = read_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert checkpoint["step"] == 2
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )


def test_resume_with_another_architecture_names_the_keys(tmp_path, tiny_config):
    train(tiny_config(tmp_path / "run", max_steps=1), progress=False)
    other = tiny_config(
        tmp_path / "run", max_steps=2, decoder_widths=(32, 16, 8, 8), resume=str(tmp_path / "run")
    )
    with pytest.raises(CheckpointError, match=r"shape mismatch decoder\.blocks\.0\.1\.weight"):
        train(other, progress=False)


def test_a_soup_starts_a_run_but_cannot_be_resumed(tmp_path, tiny_config):
    from crossreid.models import save_checkpoint, soup_checkpoint

    for name, seed in (("a", 1), ("b", 2)):
        train(tiny_config(tmp_path / name, max_steps=1, seed=seed), progress=False)
    soup = soup_checkpoint([tmp_path / "a", tmp_path / "b"])
    save_checkpoint(tmp_path / "soup" / "checkpoints" / "last.pt", soup)
    resumed = tiny_config(tmp_path / "soup", max_steps=2, resume=str(tmp_path / "soup"))
    with pytest.raises(CheckpointError, match="average of 2 runs' weights .* --init-from"):
        train(resumed, progress=False)
    started = train(
        tiny_config(tmp_path / "c", max_steps=1, init_from=str(tmp_path / "soup")), progress=False
    )
    assert started.steps == 1


def test_init_from_skips_a_classifier_of_another_size(tmp_path, tiny_config):
    first = train(tiny_config(tmp_path / "a", max_steps=1), progress=False)  # 6 classes
    bigger = "synthetic:B?ids=16&images=4&cameras=2&size=64x32"  # 8 training identities
    second = train(
        tiny_config(
            tmp_path / "b",
            mode="oracle",
            target=bigger,
            max_steps=1,
            lr=1e-9,
            init_from=str(tmp_path / "a"),
        ),
        progress=False,
    )
    assert second.model.classifier.out_features == 8
    conv = "identity_encoder.trunk.conv1.weight"
    torch.testing.assert_close(
        second.model.state_dict()[conv], first.model.state_dict()[conv], atol=1e-6, rtol=0
    )


def test_find_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/best.pt").write_bytes(b"x")
    (tmp_path / "checkpoints/last.pt").write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "last.pt"
    assert find_checkpoint(tmp_path, prefer_best=True).name == "best.pt"


def test_devices(tmp_path, tiny_config):
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train(tiny_config(tmp_path, device="cuda:0"), progress=False)
    with pytest.warns(UserWarning, match="--amp needs CUDA"), pytest.raises(ConfigError):
        train(tiny_config(tmp_path, device="cpu", amp=True, source="synthetic:Q"), progress=False)


def test_camera_bn_evaluation_changes_the_metrics_only(tmp_path, tiny_config):
    # Camera-wise BatchNorm statistics are used for the evaluation and then put back: the
    # training itself (losses, weights, the model's own statistics) is untouched.
    plain = train(tiny_config(tmp_path / "p", max_steps=2, eval_every=1), progress=False)
    camera = train(
        tiny_config(tmp_path / "c", max_steps=2, eval_every=1, camera_bn=True), progress=False
    )
    assert plain.history == camera.history
    weights = camera.model.state_dict()
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert camera.final_metrics.keys() == plain.final_metrics.keys()
    assert camera.final_metrics != plain.final_metrics
