"""Fault injection: stop signals during training (preemption, Ctrl-C), then ``--resume``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from crossreid.errors import TrainingInterrupted
from crossreid.models.checkpoint import read_checkpoint
from crossreid.training.trainer import train

SOURCE = "synthetic:A?ids=12&images=4&cameras=2&size=64x32"  # as the tiny_config fixture's
TARGET = "synthetic:B?ids=12&images=4&cameras=2&size=64x32"

needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers can only be installed in the main thread",
)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@needs_main_thread
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_finishes_the_step_saves_and_resume_is_exact(tmp_path, tiny_config, sig):
    common = dict(max_steps=5, schedule="step", milestones=(3,), warmup_steps=1, save_every=100)
    straight = train(tiny_config(tmp_path / "a", **common), progress=False)

    def preempt(step: int, total: int) -> None:
        if step == 2:  # the signal arrives during the run, as a scheduler's would
            os.kill(os.getpid(), sig)

    with pytest.raises(TrainingInterrupted) as stopped:
        train(tiny_config(tmp_path / "b", **common), progress=False, step_callback=preempt)
    assert stopped.value.exit_code == 128 + int(sig)
    message = str(stopped.value)
    assert f"stopped by {sig.name} after step 2 of 5" in message
    assert f"crossreid train --resume {tmp_path / 'b'}" in message
    assert read_checkpoint(tmp_path / "b/checkpoints/last.pt")["step"] == 2  # no step lost
    assert signal.getsignal(sig) is not None  # the previous handler is back

    resumed = train(
        tiny_config(tmp_path / "b", resume=str(tmp_path / "b"), **common), progress=False
    )
    assert resumed.steps == 5
    a, b = _weights(straight.model), _weights(resumed.model)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cli_exits_with_the_signal_status_and_says_how_to_resume(tmp_path, synthetic_cache):
    out = tmp_path / "run"
    argv = [
        sys.executable, "-m", "crossreid", "train", "--source", SOURCE, "--target", TARGET,
        "--output", str(out), "--backbone", "resnet18", "--pretrained", "none",
        "--image-size", "32x16", "--decoder-widths", "64,32,16,8", "--batch-size", "8",
        "--num-instances", "2", "--max-steps", "200", "--save-every", "1", "--eval-every", "1000",
        "--workers", "0", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "CROSSREID_CACHE": str(synthetic_cache), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert last.is_file(), process.stderr.read() if process.poll() is not None else "no last.pt"
    process.send_signal(signal.SIGUSR1)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGUSR1
    lines = [line for line in err.splitlines() if "stopped by SIGUSR1" in line]
    assert len(lines) == 1 and f"continue with: crossreid train --resume {out}" in lines[0]
    assert "Traceback" not in err
    step = read_checkpoint(last)["step"]
    assert 1 <= step < 200
