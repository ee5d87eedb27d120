"""The demo over several seeds: each model's target mAP and rank-1 as mean ± spread.

Usage:
    .venv/bin/python benchmarks/demo_seeds.py [--seeds 0 1 2 3] [--quick] [--output runs/seeds]
    .venv/bin/python benchmarks/demo_seeds.py --from runs/seeds   # tabulate finished runs

Each seed is one ``crossreid demo --seed S`` (domains and training seeded by S), written to
``OUTPUT/seed-S/results.json``; seeds whose results file exists are read, not run again.
The pseudo-label model averages the weights of its stage runs; their own figures are listed
under it. Single-seed figures move by several points between seeds (the oracle most), so the demo's
claims are made on the mean over seeds: the gain of each stage, and the share of the
source-only → oracle gap closed (mean gain over mean gap). The spread is the sample
standard deviation over seeds, with the minimum and maximum.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from crossreid.demo import MODEL_LABELS, run_demo


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return (
        f"{100 * mean:5.1f} ± {100 * sd:4.1f}  [{100 * min(values):4.1f}, {100 * max(values):4.1f}]"
    )


def results_for(seed: int, output: Path, quick: bool) -> dict:
    folder = output / f"seed-{seed}"
    path = folder / "results.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    results = run_demo(seed=seed, quick=quick, output=folder, progress=False, log=lambda s: None)
    print(f"seed {seed}: {time.perf_counter() - started:.0f} s")
    return results


def report(runs: dict[int, dict]) -> None:
    seeds = sorted(runs)
    keys = [k for k in MODEL_LABELS if all(k in runs[s]["models"] for s in seeds)]
    print(f"target B, seeds {', '.join(map(str, seeds))}: mAP per seed (%)")
    header = f"{'model':<22}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds)
    print(header + f"   {'mean ± sd  [min, max]':>28}")
    # The pseudo-label model is the average of the weights of its stage runs; each run's
    # figures are printed below it.
    stage_runs = sorted(
        set.intersection(*(set(runs[s].get("pseudo_label_runs", {})) for s in seeds))
    )
    for metric in ("mAP", "rank1"):
        if metric != "mAP":
            print(f"{metric} (%)")
        rows = [
            (MODEL_LABELS[key][1], [runs[s]["models"][key][metric] for s in seeds]) for key in keys
        ]
        rows += [
            (
                f"  stage run {key.rsplit('_', 1)[1]}",
                [runs[s]["pseudo_label_runs"][key][metric] for s in seeds],
            )
            for key in stage_runs
        ]
        for label, values in rows:
            cells = "".join(f"{100 * v:9.1f}" for v in values)
            print(f"{label:<22}{cells}   {_spread(values):>28}")
    mean = {k: statistics.fmean(runs[s]["models"][k]["mAP"] for s in seeds) for k in keys}
    gap = mean["oracle"] - mean["source_only"]
    for key, base, what in (
        ("adapted", "source_only", "adaptation over source-only"),
        ("pseudo_labels", "adapted", "pseudo-labels over the adapted model"),
        ("pseudo_labels", "source_only", "ARN + pseudo-labels over source-only"),
    ):
        if key not in mean:
            continue
        gains = [runs[s]["models"][key]["mAP"] - runs[s]["models"][base]["mAP"] for s in seeds]
        share = (
            f", {(mean[key] - mean[base]) / gap:.0%} of the mean gap to the oracle"
            if (base == "source_only" and gap > 0)
            else ""
        )
        print(
            f"{what}: {100 * statistics.fmean(gains):+.1f} points mean "
            f"(per seed {', '.join(f'{100 * g:+.1f}' for g in gains)}){share}"
        )
    if stage_runs:
        gains = [
            runs[s]["models"]["pseudo_labels"]["mAP"]
            - statistics.fmean(runs[s]["pseudo_label_runs"][k]["mAP"] for k in stage_runs)
            for s in seeds
        ]
        print(
            f"averaging the weights of the {len(stage_runs)} stage runs: "
            f"{100 * statistics.fmean(gains):+.1f} points mean over their mean "
            f"(per seed {', '.join(f'{100 * g:+.1f}' for g in gains)})"
        )
    seconds = [runs[s].get("seconds", float("nan")) for s in seeds]
    print(f"demo wall time per seed: {', '.join(f'{t:.0f} s' for t in seconds)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="demo seeds (default 0 1 2 3)"
    )
    parser.add_argument("--quick", action="store_true", help="the --quick demo")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("runs/seeds"),
        help="one seed-S folder per seed; finished seeds are read, not run again "
        "(default runs/seeds)",
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="only tabulate the seed-*/results.json already in this folder",
    )
    args = parser.parse_args()
    output = args.source or args.output
    if args.source:
        runs = {
            int(p.parent.name.split("-")[1]): json.loads(p.read_text())
            for p in sorted(args.source.glob("seed-*/results.json"))
        }
    else:
        runs = {seed: results_for(seed, output, args.quick) for seed in args.seeds}
    report(runs)


if __name__ == "__main__":
    main()
