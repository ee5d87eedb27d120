"""``crossreid evaluate``: rank-k, mAP and mINP of saved query/gallery features."""

from __future__ import annotations

import argparse
import json
from typing import Any

from crossreid.cli._checkpoint import add_checkpoint_option, checkpoint_file
from crossreid.cli._common import (
    add_camera_bn_argument,
    add_extraction_arguments,
    extraction_options,
)
from crossreid.errors import ConfigError
from crossreid.evaluation.distance import METRICS
from crossreid.evaluation.rank import PROTOCOLS

HELP = "evaluate re-ID features (rank-1/5/10/20, mAP, mINP) from a .npz file"
DESCRIPTION = (
    "Evaluate query/gallery features saved by 'crossreid extract --dataset' (or any .npz "
    "holding qf, gf, q_pids, g_pids, q_camids, g_camids). Prints a table of rank-1/5/10/20, "
    "mAP and mINP in percent, or with --json one object with fractions in [0, 1]. Protocol "
    "'market' serves Market-1501, DukeMTMC-reID and MSMT17; 'cuhk03' averages a "
    "single-gallery-shot CMC over 10 seeded draws."
)

TABLE_RANKS = (1, 5, 10, 20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        metavar="FILE.npz",
        help="features file with qf, gf, q_pids, g_pids, q_camids, g_camids",
    )
    parser.add_argument(
        "--metric", default="cosine", choices=METRICS, help="distance metric (smaller is closer)"
    )
    parser.add_argument("--max-rank", type=int, default=50, metavar="K", help="CMC length")
    parser.add_argument(
        "--rerank",
        action="store_true",
        help="apply k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) before ranking",
    )
    parser.add_argument("--protocol", default="market", choices=PROTOCOLS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the cuhk03 sampling")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_checkpoint_arguments(parser)


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Evaluating a checkpoint on a dataset (instead of --features), and ranked pictures."""
    group = parser.add_argument_group("evaluate a checkpoint (instead of --features)")
    add_checkpoint_option(group)
    group.add_argument("--dataset", metavar="SPEC", help="NAME, folder:PATH or synthetic:DOMAIN")
    group.add_argument("--data-root", metavar="DIR", help="folder holding named datasets")
    add_extraction_arguments(group)
    add_camera_bn_argument(group)
    parser.add_argument(
        "--visualize",
        metavar="DIR",
        help="write one ranked-results picture per query (needs image paths; not re-ranked)",
    )
    parser.add_argument("--topk", type=int, default=10, metavar="K", help="matches per picture")


def print_table(result: Any, *, title: str, metric: str, rerank: bool, max_rank: int) -> None:
    """The metrics of a :class:`~crossreid.evaluation.RankResult` as a table in percent."""
    rows = [(f"rank-{k}", result.rank(k)) for k in TABLE_RANKS]
    if max_rank not in TABLE_RANKS and max_rank > max(TABLE_RANKS):
        rows.append((f"rank-{max_rank}", result.rank(max_rank)))
    rows += [("mAP", result.mAP), ("mINP", result.mINP)]
    setting = f"{result.protocol} protocol, {metric} distance" + (", re-ranked" if rerank else "")
    print(f"{title} ({setting}; {result.num_valid_queries} valid queries)")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {100.0 * value:6.2f}%")


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs (see crossreid.cli): torch.
    from crossreid.data.specs import resolve_dataset
    from crossreid.evaluation.pipeline import evaluate_arrays, evaluate_model
    from crossreid.inference.features_file import load_features_file
    from crossreid.models.checkpoint import load_checkpoint
    from crossreid.retrieval.visualize import visualize_feature_arrays
    from crossreid.utils.distributed import cleanup_distributed, setup_distributed

    if (args.features is None) == (args.checkpoint is None):
        raise ConfigError("give either --features FILE.npz or --checkpoint C --dataset SPEC")
    if args.checkpoint is not None and args.dataset is None:
        raise ConfigError("--checkpoint needs --dataset SPEC (the query/gallery to evaluate)")
    if args.topk < 1:
        raise ConfigError(f"--topk must be a positive integer, got {args.topk}")
    if args.max_rank < 1:
        raise ConfigError(f"--max-rank must be at least 1, got {args.max_rank}")
    # Rank-20 is always reported, so the curve is computed at least that far.
    ranking = {
        "metric": args.metric,
        "max_rank": max(args.max_rank, max(TABLE_RANKS)),
        "rerank": args.rerank,
        "protocol": args.protocol,
        "seed": args.seed,
    }
    checkpoint = checkpoint_file(args)
    if checkpoint is not None:
        options = extraction_options(args)
        model = load_checkpoint(checkpoint, map_location="cpu")
        dataset = resolve_dataset(args.dataset, args.data_root)
        info = setup_distributed(options["device"].type)
        try:
            camera_bn = dataset.train if args.camera_bn else None
            evaluation = evaluate_model(
                model, dataset.query, dataset.gallery, camera_bn=camera_bn, **ranking, **options
            )
        finally:
            cleanup_distributed(info)
        if evaluation is None:  # another rank under torchrun: rank 0 reports
            return 0
        result, arrays = evaluation.result, evaluation.arrays
        title = f"{checkpoint} on {args.dataset}"
    else:
        arrays = load_features_file(args.features, paths=bool(args.visualize))
        result = evaluate_arrays(arrays, **ranking)
        title = str(args.features)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print_table(
            result, title=title, metric=args.metric, rerank=args.rerank, max_rank=args.max_rank
        )
    if args.visualize:
        written = visualize_feature_arrays(
            arrays, args.visualize, metric=args.metric, topk=args.topk
        )
        if not args.json:
            print(f"wrote {len(written)} ranked-results pictures to {args.visualize}")
    return 0
