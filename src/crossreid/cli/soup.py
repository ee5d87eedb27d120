"""``crossreid soup``: average the weights of runs trained from one start."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossreid.errors import ConfigError

HELP = "average the weights of runs trained from the same start (a model soup)"
DESCRIPTION = (
    "Average the weights of two or more runs of one architecture that started from the same "
    "weights (for instance pseudo-label stages started with the same --init-from and "
    "different --seed), and write the average as a checkpoint: OUTPUT/checkpoints/last.pt. "
    "It can be evaluated, exported, searched with and passed to --init-from; it holds no "
    "optimiser state, so it cannot be resumed. BatchNorm's running statistics are averaged "
    "too: evaluate it with --camera-bn (which recomputes them) where the target's camera "
    "ids are known. An existing checkpoint at OUTPUT is never overwritten."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="checkpoint files or run folders (two or more)"
    )
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="folder for checkpoints/last.pt"
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="read each run folder's best.pt (best target mAP) instead of last.pt",
    )


def run(args: argparse.Namespace) -> int:
    from crossreid.models.checkpoint import save_checkpoint
    from crossreid.models.soup import soup_checkpoint

    target = Path(args.output) / "checkpoints" / "last.pt"
    if target.exists():
        raise ConfigError(f"{target} exists; give another --output (nothing was written)")
    payload = soup_checkpoint(args.runs, prefer_best=args.best)
    path = save_checkpoint(target, payload)
    print(f"wrote {path}: the average of {len(payload['soup'])} runs")
    for member in payload["soup"]:
        print(f"  {member}")
    return 0
