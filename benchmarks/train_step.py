"""Throughput of one full training step, where its time goes, and whether loading keeps up.

Usage::

    python benchmarks/train_step.py            # CPU figures (+ CUDA/AMP figures on a GPU)
    python benchmarks/train_step.py --quick    # fewer timed steps

For each configuration it prints:

* images/second of a full adaptation step (source PK batch + target batch of the same size:
  identity encoder, pose encoder, decoder, every loss, backward, SGD update);
* the share of step time in each part, timed with synchronised wall clocks around:
  ``identity_encoder`` (trunk + max-pool on source and target), ``pose_encoder`` (same, on
  the jittered images), ``decoder`` (cross- and self-reconstruction), ``classifier``,
  ``losses`` (all six terms and their weighted sum), ``backward_optimizer`` (autograd through
  everything, gradient norm, SGD step, LR schedule) and ``data_to_device`` (host→device copy
  and the pose colour jitter); what is left is loop overhead (``other``);
* at the small configuration, the data loaders' images/second with the default number of
  workers (source and target loaders together, measured alone after worker start-up) and its
  ratio to what the step consumes; the target is >= 1.5x;
* the FLOPs of one step (``FlopCounterMode`` around one whole step, forward and backward,
  a multiply-add counted as two), the achieved GFLOP/s and its fraction of a dense float32
  matrix product measured at the start of the run with the same threads (fp16 for AMP).

Data are synthetic domains from the ``synthetic:`` specs (generated into the cache on first
use). Configurations: resnet18 at 128x64 with batch 32 and resnet50 at 224x224 with batch 4 on
the CPU; resnet50 at 224x224 with batch 16 and AMP on CUDA when a GPU is present.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time
from collections import defaultdict

import torch
from _common import achieved, gemm_line
from torch.utils.flop_counter import FlopCounterMode

from crossreid.data.loaders import (
    build_source_loader,
    build_target_loader,
    default_workers,
    infinite_batches,
)
from crossreid.data.specs import resolve_dataset
from crossreid.models import CrossDomainReID
from crossreid.training.config import TrainConfig
from crossreid.training.optim import build_optimizer, freeze_unused_parts
from crossreid.training.schedule import LRSchedule, build_scheduler
from crossreid.training.step import TrainingStep

PARTS = (
    "identity_encoder",
    "pose_encoder",
    "decoder",
    "classifier",
    "losses",
    "backward_optimizer",
    "data_to_device",
)


class PartTimer:
    """``timer(name)`` context manager accumulating synchronised wall time per part."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self.enabled = False

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - start


