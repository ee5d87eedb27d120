"""``crossreid evaluate --checkpoint`` end to end on a Market-1501 replica: engine torch vs auto.

Usage:
    .venv/bin/python benchmarks/evaluate_end_to_end.py [--every 10] [--batch-size 64]

A ResNet-50 ``CrossDomainReID`` at 256x128 (random weights: the speed does not depend on
them) is evaluated on a replica of Market-1501 built from
``../shared/data/market1501_filelist.txt.gz`` (:mod:`crossreid.data.datasets.replica`):
every real file name, one 64x128 noise JPEG each, so parsing, decoding, resizing and
ranking see the real dataset's shape. The full test set is 19,281 images (3,368 queries,
15,913 gallery); at ~4-10 ResNet-50 images/s on a shared 2-core machine that is one to two
hours per engine, so by default every 10th name of each folder is kept (``--every 10``;
``--every 1`` runs the full set).

Each engine runs ``crossreid evaluate --checkpoint ... --dataset folder:... --engine E``
in a child process of its own (the command's default loader workers), with ``auto``
starting from an empty graph cache (its export is part of its time). The child times,
inside that one command: the extraction (``extract_query_gallery``, of which the ONNX
export), the distance (``GalleryDistance``) and the ranking (``RankAccumulator``); the
rest is start-up, checkpoint and dataset reading and printing.

The subset's distance and ranking are a hundredth of the full set's (they grow with
queries x gallery), so the parent also times them at full scale on 2048-d synthetic
features with Market-1501's labels, and prints full-size figures extrapolated from the
subset: extraction per image x 19,281 (plus the one export), full-scale distance and
ranking, and the subset's other costs; they are labelled as extrapolated.

Also printed: the machine's dense float32 matrix-product rate (torch threads, as
extraction uses) and the rate each extraction achieves as a fraction of it (FLOPs of one
forward from ``FlopCounterMode``, times the images, twice with ``--flip``).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from _common import (
    MARKET_FILELIST,
    achieved,
    forward_flops,
    gemm_line,
    identity_features,
    market_labels,
)

FOLDERS = ("query", "bounding_box_test", "bounding_box_train")
SIZE = (256, 128)
FULL_IMAGES = 3368 + 15913
PARTS = ("extraction", "of which ONNX export", "distance", "ranking")


def _timed(owner, name: str, key: str, totals: dict) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def instrument(totals: dict) -> None:
    """Accumulate the seconds of each part of ``crossreid evaluate`` in ``totals``."""
    import crossreid.evaluation.pipeline as pipeline
    from crossreid.evaluation.distance import GalleryDistance
    from crossreid.evaluation.rank import RankAccumulator
    from crossreid.inference import onnx_engine

    _timed(pipeline, "extract_query_gallery", "extraction", totals)
    _timed(onnx_engine, "_export_bytes", "of which ONNX export", totals)
    _timed(GalleryDistance, "__init__", "distance", totals)
    _timed(GalleryDistance, "__call__", "distance", totals)
    _timed(RankAccumulator, "__init__", "ranking", totals)
    _timed(RankAccumulator, "add", "ranking", totals)
    _timed(RankAccumulator, "result", "ranking", totals)


def child(engine: str, checkpoint: str, root: str, batch_size: int) -> None:
    """Run the command once, timed; print one JSON line."""
    start = time.perf_counter()
    totals: dict[str, float] = defaultdict(float)
    instrument(totals)
    from crossreid.cli import main

    argv = ["evaluate", "--checkpoint", checkpoint, "--dataset", f"folder:{root}"]
    argv += ["--engine", engine, "--batch-size", str(batch_size), "--json", "--no-progress"]
    output = io.StringIO()
    with redirect_stdout(output):
        code = main(argv)
    wall = time.perf_counter() - start
    print(json.dumps({"code": code, "wall": wall, **totals, "metrics": output.getvalue()}))


def build_inputs(every: int, cache: Path) -> tuple[Path, Path, dict[str, int]]:
    """The replica (every ``every``-th name of each folder) and a ResNet-50 checkpoint."""
    import torch
    from PIL import Image

    from crossreid.data.datasets.replica import read_filelist, write_replica
    from crossreid.models import CrossDomainReID, build_checkpoint, save_checkpoint

    names = read_filelist(MARKET_FILELIST)
    kept = [n for f in FOLDERS for n in [m for m in names if m.startswith(f + "/")][::every]]
    noise = np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(noise).save(jpeg, format="JPEG", quality=90)
    root = write_replica(kept, cache / f"market1501-every{every}", jpeg.getvalue())
    checkpoint = cache / "resnet50-256x128.pt"
    if not checkpoint.is_file():
        torch.manual_seed(0)
        model = CrossDomainReID("resnet50", num_classes=751, image_size=SIZE, pretrained=None)
        save_checkpoint(checkpoint, build_checkpoint(model))
    counts = {f: sum(1 for n in kept if n.startswith(f + "/")) for f in FOLDERS}
    return root, checkpoint, counts


def run_child(engine: str, checkpoint: Path, root: Path, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as graphs:
        env = dict(os.environ, CROSSREID_ONNX_CACHE=graphs)  # auto starts with no graph
        command = [sys.executable, __file__, "--child", engine, str(checkpoint), str(root)]
        command += ["--batch-size", str(batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"engine {engine} failed:\n{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["code"] != 0:
        raise RuntimeError(f"engine {engine}: exit status {figures['code']}\n{done.stderr}")
    return figures


def full_scale_evaluation() -> dict[str, float]:
    """Distance and ranking seconds of the full Market-1501 test set (2048-d features)."""
    from crossreid.evaluation import evaluate_features

    labels = market_labels()
    (q_pids, q_cams), (g_pids, g_cams) = labels["query"], labels["gallery"]
    rng = np.random.default_rng(0)
    qf, centroids = identity_features(q_pids, q_cams, 2048, rng, num_cameras=6)
    gf, _ = identity_features(g_pids, g_cams, 2048, rng, centroids, num_cameras=6)
    totals: dict[str, float] = defaultdict(float)
    instrument(totals)
    evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    return totals


def describe(label: str, f: dict, images: int, flops: float, gemm: float) -> str:
    other = f["wall"] - f["extraction"] - f["distance"] - f["ranking"]
    shares = ", ".join(
        f"{part} {f.get(part, 0.0):.1f} s ({f.get(part, 0.0) / f['wall']:.0%})" for part in PARTS
    )
    rate = achieved(flops * images, f["extraction"] - f.get("of which ONNX export", 0.0), gemm)
    return (
        f"{label}: wall {f['wall']:.1f} s; {shares}, other {other:.1f} s "
        f"({other / f['wall']:.0%}); extraction {images / f['extraction']:.1f} img/s, {rate}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=10, help="keep every N-th name")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--engines", nargs="+", default=["torch", "auto"])
    parser.add_argument(
        "--child", nargs=3, metavar=("ENGINE", "CKPT", "ROOT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.batch_size)
        return

    import torch

    from crossreid.data.specs import default_cache_dir, resolve_dataset
    from crossreid.models import CrossDomainReID

    root, checkpoint, counts = build_inputs(args.every, default_cache_dir() / "benchmarks")
    dataset = resolve_dataset(f"folder:{root}")  # junk (pid -1) images dropped, as evaluate
    images = len(dataset.query) + len(dataset.gallery)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"replica of Market-1501, every {args.every}th name of each folder "
        f"({sum(counts.values())} files): {len(dataset.query)} query + "
        f"{len(dataset.gallery)} gallery = {images} images to extract; ResNet-50 256x128, "
        f"batch {args.batch_size}; {os.cpu_count()} CPU cores, load average {load}"
    )
    gemm_before, _ = gemm_line("torch")
    model = CrossDomainReID("resnet50", num_classes=751, image_size=SIZE, pretrained=None)
    flops = forward_flops(model.eval(), torch.randn(1, 3, *SIZE))
    print(f"{flops / 1e9:.2f} GFLOP per image (FlopCounterMode)")

    results = {
        engine: run_child(engine, checkpoint, root, args.batch_size) for engine in args.engines
    }
    # The reference rate before and after the children: the machine's load changes over
    # minutes, and the higher of the two is the closer to what it can do.
    gemm_after, line = gemm_line("torch")
    gemm = max(gemm_before, gemm_after)
    print(f"{line}; {gemm_before:.1f} GFLOP/s before the runs; the higher is the reference")
    for engine, figures in results.items():
        metrics = json.loads(figures["metrics"])
        print(describe(f"engine {engine:<5} (measured)", figures, images, flops, gemm))
        print(
            f"  mAP {metrics['mAP']:.4f}, rank-1 {metrics['rank1']:.4f} (meaningless: every replica "
            "image is the same picture; printed to show the command completed)"
        )
    if {"torch", "auto"} <= results.keys():
        before, after = results["torch"]["wall"], results["auto"]["wall"]
        print(
            f"measured: auto / torch wall time {after / before:.2f} ({before / after:.2f}x faster)"
        )
    if args.every == 1:
        return

    full = full_scale_evaluation()
    print(
        f"full-scale distance {full['distance']:.1f} s and ranking {full['ranking']:.1f} s "
        "(measured: 3,368 x 15,913, 2048-d synthetic features, Market-1501 labels)"
    )
    for engine, f in results.items():
        export = f.get("of which ONNX export", 0.0)
        per_image = (f["extraction"] - export) / images
        extraction = per_image * FULL_IMAGES + export
        other = f["wall"] - f["extraction"] - f["distance"] - f["ranking"]
        total = extraction + full["distance"] + full["ranking"] + other
        print(
            f"engine {engine:<5} EXTRAPOLATED to 19,281 images: wall {total / 60:.1f} min; "
            f"extraction {extraction / 60:.1f} min ({extraction / total:.1%}), distance "
            f"{full['distance']:.1f} s ({full['distance'] / total:.2%}), ranking "
            f"{full['ranking']:.1f} s ({full['ranking'] / total:.2%}), other {other:.0f} s"
        )
        results[engine]["extrapolated"] = total
    if {"torch", "auto"} <= results.keys():
        ratio = results["torch"]["extrapolated"] / results["auto"]["extrapolated"]
        print(f"EXTRAPOLATED: auto is {ratio:.2f}x faster than torch end to end")


if __name__ == "__main__":
    main()
