"""Weight averaging of runs (``crossreid.models.soup``) and ``crossreid soup``."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import crossreid.models.soup as soup_module
from crossreid.cli import main
from crossreid.errors import CheckpointError
from crossreid.models import (
    average_state_dicts,
    build_checkpoint,
    load_checkpoint,
    save_checkpoint,
    soup_checkpoint,
)


def test_average_by_hand():
    a = {
        "w": torch.tensor([1.0, 2.0]),
        "n": torch.tensor(7),
        "h": torch.tensor([0.5], dtype=torch.float16),
    }
    b = {
        "w": torch.tensor([3.0, 6.0]),
        "n": torch.tensor(9),
        "h": torch.tensor([1.5], dtype=torch.float16),
    }
    c = {
        "w": torch.tensor([2.0, 1.0]),
        "n": torch.tensor(8),
        "h": torch.tensor([1.0], dtype=torch.float16),
    }
    soup = average_state_dicts([a, b, c])
    assert torch.equal(soup["w"], torch.tensor([2.0, 3.0]))  # (1+3+2)/3, (2+6+1)/3
    assert soup["h"].dtype == torch.float16 and soup["h"].item() == 1.0
    # Integer buffers (BatchNorm's num_batches_tracked) come from the first state dict.
    assert soup["n"].item() == 7 and soup["n"].dtype == torch.int64
    # float32 weights summed in float64: the mean of 0.1 and 0.2 is float32(0.15).
    x = average_state_dicts([{"w": torch.tensor([0.1])}, {"w": torch.tensor([0.2])}])["w"]
    assert x.item() == torch.tensor([0.15]).item()


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"w": torch.zeros(2)}, "has other weights than first (missing v)"),
        ({"w": torch.zeros(3), "v": torch.zeros(1)}, "does not match first at w: (3,)"),
        ({"w": torch.zeros(2, dtype=torch.float64), "v": torch.zeros(1)}, "torch.float64"),
    ],
)
def test_average_refuses_other_architectures(other, message):
    first = {"w": torch.zeros(2), "v": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        average_state_dicts([first, other], ["first", "second"])
    with pytest.raises(CheckpointError, match="no state dict"):
        average_state_dicts([])


def _two_runs(make_small, tmp_path):
    paths = []
    for seed in (1, 2):
        model = make_small()
        torch.manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.01)
        payload = build_checkpoint(model, step=5, config={"seed": seed}, optimizer={"state": {}})
        paths.append(save_checkpoint(tmp_path / f"run{seed}" / "checkpoints" / "last.pt", payload))
    return paths


def test_soup_checkpoint_is_the_average_and_loads(make_small, tmp_path):
    first, second = _two_runs(make_small, tmp_path)
    payload = soup_checkpoint([first.parent.parent, second])  # a run folder and a file
    assert payload["soup"] == [str(first), str(second)] and payload["step"] == 5
    assert payload["config"]["seed"] == 1 and "optimizer" not in payload
    path = save_checkpoint(tmp_path / "soup" / "checkpoints" / "last.pt", payload)
    model = load_checkpoint(tmp_path / "soup")
    a, b = load_checkpoint(first).state_dict(), load_checkpoint(second).state_dict()
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (a[key] + b[key]) / 2, atol=1e-7), key
    assert path.is_file()


def test_soup_checkpoint_refuses_one_run_or_two_architectures(make_small, tmp_path):
    first, _ = _two_runs(make_small, tmp_path)
    with pytest.raises(CheckpointError, match="two runs or more; got 1"):
        soup_checkpoint([first])
    other = save_checkpoint(tmp_path / "wide.pt", build_checkpoint(make_small(num_classes=5)))
    with pytest.raises(CheckpointError, match="another architecture .*num_classes 3 vs 5"):
        soup_checkpoint([first, other])


def test_cli_soup_writes_and_never_overwrites(make_small, tmp_path, capsys):
    first, second = _two_runs(make_small, tmp_path)
    out = tmp_path / "soup"
    assert main(["soup", str(first), str(second), "--output", str(out)]) == 0
    assert "the average of 2 runs" in capsys.readouterr().out
    written = (out / "checkpoints" / "last.pt").read_bytes()
    # An existing soup is kept; one run is not a soup; a missing run is one line.
    assert main(["soup", str(first), str(second), "--output", str(out)]) == 2
    assert "exists; give another --output" in capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").read_bytes() == written
    assert main(["soup", str(first), "--output", str(tmp_path / "one")]) == 2
    assert "two runs or more; got 1" in capsys.readouterr().err
    assert main(["soup", str(first), str(tmp_path / "nope"), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_soup_checkpoint_holds_one_run_at_a_time(make_small, tmp_path, monkeypatch):
    runs = list(_two_runs(make_small, tmp_path))
    third = make_small()
    runs.append(save_checkpoint(tmp_path / "run3.pt", build_checkpoint(third, config={})))
    read, alive_at_read = [], []
    original = soup_module.read_checkpoint

    class Checkpoint(dict):  # a dict that can be weakly referenced
        pass

    def tracked(path):
        gc.collect()
        alive_at_read.append(sum(ref() is not None for ref in read))
        checkpoint = Checkpoint(original(path))
        read.append(weakref.ref(checkpoint))
        return checkpoint

    monkeypatch.setattr(soup_module, "read_checkpoint", tracked)
    payload = soup_checkpoint(runs)
    # When each run is read, no earlier run's checkpoint is still held.
    assert alive_at_read == [0, 0, 0]
    states = [load_checkpoint(path).state_dict() for path in runs]
    for key, value in payload["model"].items():
        if value.is_floating_point():
            expected = sum(s[key].double() for s in states) / 3
            assert torch.equal(value, expected.to(value.dtype)), key