def measure_step(
    label: str,
    *,
    backbone: str,
    size: tuple[int, int],
    batch: int,
    k: int,
    device: torch.device,
    amp: bool,
    steps: int,
    warmup: int,
    gemm: float,
) -> float:
    """Time ``steps`` training steps; print images/s, part shares and the achieved fraction
    of ``gemm`` (GFLOP/s); return step images/s."""
    spec = f"synthetic:{{}}?ids=60&images=8&size={size[0]}x{size[1]}"
    source = resolve_dataset(spec.format("A"), progress=False)
    target = resolve_dataset(spec.format("B"), progress=False)
    config = TrainConfig(
        source="A", target="B", backbone=backbone, pretrained="none", image_size=size,
        batch_size=batch, num_instances=k, device=str(device), amp=amp,
        channels_last=device.type == "cuda", warmup_steps=0, max_steps=1000,
    )  # fmt: skip
    # Batches are loaded beforehand (workers=0) so only the step is timed.
    src_loader = build_source_loader(source.train, size, batch, k, workers=0, seed=0)
    tgt_loader = build_target_loader(target.train, size, batch, workers=0, seed=0)
    batches = list(
        itertools.islice(
            zip(infinite_batches(src_loader), infinite_batches(tgt_loader), strict=False), 4
        )
    )

    torch.manual_seed(0)
    model = CrossDomainReID(
        backbone, num_classes=source.num_train_pids, image_size=size, pretrained=None
    ).to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    freeze_unused_parts(model, config)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, LRSchedule(max_steps=1000, kind="constant"))
    scaler = torch.amp.GradScaler("cuda") if amp else None
    step_fn = TrainingStep(model, optimizer, scheduler, config, device, scaler=scaler)
    timer = PartTimer(device)
    step_fn.timer = timer
    model.train()

    def run(n: int, offset: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            (x, pids, _, _), (t, _, _) = batches[(offset + i) % len(batches)]
            step_fn(offset + i, x, pids, t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    (x, pids, _, _), (t, _, _) = batches[0]
    counter = FlopCounterMode(display=False)
    with counter:  # the first warm-up step, counted
        step_fn(0, x, pids, t)
    step_flops = float(counter.get_total_flops())
    run(max(0, warmup - 1), 1)
    timer.enabled = True
    seconds = run(steps, warmup)
    images = 2 * batch * steps  # source + target images per step
    ips = images / seconds
    print(
        f"[{label}] {backbone} {size[0]}x{size[1]} batch {batch}+{batch} (source+target) "
        f"on {device}{' AMP' if amp else ''}: {seconds / steps * 1000:.0f} ms/step, "
        f"{ips:.1f} images/s; {step_flops / 1e9:.1f} GFLOP per step (forward + backward), "
        f"{achieved(step_flops * steps, seconds, gemm)}"
    )
    shares = {p: timer.totals.get(p, 0.0) for p in PARTS}
    shares["other"] = max(0.0, seconds - sum(shares.values()))
    print(
        f"[{label}] step time shares: "
        + ", ".join(f"{name} {value / seconds:.0%}" for name, value in shares.items())
    )
    return ips


def measure_loader(size: tuple[int, int], batch: int, k: int, batches: int) -> float:
    """Images/s of the source + target loaders with the default workers (after start-up)."""
    spec = f"synthetic:{{}}?ids=60&images=8&size={size[0]}x{size[1]}"
    source = resolve_dataset(spec.format("A"), progress=False)
    target = resolve_dataset(spec.format("B"), progress=False)
    workers = default_workers()
    src = infinite_batches(build_source_loader(source.train, size, batch, k, workers=workers))
    tgt = infinite_batches(build_target_loader(target.train, size, batch, workers=workers))
    for _ in range(2):  # worker start-up and first batches
        next(src), next(tgt)
    start = time.perf_counter()
    for _ in range(batches):
        next(src), next(tgt)
    seconds = time.perf_counter() - start
    return 2 * batch * batches / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--no-full", action="store_true", help="skip resnet50 224x224 on CPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 3 if args.quick else 6
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    gemm, line = gemm_line("torch")
    print(line)

    small_ips = measure_step(
        "cpu small", backbone="resnet18", size=(128, 64), batch=32, k=4, device=cpu,
        amp=False, steps=steps, warmup=1, gemm=gemm,
    )  # fmt: skip
    loader_ips = measure_loader((128, 64), 32, 4, batches=6 if args.quick else 12)
    ratio = loader_ips / small_ips
    print(
        f"[cpu small] data loader ({default_workers()} workers per loader, source+target): "
        f"{loader_ips:.1f} images/s = {ratio:.2f}x the step's consumption "
        f"({'OK' if ratio >= 1.5 else 'BELOW'} the 1.5x target)"
    )
    if not args.no_full:
        measure_step(
            "cpu full", backbone="resnet50", size=(224, 224), batch=4, k=2, device=cpu,
            amp=False, steps=max(2, steps // 2), warmup=1, gemm=gemm,
        )  # fmt: skip
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        cuda_fp32, line = gemm_line("cuda", 8192)
        print(f"[cuda] {line}")
        cuda_fp16, line = gemm_line("cuda-fp16", 8192)
        print(f"[cuda] {line}")
        fp32 = measure_step(
            "cuda fp32", backbone="resnet50", size=(224, 224), batch=16, k=4, device=cuda,
            amp=False, steps=20, warmup=5, gemm=cuda_fp32,
        )  # fmt: skip
        amp = measure_step(
            "cuda amp", backbone="resnet50", size=(224, 224), batch=16, k=4, device=cuda,
            amp=True, steps=20, warmup=5, gemm=cuda_fp16,
        )  # fmt: skip
        print(f"[cuda] AMP speed-up over fp32: {amp / fp32:.2f}x")
    else:
        print("[cuda] no CUDA device: GPU figures skipped")


if __name__ == "__main__":
    main()
