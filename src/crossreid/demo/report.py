"""The demo's report: the results and ablation tables, the summary line, ``ranked.png`` rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crossreid.demo.recipe import MODEL_LABELS
from crossreid.evaluation.distance import pairwise_distance
from crossreid.retrieval.visualize import RankedRow, match_status

__all__ = ["format_ablation_table", "format_results_table", "ranked_rows", "summary_line"]


def ranked_rows(
    runs: dict[str, dict[str, Any]],
    dataset,
    keys: Sequence[str],
    num_queries: int,
    topk: int,
    seed: int,
    metric: str = "cosine",
) -> list[RankedRow]:
    """Rows for ``ranked.png``: the same B queries for each model in ``keys``."""
    query, gallery = dataset.query, dataset.gallery
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(query), size=min(num_queries, len(query)), replace=False))
    rows = []
    for qi in picked:
        q = query[qi]
        for key in keys:
            features = runs[key]["_features"]
            dist = pairwise_distance(features["qf"][qi : qi + 1], features["gf"], metric)[0]
            matches, scores = [], []
            for gi in np.argsort(dist, kind="stable"):
                g = gallery[gi]
                status = match_status(q.pid, q.camid, g.pid, g.camid)
                if status == "junk":  # the protocol ignores same-camera matches: so do we
                    continue
                matches.append((g.path, status))
                scores.append(float(dist[gi]))
                if len(matches) == topk:
                    break
            # ASCII arrow: PIL's built-in bitmap font has no glyph for "→".
            name = MODEL_LABELS[key][1].replace("→", "->")
            label = f"{name}  query pid {q.pid} cam {q.camid}"
            rows.append(RankedRow(str(q.path), matches, label, scores))
    return rows


def format_results_table(results: dict[str, Any]) -> str:
    """The demo's table: target metrics (%) per model, source mAP and training time."""
    header = (
        f"{'model':<20}{'rank-1':>8}{'rank-5':>8}{'rank-10':>9}{'mAP':>8}{'mINP':>8}"
        f"{'A mAP':>8}{'train s':>9}"
    )
    lines = [f"target B (query/gallery), seed {results['seed']}", header, "-" * len(header)]
    for key, (_, label) in MODEL_LABELS.items():
        m = results["models"].get(key)
        if m is None:
            continue
        source = m.get("source_domain", {}).get("mAP", float("nan"))
        lines.append(
            f"{label:<20}{m['rank1']:>8.1%}{m['rank5']:>8.1%}{m['rank10']:>9.1%}"
            f"{m['mAP']:>8.1%}{m['mINP']:>8.1%}{source:>8.1%}{m.get('train_seconds', 0):>9.0f}"
        )
    return "\n".join(lines)


def _share(gain: float, gap: float) -> str:
    if gap > 0 and gain > gap:
        return "more than the whole gap: above the oracle"
    if gap > 0:
        return f"{gain / gap:.0%} of the gap to the oracle"
    return "the oracle is not above source-only"


def summary_line(results: dict[str, Any]) -> str | None:
    """The adapted model's target mAP gain over source-only and the share of the oracle gap
    it closes; with the pseudo-label model, a second line for it."""
    m = results["models"]
    if not all(k in m for k in ("source_only", "adapted", "oracle")):
        return None
    base = m["source_only"]["mAP"]
    gain, gap = m["adapted"]["mAP"] - base, m["oracle"]["mAP"] - base
    lines = [
        f"adaptation: target mAP {gain * 100:+.1f} points over source-only ({_share(gain, gap)})"
    ]
    if "pseudo_labels" in m:
        more = m["pseudo_labels"]["mAP"] - m["adapted"]["mAP"]
        total = m["pseudo_labels"]["mAP"] - base
        lines.append(
            f"pseudo-labels: target mAP {more * 100:+.1f} points over the adapted model; "
            f"{total * 100:+.1f} over source-only ({_share(total, gap)})"
        )
    return "\n".join(lines)


def format_ablation_table(results: dict[str, Any]) -> str:
    """The ablation table: target metrics (%) of the adapted model per zeroed loss weight."""
    header = f"{'adapted, part removed':<24}{'rank-1':>8}{'rank-5':>8}{'mAP':>8}{'mINP':>8}"
    header += f"{'Δ mAP':>8}{'A mAP':>8}"
    lines = [f"ablation on target B, seed {results['seed']}", header, "-" * len(header)]
    full = results["rows"].get("full", {}).get("mAP")
    for name, m in results["rows"].items():
        delta = (m["mAP"] - full) * 100 if full is not None else float("nan")
        source = m.get("source_domain", {}).get("mAP", float("nan"))
        lines.append(
            f"{name:<24}{m['rank1']:>8.1%}{m['rank5']:>8.1%}{m['mAP']:>8.1%}{m['mINP']:>8.1%}"
            f"{delta:>+8.1f}{source:>8.1%}"
        )
    return "\n".join(lines)
