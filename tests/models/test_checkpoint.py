"""Tests of crossreid.models.checkpoint: atomic writes, safe reads, strict/partial loading."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from crossreid.errors import CheckpointError
from crossreid.models import (
    CHECKPOINT_FORMAT,
    build_checkpoint,
    link_checkpoint,
    load_checkpoint,
    load_model_state,
    load_partial,
    read_checkpoint,
    save_checkpoint,
)


class NotPlainData:
    """An arbitrary class: a weights_only load must refuse to rebuild it."""

    def __init__(self) -> None:
        self.value = 1


def test_round_trip_rebuilds_the_same_model(make_small, tmp_path):
    model = make_small(normalize_features=True).eval()
    payload = build_checkpoint(
        model,
        step=12,
        config={"lr": 0.01, "source": "synthetic:A"},
        rng={"torch": torch.get_rng_state()},
    )
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", payload)
    checkpoint = read_checkpoint(path)
    assert checkpoint["format"] == CHECKPOINT_FORMAT and checkpoint["version"] == 1
    assert checkpoint["step"] == 12
    assert checkpoint["config"]["lr"] == 0.01
    assert checkpoint["config"]["model"] == model.config
    assert torch.equal(checkpoint["rng"]["torch"], payload["rng"]["torch"])

    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config
    x = torch.randn(2, 3, 64, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
        id_map, _ = model.encode_identity(x)
        assert torch.equal(loaded.decode(id_map, id_map), model.decode(id_map, id_map))


def test_save_is_atomic(make_small, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, build_checkpoint(make_small(), step=1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind

    real_save = torch.save

    def crash_midway(obj, stream, *args, **kwargs):
        stream.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {}, "config": {"model": {}}, "step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert read_checkpoint(path)["step"] == 1  # the previous checkpoint is intact


def _tiny_payload(step):
    return {"model": {"w": torch.full((2,), float(step))}, "config": {"model": {}}, "step": step}


@pytest.mark.parametrize("hard_links", [True, False])
def test_link_checkpoint_shares_the_file_and_survives_the_next_save(
    tmp_path, monkeypatch, hard_links
):
    if not hard_links:

        def no_links(*args, **kwargs):
            raise OSError("operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(last, _tiny_payload(1))
    link_checkpoint(last, best)
    assert (last.stat().st_ino == best.stat().st_ino) is hard_links
    assert read_checkpoint(best)["step"] == 1

    save_checkpoint(last, _tiny_payload(2))  # a later, worse step: best.pt must keep step 1
    assert read_checkpoint(last)["step"] == 2
    assert read_checkpoint(best)["step"] == 1
    assert torch.equal(read_checkpoint(best)["model"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def _save_raw(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pt", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: (d / "bad.pt").write_bytes(b"\x00garbage") and d / "bad.pt", "cannot read"),
        (lambda d: _save_raw(d / "list.pt", [1, 2]), "not a crossreid checkpoint"),
        (
            lambda d: _save_raw(d / "bare.pt", {"w": torch.zeros(2)}),
            "looks like a bare state dict",
        ),
        (
            lambda d: _save_raw(
                d / "newer.pt",
                {"format": CHECKPOINT_FORMAT, "version": 2, "model": {}, "config": {"model": {}}},
            ),
            "format version 2",
        ),
        (
            lambda d: _save_raw(d / "nomodel.pt", {"format": CHECKPOINT_FORMAT, "version": 1}),
            "lacks its 'model' weights",
        ),
    ],
)
def test_read_errors_are_one_line(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)


def test_read_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "obj": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(path)


def test_load_checkpoint_names_mismatched_keys(make_small, tmp_path):
    model = make_small()
    payload = build_checkpoint(model)
    payload["config"]["model"] = {**model.config, "num_classes": 7}
    path = save_checkpoint(tmp_path / "other.pt", payload)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "classifier.weight (3, 512) vs model (7, 512)" in message
    assert "classifier.bias (3,) vs model (7,)" in message


def test_load_checkpoint_of_another_backbone(make_small, tmp_path):
    model = make_small()
    payload = build_checkpoint(model)
    payload["config"]["model"] = {**model.config, "backbone": "resnet34"}
    path = save_checkpoint(tmp_path / "other.pt", payload)
    with pytest.raises(
        CheckpointError, match=r"missing identity_encoder\.trunk\.layer1\.2\..*\(\+\d+ more\)"
    ):
        load_checkpoint(path)


def test_load_checkpoint_with_invalid_config(make_small, tmp_path):
    payload = build_checkpoint(make_small())
    payload["config"]["model"]["backbone"] = "alexnet"
    path = save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(CheckpointError, match="invalid model config: unknown backbone 'alexnet'"):
        load_checkpoint(path)


def test_load_model_state_strips_ddp_prefix(make_small):
    source, target = make_small(), make_small(num_classes=3)
    torch.nn.init.constant_(source.classifier.bias, 0.5)
    load_model_state(target, {f"module.{k}": v for k, v in source.state_dict().items()})
    assert torch.equal(target.classifier.bias, torch.full((3,), 0.5))


def test_load_partial_skips_the_classifier_when_classes_differ(make_small, caplog):
    source = make_small(num_classes=3)
    torch.nn.init.constant_(source.decoder.to_image[1].bias, 0.25)
    target = make_small(num_classes=5)
    classifier_before = target.classifier.weight.clone()
    with caplog.at_level(logging.WARNING, logger="crossreid.models.checkpoint"):
        loaded, skipped = load_partial(target, build_checkpoint(source))
    assert sorted(skipped) == ["classifier.bias", "classifier.weight"]
    assert len(loaded) == len(source.state_dict()) - 2
    assert torch.equal(target.decoder.to_image[1].bias, torch.full((3,), 0.25))
    assert torch.equal(target.classifier.weight, classifier_before)
    assert "classifier.weight" in caplog.text


def test_load_partial_rejects_unrelated_weights(make_small):
    with pytest.raises(CheckpointError, match="none of the 1 weights fit"):
        load_partial(make_small(), {"features.0.weight": torch.zeros(3)})
