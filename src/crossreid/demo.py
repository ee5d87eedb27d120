"""The synthetic cross-domain demo behind ``crossreid demo`` and ``make demo``.

It shows what crossreid is for, on a machine with no dataset and no GPU:

1. two synthetic camera domains are generated (cached) through ``synthetic:`` specs:
   **A** (the labelled source: daylight, neutral colours) and **B** (the unlabelled target:
   dim indoor/night cameras with colour casts, blur and noise);
2. the same small network is trained three times from scratch:

   * ``source_only`` — on A with the source losses only (no target batches, no MMD);
   * ``adapted`` — the full cross-domain training A → B (B's labels are never read);
   * ``oracle`` — supervised on B's training labels, the upper bound;

3. each model is evaluated on B's query/gallery (the target, what the table is about) and on
   A's query/gallery (the source);
4. a table, TensorBoard logs (one folder per run), ``ranked.png`` (the same B queries ranked
   by the source-only and by the adapted model) and a JSON summary are written.

Model selection is honest: every model is the one at the *last* training step (the target
labels are used for evaluation only, never to pick a checkpoint).

Example::

    >>> from crossreid.demo import run_demo
    >>> results = run_demo(quick=True, seed=0, output="runs/demo")   # doctest: +SKIP
    >>> results["models"]["adapted"]["mAP"]                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossreid.errors import ConfigError

__all__ = [
    "DEFAULT_RECIPE",
    "MODEL_LABELS",
    "QUICK_RECIPE",
    "DemoRecipe",
    "format_ablation_table",
    "format_results_table",
    "run_ablation",
    "run_demo",
    "summary_line",
]

#: The three trained models: key in the results, training mode, label in tables.
MODEL_LABELS: dict[str, tuple[str, str]] = {
    "source_only": ("source-only", "source-only (A)"),
    "adapted": ("adapt", "adapted (A→B)"),
    "oracle": ("oracle", "oracle (B labels)"),
}
METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
LOSS_WEIGHTS = ("w_cls", "w_rec", "w_dif", "w_mmd", "w_ctr")
#: What ``--ablate`` switches off in turn: each loss weight and the target colour transfer.
ABLATION_TERMS = (*LOSS_WEIGHTS, "target_style_prob")


@dataclass(frozen=True)
class DemoRecipe:
    """Data and training settings of the demo (sized for a 2-core CPU).

    The synthetic domains are generated at ``data_size`` with ``ids`` identities each (half
    train, half test), ``images`` images per identity and ``cameras`` cameras. ``train`` holds
    :class:`~crossreid.training.TrainConfig` fields shared by the three runs.
    """

    ids: int = 100
    images: int = 12
    cameras: int = 4
    data_size: tuple[int, int] = (64, 32)
    train: dict[str, Any] = field(default_factory=dict)

    def spec(self, domain: str, seed: int) -> str:
        """The ``synthetic:`` dataset spec of ``domain`` for a demo seed."""
        h, w = self.data_size
        return (
            f"synthetic:{domain}?ids={self.ids}&images={self.images}&cameras={self.cameras}"
            f"&seed={seed}&size={h}x{w}"
        )


#: Training settings common to both recipes: resnet18 from scratch at the data's size.
_COMMON_TRAIN: dict[str, Any] = {
    "backbone": "resnet18",
    "pretrained": "none",
    "image_size": (64, 32),
    "decoder_widths": (128, 64, 32, 16),
    "batch_size": 32,
    "num_instances": 4,
    # From scratch, SGD at a useful learning rate diverges in the first steps at this
    # size; Adam at 1e-3 learns steadily (measured: see the README's demo section).
    "optimizer": "adam",
    "lr": 0.001,
    # Adaptation recipe (measured, see the README's demo section): source images take the
    # colour statistics of random unlabelled B images half of the time, MMD at weight 1
    # aligns the identity vectors, and the contrastive term is off (removing it helped
    # the adapted model most in the ablation). The same weights are used by all three runs;
    # the style transfer only acts where target batches exist (the adapted run).
    "target_style_prob": 0.5,
    "w_mmd": 1.0,
    "w_ctr": 0.0,
    "warmup_steps": 20,
    "schedule": "cosine",
    "dist_metric": "cosine",
    "workers": 0,
    "device": "cpu",
    "log_every": 10,
    "image_every": 100,
}

DEFAULT_RECIPE = DemoRecipe(train={**_COMMON_TRAIN, "max_steps": 250})
QUICK_RECIPE = DemoRecipe(ids=60, images=10, train={**_COMMON_TRAIN, "max_steps": 80})


def _train_config(recipe: DemoRecipe, mode: str, seed: int, output: Path, **overrides: Any):
    from crossreid.training import TrainConfig

    values = {**recipe.train, **overrides}
    max_steps = int(values["max_steps"])
    return TrainConfig(
        source=recipe.spec("A", seed),
        target=recipe.spec("B", seed),
        mode=mode,
        seed=seed,
        output=str(output),
        # One evaluation, at the end: the reported model is the last one, not the best.
        eval_every=max_steps,
        save_every=max_steps,
        **values,
    )


def _evaluate(model, dataset, config) -> tuple[dict[str, float], Any, Any]:
    """Metrics of ``model`` on ``dataset``'s query/gallery plus the features used."""
    from crossreid.evaluation import evaluate_rank, pairwise_distance
    from crossreid.evaluation.extraction import extract_features

    def features(records, desc):
        return extract_features(
            model,
            records,
            config.image_size,
            batch_size=config.eval_batch_size,
            device=config.device,
            flip=False,
            workers=0,
            channels_last=False,
            desc=desc,
        )

    q = features(dataset.query, "query")
    g = features(dataset.gallery, "gallery")
    dist = pairwise_distance(q.features, g.features, metric=config.dist_metric)
    result = evaluate_rank(dist, q.pids, g.pids, q.camids, g.camids, max_rank=50)
    metrics = {key: float(value) for key, value in result.as_dict().items() if key in METRICS}
    return metrics, (q, g), dist


