"""``crossreid evaluate``: rank-k, mAP and mINP of saved query/gallery features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "evaluate re-ID features (rank-1/5/10/20, mAP, mINP) from a .npz file"
DESCRIPTION = (
    "Evaluate query/gallery features saved by 'crossreid extract --dataset' (or any .npz "
    "holding qf, gf, q_pids, g_pids, q_camids, g_camids). Prints a table of rank-1/5/10/20, "
    "mAP and mINP in percent, or with --json one object with fractions in [0, 1]. Protocol "
    "'market' serves Market-1501, DukeMTMC-reID and MSMT17; 'cuhk03' averages a "
    "single-gallery-shot CMC over 10 seeded draws."
)

REQUIRED_KEYS = ("qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids")
TABLE_RANKS = (1, 5, 10, 20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        metavar="FILE.npz",
        help="features file with qf, gf, q_pids, g_pids, q_camids, g_camids",
    )
    parser.add_argument(
        "--metric",
        default="cosine",
        choices=["cosine", "L2", "L1", "correlation"],
        help="distance metric (smaller is closer)",
    )
    parser.add_argument("--max-rank", type=int, default=50, metavar="K", help="CMC length")
    parser.add_argument(
        "--rerank",
        action="store_true",
        help="apply k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) before ranking",
    )
    parser.add_argument("--protocol", default="market", choices=["market", "cuhk03"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the cuhk03 sampling")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_checkpoint_arguments(parser)


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Evaluating a checkpoint on a dataset (instead of --features), and ranked pictures."""
    from crossreid.cli._common import add_camera_bn_argument, add_extraction_arguments

    group = parser.add_argument_group("evaluate a checkpoint (instead of --features)")
    group.add_argument("--checkpoint", metavar="C", help="a crossreid checkpoint")
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


def checkpoint_features(args: argparse.Namespace) -> dict[str, Any] | None:
    """qf, gf, ... (and paths) of ``--dataset`` through ``--checkpoint``; None off rank 0."""
    from crossreid.cli._common import extraction_device, extraction_options
    from crossreid.data.specs import resolve_dataset
    from crossreid.evaluation.extraction import extract_query_gallery
    from crossreid.models.checkpoint import load_checkpoint
    from crossreid.training.distributed import cleanup_distributed, setup_distributed

    device = extraction_device(args.device)
    model = load_checkpoint(args.checkpoint, map_location="cpu")
    dataset = resolve_dataset(args.dataset, args.data_root)
    info = setup_distributed(device.type)
    try:
        options = extraction_options(args, device)
        camera_bn = dataset.train if args.camera_bn else None
        return extract_query_gallery(
            model, dataset.query, dataset.gallery, camera_bn=camera_bn, **options
        )
    finally:
        cleanup_distributed(info)


def write_pictures(args: argparse.Namespace, arrays: dict[str, Any]) -> None:
    """``--visualize DIR``: one ranked-results picture per query."""
    from crossreid.data.base import ImageRecord
    from crossreid.errors import EvaluationError
    from crossreid.retrieval.visualize import visualize_features

    if "q_paths" not in arrays or "g_paths" not in arrays:
        raise EvaluationError("--visualize needs image paths: q_paths/g_paths are not in the file")
    query, gallery = (
        [ImageRecord(str(p), int(i), int(c)) for p, i, c in zip(*cols, strict=True)]
        for cols in (
            (arrays["q_paths"], arrays["q_pids"], arrays["q_camids"]),
            (arrays["g_paths"], arrays["g_pids"], arrays["g_camids"]),
        )
    )
    written = visualize_features(
        arrays["qf"],
        arrays["gf"],
        query,
        gallery,
        args.visualize,
        metric=args.metric,
        topk=args.topk,
    )
    if not args.json:
        print(f"wrote {len(written)} ranked-results pictures to {args.visualize}")


