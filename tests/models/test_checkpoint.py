"""Tests of crossreid.models.checkpoint: atomic writes, storage errors, safe reads, run-folder
resolution, strict/partial loading."""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from crossreid.errors import CheckpointError, StorageError
from crossreid.models import (
    CHECKPOINT_FORMAT,
    build_checkpoint,
    find_checkpoint,
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


def _write(path, data):
    path.write_bytes(data)
    return path


def _truncated(path):
    save_checkpoint(path, _tiny_payload(1))
    data = path.read_bytes()
    return _write(path, data[: len(data) // 2])


class WouldRunCode:
    """Unpickling this runs a shell command creating ``marker``: a hostile payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _resnet18_state_dict(path):
    from torchvision.models import resnet18

    return _save_raw(path, resnet18().state_dict())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pt", r"^checkpoint \S+missing\.pt does not exist$"),
        (lambda d: d, "is a directory; expected a .pt file"),
        (
            lambda d: _write(d / "empty.pt", b""),
            r"empty\.pt is empty \(0 bytes\), not a complete checkpoint; use another "
            r"checkpoint \(best\.pt or last\.pt of the run\) or train again$",
        ),
        (
            lambda d: _truncated(d / "cut.pt"),
            r"cut\.pt is truncated or damaged \(\d+ bytes, not a complete zip archive\); "
            "use another checkpoint",
        ),
        (
            lambda d: _write(d / "noise.pt", np.random.default_rng(0).bytes(4096)),
            r"noise\.pt is not a crossreid checkpoint: it is not a PyTorch file at all \(it "
            r"does not start like a zip archive\); check the path$",
        ),
        (
            lambda d: _write(d / "bare.pkl", pickle.dumps({"w": [1.0]})),
            "is not a crossreid checkpoint: it is a bare pickle or a pre-1.6 PyTorch file",
        ),
        (lambda d: _save_raw(d / "list.pt", [1, 2]), r"not a crossreid checkpoint \(no 'format'"),
        (
            lambda d: _resnet18_state_dict(d / "resnet18.pth"),
            r"resnet18\.pth is a plain state dict \(122 tensors, e\.g\. conv1\.weight\), not a "
            "crossreid checkpoint; to start training from these backbone weights pass it as "
            "--pretrained PATH$",
        ),
        (
            lambda d: _save_raw(
                d / "newer.pt",
                {"format": CHECKPOINT_FORMAT, "version": 2, "model": {}, "config": {"model": {}}},
            ),
            r"newer\.pt was written by a newer crossreid \(format 2, this one reads up to 1\); "
            "upgrade crossreid$",
        ),
        (
            lambda d: _save_raw(d / "odd.pt", {"format": CHECKPOINT_FORMAT, "version": "one"}),
            "has an invalid format version 'one'",
        ),
        (
            lambda d: _save_raw(d / "nomodel.pt", {"format": CHECKPOINT_FORMAT, "version": 1}),
            "lacks its 'model' weights",
        ),
    ],
    ids=[
        "missing",
        "folder",
        "empty",
        "truncated",
        "random-bytes",
        "bare-pickle",
        "list",
        "resnet18-state-dict",
        "newer-format",
        "invalid-version",
        "no-model",
    ],
)
def test_read_errors_are_one_line(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_read_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "obj": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match=r"holds a Python object \(\S*NotPlainData\)"):
        read_checkpoint(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pt"
    torch.save(
        {"format": CHECKPOINT_FORMAT, "x": WouldRunCode(marker)}, path, pickle_protocol=protocol
    )
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "is not a crossreid checkpoint" in message and "refused, nothing was run" in message
    assert "\n" not in message and "weights_only" not in message
    assert not marker.exists()


def test_find_checkpoint_resolves_files_and_run_folders(tmp_path):
    run = tmp_path / "run"
    last = save_checkpoint(run / "checkpoints" / "last.pt", _tiny_payload(2))
    best = save_checkpoint(run / "checkpoints" / "best.pt", _tiny_payload(1))
    assert find_checkpoint(best) == best
    assert find_checkpoint(run) == last
    assert find_checkpoint(run, prefer_best=True) == best
    assert find_checkpoint(run / "checkpoints", prefer_best=True) == best
    last.unlink()
    assert find_checkpoint(run) == best  # the other one when the preferred is missing


def test_find_checkpoint_names_what_it_looked_for(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"checkpoint or run folder \S+nowhere does not exist"
    ):
        find_checkpoint(tmp_path / "nowhere")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError) as info:
        find_checkpoint(tmp_path, prefer_best=True)
    assert str(info.value) == (
        f"{tmp_path} holds no checkpoint (looked for checkpoints/best.pt, checkpoints/last.pt, "
        "best.pt, last.pt)"
    )


def test_load_checkpoint_accepts_a_run_folder(make_small, tmp_path):
    first, second = make_small().eval(), make_small(num_classes=5).eval()
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", build_checkpoint(first))
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", build_checkpoint(second))
    assert load_checkpoint(tmp_path).config["num_classes"] == 5
    assert load_checkpoint(tmp_path, prefer_best=True).config["num_classes"] == 3


def _assert_only(folder, names, contents):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temporary left
    for name, data in contents.items():
        assert (folder / name).read_bytes() == data  # the previous file, byte for byte


def test_disk_full_is_one_line_with_the_size_needed_and_the_old_file_kept(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _tiny_payload(1))
    before = path.read_bytes()

    def fill_the_disk(obj, stream, *args, **kwargs):
        stream.write(b"partial bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", fill_the_disk)
    payload = {"model": {"w": torch.zeros(5_000_000)}, "config": {"model": {}}, "step": 2}
    with pytest.raises(StorageError) as info:
        save_checkpoint(path, payload)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert re.fullmatch(
        rf"cannot write {re.escape(str(path))}: no space left on device "
        r"\(needs about 20 MB, [\d.]+ [kMGTP]?B free on /\S*\)",
        str(info.value),
    )
    _assert_only(tmp_path, ["last.pt"], {"last.pt": before})


@pytest.mark.parametrize(("free", "converted"), [(3 * 2**20, True), (2**40, False)])
def test_torch_unexpected_pos_means_disk_full_only_when_the_disk_is_full(
    tmp_path, monkeypatch, free, converted
):
    path = save_checkpoint(tmp_path / "last.pt", _tiny_payload(1))
    before = path.read_bytes()

    def short_write(obj, stream, *args, **kwargs):
        stream.write(b"partial bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=free))
    expected = StorageError if converted else RuntimeError
    with pytest.raises(expected) as info:
        save_checkpoint(path, _tiny_payload(2))
    if converted:
        assert str(info.value).startswith(f"cannot write {path}: no space left on device (needs ")
        assert "3.1 MB free on" in str(info.value)
    _assert_only(tmp_path, ["last.pt"], {"last.pt": before})


_FILE_SIZE_LIMIT_SCRIPT = """
import resource, sys, torch
from crossreid.errors import StorageError
from crossreid.models import save_checkpoint
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
payload = {"model": {"w": torch.zeros(1_000_000)}, "config": {"model": {}}, "step": 2}
try:
    save_checkpoint(sys.argv[1], payload)
except StorageError as exc:
    print(exc)
"""


def test_a_real_short_write_from_torch_save_is_one_line(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _tiny_payload(1))
    before = path.read_bytes()
    # The file size limit makes the kernel cut torch's writes short (EFBIG), as a full
    # disk would; torch reports only "unexpected pos".
    result = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=True,
        timeout=120,
    )
    assert result.stdout.strip() == (
        f"cannot write {path}: file too large (needs about 4.0 MB, ulimit -f allows 100 kB)"
    )
    _assert_only(tmp_path, ["last.pt"], {"last.pt": before})


def test_link_checkpoint_on_a_full_disk_keeps_the_old_link(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(best, _tiny_payload(1))
    save_checkpoint(last, _tiny_payload(2))
    before = best.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", fail)  # no hard links: falls back to a copy, which fails
    monkeypatch.setattr(shutil, "copyfile", fail)
    with pytest.raises(StorageError, match=r"cannot write \S+best\.pt: no space left on device"):
        link_checkpoint(last, best)
    _assert_only(tmp_path, ["best.pt", "last.pt"], {"best.pt": before})


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


def test_load_partial_of_a_max_pooling_checkpoint_into_a_gem_model(make_small, caplog):
    # init_from an earlier run with pooling gem: the exponent is new and starts at 3.
    source = make_small()
    torch.nn.init.constant_(source.classifier.bias, 0.5)
    target = make_small(pooling="gem")
    with caplog.at_level(logging.INFO, logger="crossreid.models.checkpoint"):
        loaded, skipped = load_partial(target, build_checkpoint(source))
    assert skipped == [] and sorted(loaded) == sorted(source.state_dict())
    assert torch.equal(target.classifier.bias, torch.full((3,), 0.5))
    assert target.identity_encoder.pool.p.item() == 3.0
    assert "1 model entries keep their initial values" in caplog.text


def test_gem_checkpoint_round_trip_and_a_checkpoint_without_pooling(make_small, tmp_path):
    model = make_small(pooling="gem").eval()
    torch.nn.init.constant_(model.identity_encoder.pool.p, 2.5)
    path = save_checkpoint(tmp_path / "gem.pt", build_checkpoint(model))
    loaded = load_checkpoint(path)
    assert loaded.config["pooling"] == "gem"
    assert loaded.identity_encoder.pool.p.item() == 2.5
    x = torch.randn(2, 3, 64, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    # Written before the pooling option existed: max pooling, as then.
    payload = build_checkpoint(make_small())
    del payload["config"]["model"]["pooling"]
    old = load_checkpoint(save_checkpoint(tmp_path / "old.pt", payload))
    assert old.config["pooling"] == "max"


def test_load_partial_rejects_unrelated_weights(make_small):
    with pytest.raises(CheckpointError, match="none of the 1 weights fit"):
        load_partial(make_small(), {"features.0.weight": torch.zeros(3)})


class _QuotaFile(io.FileIO):
    """A file on a file system with room left but a user quota that allows 64 kB."""

    def write(self, data):
        if self.tell() + len(data) > 65536:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return super().write(data)


def test_a_quota_inside_torch_save_is_one_line_though_the_disk_has_room(tmp_path, monkeypatch):
    # torch.save's writer turns the failed write into "unexpected pos"; the free space
    # cannot explain it here, the write's own error does.
    path = save_checkpoint(tmp_path / "last.pt", _tiny_payload(1))
    before = path.read_bytes()
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=2**40))
    monkeypatch.setattr(io, "FileIO", _QuotaFile)
    payload = {"model": {"w": torch.zeros(1_000_000)}, "config": {"model": {}}, "step": 2}
    with pytest.raises(StorageError) as info:
        save_checkpoint(path, payload)
    assert info.value.errno == errno.EDQUOT
    assert str(info.value) == f"cannot write {path}: disk quota exceeded (needs about 4.0 MB)"
    monkeypatch.undo()
    _assert_only(tmp_path, ["last.pt"], {"last.pt": before})
