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
        required=True,
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
    arrays = load_features(args.features)
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
        title=str(args.features),
    )
    return 0