def load_features(path: str | Path) -> dict[str, Any]:
    """The six arrays of a features file, or :class:`EvaluationError` naming what is wrong."""
    import numpy as np

    from crossreid.errors import EvaluationError

    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"features file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in REQUIRED_KEYS if key not in data.files]
            if missing:
                raise EvaluationError(
                    f"{path} lacks {', '.join(missing)}; expected arrays {', '.join(REQUIRED_KEYS)}"
                )
            return {key: data[key] for key in REQUIRED_KEYS}
    except EvaluationError:
        raise
    except Exception as err:  # zipfile/pickle/format errors from np.load
        raise EvaluationError(f"cannot read {path} as a .npz features file: {err}") from None


def evaluate_and_report(
    qf: Any,
    gf: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    metric: str = "cosine",
    max_rank: int = 50,
    rerank: bool = False,
    protocol: str = "market",
    seed: int = 0,
    as_json: bool = False,
    title: str | None = None,
) -> dict[str, float | int]:
    """Evaluate features and print the table (or JSON); returns the metrics dict.

    The single path behind every source of features (a features file today, a checkpoint
    and dataset later), so they all report the same numbers the same way.
    """
    from crossreid.errors import EvaluationError
    from crossreid.evaluation import evaluate_features, evaluate_rank, pairwise_distance

    if max_rank < 1:
        raise EvaluationError(f"--max-rank must be at least 1, got {max_rank}")
    # Rank-20 is always reported, so the curve is computed at least that far.
    curve = max(max_rank, max(TABLE_RANKS))
    if rerank:
        from crossreid.evaluation.rerank import re_ranking

        q_g = pairwise_distance(qf, gf, metric)
        q_q = pairwise_distance(qf, qf, metric)
        g_g = pairwise_distance(gf, gf, metric)
        dist = re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
        result = evaluate_rank(
            dist, q_pids, g_pids, q_camids, g_camids, max_rank=curve, protocol=protocol, seed=seed
        )
    else:
        result = evaluate_features(
            qf,
            gf,
            q_pids,
            g_pids,
            q_camids,
            g_camids,
            metric=metric,
            max_rank=curve,
            protocol=protocol,
            seed=seed,
        )
    metrics = result.as_dict()
    if as_json:
        print(json.dumps(metrics))
        return metrics

    rows = [(f"rank-{k}", result.rank(k)) for k in TABLE_RANKS]
    if max_rank not in TABLE_RANKS and max_rank > max(TABLE_RANKS):
        rows.append((f"rank-{max_rank}", result.rank(max_rank)))
    rows += [("mAP", result.mAP), ("mINP", result.mINP)]
    header = title or "evaluation"
    setting = f"{protocol} protocol, {metric} distance" + (", re-ranked" if rerank else "")
    print(f"{header} ({setting}; {result.num_valid_queries} valid queries)")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {100.0 * value:6.2f}%")
    return metrics


def run(args: argparse.Namespace) -> int:
    from crossreid.errors import ConfigError

    if (args.features is None) == (args.checkpoint is None):
        raise ConfigError("give either --features FILE.npz or --checkpoint C --dataset SPEC")
    if args.checkpoint is not None and args.dataset is None:
        raise ConfigError("--checkpoint needs --dataset SPEC (the query/gallery to evaluate)")
    if args.topk < 1:
        raise ConfigError(f"--topk must be a positive integer, got {args.topk}")
    if args.checkpoint is not None:
        arrays = checkpoint_features(args)
        if arrays is None:  # another rank under torchrun: rank 0 reports
            return 0
        title = f"{args.checkpoint} on {args.dataset}"
    else:
        arrays = load_features(args.features)
        title = str(args.features)
        if args.visualize:
            import numpy as np

            with np.load(args.features, allow_pickle=False) as data:
                arrays.update({k: data[k] for k in ("q_paths", "g_paths") if k in data.files})
    evaluate_and_report(
        arrays["qf"],
        arrays["gf"],
        arrays["q_pids"],
        arrays["g_pids"],
        arrays["q_camids"],
        arrays["g_camids"],
        metric=args.metric,
        max_rank=args.max_rank,
        rerank=args.rerank,
        protocol=args.protocol,
        seed=args.seed,
        as_json=args.json,
        title=title,
    )
    if args.visualize:
        write_pictures(args, arrays)
    return 0
