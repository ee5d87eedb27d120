"""``crossreid demo``: the synthetic cross-domain demo (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HELP = (
    "train source-only, adapted, oracle and pseudo-label models on synthetic domains A -> B "
    "and compare"
)
DESCRIPTION = (
    "Generate (or reuse from the cache) two synthetic camera domains, A (labelled source, "
    "daylight) and B (unlabelled target, dim cameras with colour casts, blur and noise); train "
    "the same small network from scratch three times on the CPU: source-only (A, no target "
    "batches), adapted (A -> B, B's labels never read; evaluated with camera-wise BatchNorm "
    "statistics of B's unlabelled images) and oracle (B's labels); then ARN + pseudo-labels: "
    "two pseudo-label stages from the adapted model (B's training images clustered, never "
    "their labels; two seeds) and the average of their weights; evaluate each "
    "on B's and A's query/gallery; print the table, write TensorBoard logs per run, "
    "ranked.png and results.json under --output. The runs are single-threaded and run side by "
    "side (--jobs), so the numbers do not depend on the machine's CPU count. Nothing is "
    "downloaded."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="smaller domains and fewer steps (about 2 minutes)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the domains and the training"
    )
    parser.add_argument("--output", default="runs/demo", metavar="DIR", help="output folder")
    parser.add_argument("--json", metavar="FILE", help="also write the results as one JSON object")
    parser.add_argument(
        "--ablate",
        action="store_true",
        help="instead: train the adapted model with each loss weight set to 0 (and the "
        "target colour transfer and camera-wise BatchNorm switched off) in turn and print "
        "that table",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="training runs at once, each on one thread (0: the CPU count, at most 3); the "
        "results are the same for every N",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    # Before torch (and its OpenMP runtime) loads: idle OpenMP threads sleep instead of
    # spinning. On a small CPU shared with another busy process, spinning threads made
    # each training step ~8x slower in our measurements; sleeping ones cost nothing here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from crossreid.demo import (
        format_ablation_table,
        format_results_table,
        run_ablation,
        run_demo,
        summary_line,
    )
    from crossreid.errors import ConfigError

    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be >= 0 (0: the CPU count, at most 3), got {args.jobs}")
    progress = not args.no_progress
    if args.ablate:
        results = run_ablation(
            quick=args.quick,
            seed=args.seed,
            output=Path(args.output) / "ablation",
            progress=progress,
            workers=args.jobs or None,
        )
        print()
        print(format_ablation_table(results))
    else:
        results = run_demo(
            quick=args.quick,
            seed=args.seed,
            output=args.output,
            progress=progress,
            workers=args.jobs or None,
        )
        print()
        print(format_results_table(results))
        line = summary_line(results)
        if line:
            print(line)
        print(f"ranked results: {results['ranked']}")
        print(f"TensorBoard:    tensorboard --logdir {args.output}")
    print(f"total time {results['seconds']:.0f} s")
    if args.json:
        path = Path(args.json)
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0
