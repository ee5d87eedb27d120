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

    import crossreid.training.cluster as cluster

    # The pseudo-label stage's method object, to compare its memory and labels across ranks.
    stage = {}
    step = cluster.ClusterMethod.step
    def keep_method(self, *args, **kwargs):
        stage["method"] = self
        return step(self, *args, **kwargs)
    cluster.ClusterMethod.step = keep_method

    from crossreid.errors import CrossReIDError

    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    rank = int(os.environ["RANK"])
    try:
        result = train(config, progress=False)
    except CrossReIDError as error:
        # Each rank's message in its own file; rank 0 exits last, so a rank that waited
        # for it (rather than stopping) would be killed by torchrun without writing one.
        with open(os.path.join(sys.argv[2], f"error{rank}.txt"), "w") as handle:
            handle.write(str(error))
        if rank == 0:
            import time
            time.sleep(10)
        sys.exit(2)
    digest = hashlib.sha256()
    for name, value in sorted(result.model.state_dict().items()):
        if "running" in name or "num_batches" in name:
            continue  # BatchNorm statistics are per process; parameters must agree
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    out = {"sha256": digest.hexdigest(), "history": result.history,
           "world": int(os.environ["WORLD_SIZE"])}
    if "method" in stage:
        out["memory"] = hashlib.sha256(stage["method"].memory.cpu().numpy().tobytes()).hexdigest()
        out["labels"] = stage["method"].labels.tolist()
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as handle:
        json.dump(out, handle)
    """
)


def _torchrun(config, folder) -> subprocess.CompletedProcess:
    """Train ``config`` in 2 CPU processes under torchrun; each writes ``rank<r>.json``."""
    script = folder / "worker.py"
    script.write_text(WORKER)
    # TMPDIR: torchrun's per-launch log folder (torchelastic_*) goes in the test's folder,
    # not the machine's /tmp.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TMPDIR": str(folder)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), json.dumps(config.to_dict()), str(folder)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_cpu_processes_keep_identical_parameters(tmp_path):
    # 2 identities per rank x 2 ranks: the 6 training identities suffice.
    config = make_tiny_config(tmp_path / "run", max_steps=3, save_every=3, batch_size=4)
    completed = _torchrun(config, tmp_path)
    assert completed.returncode == 0, completed.stderr[:4000]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # Each rank trained on its own share of the data (different local losses) ...
    assert ranks[0]["history"] != ranks[1]["history"]
    # ... and only rank 0 wrote the run's files.
    assert (tmp_path / "run/checkpoints/last.pt").is_file()
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 1


def _stage_config(folder, arn_run, **overrides):
    # 1 pseudo-identity x 2 images per rank and step (the tiny target's 24 images form about
    # 5 clusters at eps 0.5); clustering at steps 0 and 2.
    values = dict(
        method="cluster", init_from=str(arn_run), max_steps=4, cluster_every=2, cluster_k1=4,
        cluster_min_samples=2, cluster_eps=0.5, warmup_steps=1, eval_every=4, save_every=4,
        batch_size=2,
    )  # fmt: skip
    values.update(overrides)
    return make_tiny_config(folder, **values)


@pytest.fixture
def arn_run(tmp_path):
    from crossreid.training import train

    train(make_tiny_config(tmp_path / "arn", max_steps=2), progress=False)
    return tmp_path / "arn"


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("split_bn", [False, True])
def test_the_pseudo_label_stage_on_two_processes_keeps_ranks_identical(tmp_path, arn_run, split_bn):
    # With split_bn the target and source images go through the DDP-wrapped forward as two
    # encoder passes: BatchNorm's running statistics must still agree across ranks.
    config = _stage_config(tmp_path / "stage", arn_run, cluster_split_bn=split_bn)
    completed = _torchrun(config, tmp_path)
    assert completed.returncode == 0, completed.stderr[:4000]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Rank 0's pseudo-labels and memory reach rank 1, and each rank moves its memory with
    # both ranks' batches: parameters, memory and labels agree at the end ...
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    assert ranks[0]["memory"] == ranks[1]["memory"] and ranks[0]["labels"] == ranks[1]["labels"]
    assert max(ranks[0]["labels"]) >= 1  # at least 2 clusters
    # ... while each rank trained on its own batches.
    assert ranks[0]["history"] != ranks[1]["history"]
    lines = [json.loads(x) for x in (tmp_path / "stage/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("kind") == "cluster"] == [0, 2]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_a_failed_clustering_stops_every_rank_with_its_message(tmp_path, arn_run):
    # eps 0.001 and 4 samples a cluster leave every image an outlier: rank 0 says so, and
    # rank 1 stops with its message rather than waiting for it.
    config = _stage_config(tmp_path / "stage", arn_run, cluster_eps=0.001, cluster_min_samples=4)
    completed = _torchrun(config, tmp_path)
    assert completed.returncode != 0
    errors = [(tmp_path / f"error{rank}.txt").read_text() for rank in (0, 1)]
    assert "eps=0.001" in errors[0] and "every sample is an outlier" in errors[0]
    assert errors[1] == f"rank 0: {errors[0]}"
    assert (arn_run / "checkpoints/last.pt").is_file()
