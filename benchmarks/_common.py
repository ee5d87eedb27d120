"""Shared helpers for the benchmark scripts: timing, memory, Market-1501 labels, features,
and the machine's dense matrix-multiply rate with the achieved fraction of it.

Benchmarks are scripts, not tests: they print measured figures and ratios to a baseline
measured in the same run. Each speed benchmark also prints the rate of a large float32
matrix product measured in the same run with the same threads (:func:`gemm_gflops`) and
the rate its measured work achieved as a fraction of it (:func:`achieved`): FLOPs count a
multiply-add as two (:func:`forward_flops` for networks, ``2 * m * n * k`` for a product).
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MARKET_FILELIST = REPO.parent / "shared" / "data" / "market1501_filelist.txt.gz"
GEMM_SIZE = 3072  # 58 GFLOP per product: within 5% of the BLAS's rate at 4096 here


def gemm_gflops(library: str = "torch", size: int = GEMM_SIZE, repeats: int = 5) -> float:
    """GFLOP/s of a ``size x size`` float32 matrix product (``2 size^3`` FLOPs), the best of
    ``repeats``, with the threads the work uses: ``torch.get_num_threads()`` for
    ``"torch"`` (MKL / oneDNN), NumPy's BLAS threads for ``"numpy"``, CUDA for
    ``"cuda"`` (TF32 off, as for float32 work) or ``"cuda-fp16"`` / ``"cuda-bf16"``."""
    if library == "numpy":
        rng = np.random.default_rng(0)
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        seconds, _ = best_time(lambda: a @ b, repeats)
        return 2 * size**3 / seconds / 1e9
    import torch

    if library == "torch":
        a, b = torch.randn(size, size), torch.randn(size, size)
        seconds, _ = best_time(lambda: a @ b, repeats)
        return 2 * size**3 / seconds / 1e9
    dtype = {"cuda": torch.float32, "cuda-fp16": torch.float16, "cuda-bf16": torch.bfloat16}
    a = torch.randn(size, size, device="cuda", dtype=dtype[library])
    b = torch.randn(size, size, device="cuda", dtype=dtype[library])

    def product():
        out = a @ b
        torch.cuda.synchronize()
        return out

    product()
    seconds, _ = best_time(product, repeats)
    return 2 * size**3 / seconds / 1e9


def gemm_threads(library: str) -> str:
    """The thread count :func:`gemm_gflops` ran with, in words."""
    if library.startswith("cuda"):
        return "one GPU"
    if library == "numpy":
        from threadpoolctl import threadpool_info  # scikit-learn's dependency

        counts = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
        return f"{'/'.join(str(c) for c in sorted(counts)) or '?'} BLAS threads"
    import torch

    return f"{torch.get_num_threads()} torch threads"


def gemm_line(library: str = "torch", size: int = GEMM_SIZE) -> tuple[float, str]:
    """``(GFLOP/s, a line to print)`` of :func:`gemm_gflops`."""
    rate = gemm_gflops(library, size)
    dtype = {"cuda-fp16": "float16", "cuda-bf16": "bfloat16"}.get(library, "float32")
    name = {"torch": "torch CPU", "numpy": "NumPy BLAS"}.get(library, "torch CUDA")
    return rate, (
        f"dense {dtype} GEMM {size}x{size}x{size}, {name}, {gemm_threads(library)}: "
        f"{rate:.1f} GFLOP/s (measured in this run)"
    )


def achieved(flops: float, seconds: float, gemm_rate: float) -> str:
    """``"X GFLOP/s = Y% of GEMM"`` for ``flops`` done in ``seconds``."""
    rate = flops / seconds / 1e9
    return f"{rate:.1f} GFLOP/s = {rate / gemm_rate:.0%} of GEMM"


def forward_flops(model: Any, example: Any) -> float:
    """FLOPs of one forward pass of ``model`` on ``example`` (a multiply-add counts two),
    from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    return float(counter.get_total_flops())


def best_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Minimum wall time of ``repeats`` calls (the least disturbed by other processes)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def traced_peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak bytes allocated (NumPy allocations included) while ``fn`` runs, and its result."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, result


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def market_labels(path: Path = MARKET_FILELIST) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"query"|"gallery"|"train": (pids, camids)}`` from the Market-1501 file list.

    Junk images (pid -1) are dropped and distractors (pid 0) kept, as the protocol does:
    3,368 queries and 15,913 gallery images.
    """
    # The library's parser matches a name's prefix, so the release's few "*.jpg.jpg"
    # names are read like the others.
    from crossreid.data import parse_market_name
    from crossreid.data.datasets.replica import read_filelist

    folders = {"query": "query", "bounding_box_test": "gallery", "bounding_box_train": "train"}
    out: dict[str, tuple[list[int], list[int]]] = {v: ([], []) for v in folders.values()}
    for line in read_filelist(path):
        folder, _, name = line.partition("/")
        if folder not in folders:
            continue
        pid, camid = parse_market_name(name)
        if pid == -1:
            continue
        pids, cams = out[folders[folder]]
        pids.append(pid)
        cams.append(camid)
    return {
        k: (np.array(p, dtype=np.int64), np.array(c, dtype=np.int64)) for k, (p, c) in out.items()
    }


def identity_features(
    pids: np.ndarray,
    camids: np.ndarray,
    dim: int,
    rng: np.random.Generator,
    centroids: dict[int, np.ndarray] | None = None,
    num_cameras: int | None = None,
    noise: float = 2.5,
    camera_shift: float = 0.7,
    distractor_pids: tuple[int, ...] = (0,),
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Somewhat realistic float32 features: identity centroid + camera shift + noise.

    Distractor identities get an independent random vector per image. With the defaults
    a Market-sized set gives mAP around 60% and rank-1 around 90%, so true matches sit at
    realistic depths in the ranked lists. ``centroids`` is shared between query and
    gallery calls (pass the returned dict back in).
    """
    centroids = {} if centroids is None else centroids
    num_cameras = int(camids.max()) + 1 if num_cameras is None else num_cameras
    cam_rng = np.random.default_rng(12345)  # the same camera shifts for every call
    shifts = cam_rng.standard_normal((num_cameras, dim), dtype=np.float32) * camera_shift
    feats = rng.standard_normal((pids.size, dim), dtype=np.float32)
    feats *= noise
    feats += shifts[camids]
    for pid in np.unique(pids):
        rows = np.flatnonzero(pids == pid)
        if int(pid) in distractor_pids:
            feats[rows] += rng.standard_normal((rows.size, dim), dtype=np.float32)
            continue
        if int(pid) not in centroids:
            centroids[int(pid)] = rng.standard_normal(dim, dtype=np.float32)
        feats[rows] += centroids[int(pid)]
    return feats, centroids
