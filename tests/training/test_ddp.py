"""DistributedDataParallel on 2 CPU processes (gloo) launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

from conftest import make_tiny_config

WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    from crossreid.training import TrainConfig, train

    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    result = train(config, progress=False)
    rank = int(os.environ["RANK"])
    digest = hashlib.sha256()
    for name, value in sorted(result.model.state_dict().items()):
        if "running" in name or "num_batches" in name:
            continue  # BatchNorm statistics are per process; parameters must agree
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as handle:
        json.dump({"sha256": digest.hexdigest(), "history": result.history,
                   "world": int(os.environ["WORLD_SIZE"])}, handle)
    """
)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_cpu_processes_keep_identical_parameters(tmp_path):
    # 2 identities per rank x 2 ranks: the 6 training identities suffice.
    config = make_tiny_config(tmp_path / "run", max_steps=3, save_every=3, batch_size=4)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            json.dumps(config.to_dict()),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[:4000]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # Each rank trained on its own share of the data (different local losses) ...
    assert ranks[0]["history"] != ranks[1]["history"]
    # ... and only rank 0 wrote the run's files.
    assert (tmp_path / "run/checkpoints/last.pt").is_file()
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 1