def _train_and_evaluate(
    recipe: DemoRecipe,
    mode: str,
    seed: int,
    output: Path,
    datasets: dict[str, Any],
    progress: bool,
    **overrides: Any,
) -> dict[str, Any]:
    """One training run, evaluated on the target (B) and on the source (A)."""
    from crossreid.training import train

    config = _train_config(recipe, mode, seed, output, **overrides)
    result = train(config, progress=progress)
    model = result.model
    target_metrics, target_features, target_dist = _evaluate(model, datasets["B"], config)
    source_metrics, _, _ = _evaluate(model, datasets["A"], config)
    return {
        **target_metrics,
        "source_domain": source_metrics,
        "train_seconds": round(result.seconds, 1),
        "steps": result.steps,
        "_features": target_features,
        "_dist": target_dist,
    }


def _ranked_rows(
    runs: dict[str, dict[str, Any]],
    dataset,
    keys: Sequence[str],
    num_queries: int,
    topk: int,
    seed: int,
):
    """Rows for ``ranked.png``: the same B queries for each model in ``keys``."""
    import numpy as np

    from crossreid.retrieval.visualize import RankedRow, match_status

    query, gallery = dataset.query, dataset.gallery
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(query), size=min(num_queries, len(query)), replace=False))
    rows = []
    for qi in picked:
        q = query[qi]
        for key in keys:
            dist = np.asarray(runs[key]["_dist"])[qi]
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


def summary_line(results: dict[str, Any]) -> str | None:
    """One line: the adapted model's target mAP gain and the share of the oracle gap closed."""
    m = results["models"]
    if not all(k in m for k in MODEL_LABELS):
        return None
    gain = m["adapted"]["mAP"] - m["source_only"]["mAP"]
    gap = m["oracle"]["mAP"] - m["source_only"]["mAP"]
    closed = gain / gap if gap > 0 else float("nan")
    return (
        f"adaptation: target mAP {gain * 100:+.1f} points over source-only "
        f"({closed:.0%} of the gap to the oracle)"
    )


def _clean(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def run_demo(
    *,
    quick: bool = False,
    seed: int = 0,
    output: str | os.PathLike[str] = "runs/demo",
    recipe: DemoRecipe | None = None,
    progress: bool = True,
    num_queries: int = 4,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Generate (or reuse) the synthetic domains, train the three models and evaluate them.

    Args:
        quick: use :data:`QUICK_RECIPE` (smaller data, fewer steps) instead of
            :data:`DEFAULT_RECIPE`.
        seed: seeds the synthetic domains *and* the training runs.
        output: folder for ``<model>/`` run folders (TensorBoard, metrics, checkpoints),
            ``ranked.png`` and ``results.json``.
        recipe: explicit settings (overrides ``quick``); tests pass a tiny one.
        progress: show progress bars.
        num_queries: queries drawn in ``ranked.png``.
        log: where the progress lines go.

    Returns:
        ``{"seed", "models": {"source_only"|"adapted"|"oracle": {rank1, rank5, rank10, mAP,
        mINP, source_domain: {...}, train_seconds, steps}}, "seconds", "output", "ranked"}``,
        metrics as fractions on B's query/gallery (``source_domain``: on A's).
    """
    from crossreid.data.specs import describe_spec, resolve_dataset
    from crossreid.retrieval.visualize import render_ranked_rows

    started = time.perf_counter()
    recipe = recipe or (QUICK_RECIPE if quick else DEFAULT_RECIPE)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    datasets = {}
    for domain in ("A", "B"):
        spec = recipe.spec(domain, seed)
        log(f"domain {domain}: {describe_spec(spec)}")
        datasets[domain] = resolve_dataset(spec, progress=progress)
    log(f"data ready in {time.perf_counter() - started:.0f} s")

    runs: dict[str, dict[str, Any]] = {}
    for key, (mode, label) in MODEL_LABELS.items():
        log(f"training {label} ...")
        runs[key] = _train_and_evaluate(recipe, mode, seed, output / key, datasets, progress)
        m = runs[key]
        log(
            f"{label}: target mAP {m['mAP']:.1%} rank-1 {m['rank1']:.1%}; "
            f"source mAP {m['source_domain']['mAP']:.1%} ({m['train_seconds']:.0f} s)"
        )

    rows = _ranked_rows(runs, datasets["B"], ("source_only", "adapted"), num_queries, 10, seed)
    ranked = render_ranked_rows(
        rows,
        output / "ranked.png",
        tile_size=(32, 64),
        border=3,
        title=f"target B, seed {seed}: top-10 gallery matches (green: same person, red: other)",
    )
    results = {
        "seed": seed,
        "models": {key: _clean(run) for key, run in runs.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "output": str(output),
        "ranked": str(ranked),
    }
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def run_ablation(
    *,
    quick: bool = False,
    seed: int = 0,
    output: str | os.PathLike[str] = "runs/demo-ablation",
    recipe: DemoRecipe | None = None,
    progress: bool = True,
    weights: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The adapted model with each part of the method switched off in turn (plus the full one).

    ``weights`` defaults to :data:`ABLATION_TERMS` (the loss weights and the target colour
    transfer); terms already 0 in the recipe are skipped, since zeroing them changes nothing.

    Returns ``{"seed", "rows": {"full"|"w_rec=0"|...: {rank1, ..., mAP, mINP,
    source_domain, train_seconds}}, "seconds"}`` (target metrics as fractions).
    """
    from crossreid.data.specs import resolve_dataset

    started = time.perf_counter()
    recipe = recipe or (QUICK_RECIPE if quick else DEFAULT_RECIPE)
    output = Path(output)
    datasets = {d: resolve_dataset(recipe.spec(d, seed), progress=progress) for d in "AB"}
    rows: dict[str, dict[str, Any]] = {}
    variants: list[tuple[str, dict[str, Any]]] = [("full", {})]
    terms = ABLATION_TERMS if weights is None else weights
    variants += [(f"{w}=0", {w: 0.0}) for w in terms if float(recipe.train.get(w, 1.0)) > 0]
    for name, overrides in variants:
        log(f"ablation: adapted with {name} ...")
        try:
            run = _train_and_evaluate(
                recipe,
                "adapt",
                seed,
                output / name.replace("=", "_"),
                datasets,
                progress,
                **overrides,
            )
        except ConfigError as err:
            # e.g. w_cls=0 when no other term supervises the identity encoder.
            log(f"{name}: skipped, not a valid training configuration ({err})")
            continue
        rows[name] = _clean(run)
        log(f"{name}: target mAP {run['mAP']:.1%}")
    results = {"seed": seed, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def format_ablation_table(results: dict[str, Any]) -> str:
    """The ablation table: target metrics (%) of the adapted model per zeroed loss weight."""
    header = f"{'adapted, loss removed':<24}{'rank-1':>8}{'rank-5':>8}{'mAP':>8}{'mINP':>8}"
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


def recipe_replace(recipe: DemoRecipe, **train_overrides: Any) -> DemoRecipe:
    """A copy of ``recipe`` with some training settings changed."""
    return dataclasses.replace(recipe, train={**recipe.train, **train_overrides})
