"""``run_demo`` and ``run_ablation``: generate the domains, train the runs, write the results."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crossreid.data.specs import describe_spec, resolve_dataset
from crossreid.demo import recipe as recipes
from crossreid.demo.jobs import Job, run_jobs
from crossreid.demo.recipe import MODEL_LABELS, STARTS_FROM, DemoRecipe
from crossreid.demo.report import ranked_rows
from crossreid.errors import ClusteringError, ConfigError
from crossreid.retrieval.visualize import render_ranked_rows
from crossreid.training.config import TrainConfig

__all__ = ["run_ablation", "run_demo"]

#: Defaults of the settings an ablation may switch off, for those the recipe does not set.
_CONFIG_DEFAULTS = TrainConfig().to_dict()


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
    workers: int | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the synthetic domains, train the four models and evaluate them.

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
        workers: training runs at once, each on one thread (default :func:`default_jobs`);
            the results do not depend on it.

    Returns:
        ``{"seed", "models": {"source_only"|"adapted"|"oracle"|"pseudo_labels": {rank1,
        rank5, rank10, mAP, mINP, source_domain: {...}, train_seconds, steps}},
        "pseudo_label_runs": {"pseudo_labels_1"|...: {rank1, ..., mINP, seed, train_seconds,
        steps}}, "seconds", "output", "ranked"}``, metrics as fractions on B's query/gallery
        (``source_domain``: on A's). ``pseudo_labels`` is the average of the weights of the
        stage runs in ``pseudo_label_runs`` (absent with ``recipe.pseudo_runs`` 1); its
        ``train_seconds`` is theirs summed.
    """
    started = time.perf_counter()
    recipe = recipe or (recipes.QUICK_RECIPE if quick else recipes.DEFAULT_RECIPE)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    datasets = {}
    for domain in ("A", "B"):
        spec = recipe.spec(domain, seed)
        log(f"domain {domain}: {describe_spec(spec)}")
        datasets[domain] = resolve_dataset(spec, progress=progress)
    log(f"data ready in {time.perf_counter() - started:.0f} s")

    jobs = [
        Job(
            key,
            label,
            mode,
            after=STARTS_FROM.get(key),
            runs=recipe.pseudo_runs if key in STARTS_FROM else 1,
        )
        for key, (mode, label) in MODEL_LABELS.items()
    ]
    done = run_jobs(
        recipe,
        seed,
        output,
        jobs,
        datasets,
        workers=workers,
        progress=progress,
        log=log,
    )
    runs: dict[str, dict[str, Any]] = {}
    for job in jobs:  # in table order
        run = done[job.key]
        if isinstance(run, ClusteringError):  # the stage found no usable clusters: say so
            log(f"{job.label}: no row, the pseudo-label stage stopped ({run})")
        elif isinstance(run, BaseException):
            raise run
        else:
            runs[job.key] = run
    # The pseudo-label model's runs, before their weights were averaged (target metrics).
    stage_runs = runs.get("pseudo_labels", {}).pop("_runs", None)

    metric = recipe.train.get("dist_metric", "cosine")
    keys = tuple(k for k in ("source_only", "adapted", "pseudo_labels") if k in runs)
    rows = ranked_rows(runs, datasets["B"], keys, num_queries, 10, seed, metric)
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
        **({"pseudo_label_runs": stage_runs} if stage_runs else {}),
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
    workers: int | None = None,
) -> dict[str, Any]:
    """The adapted model with each part of the method switched off in turn (plus the full one,
    and the pseudo-label stage trained from the full one).

    ``weights`` defaults to :data:`ABLATION_TERMS` (the loss weights, the target colour
    transfer and camera-wise BatchNorm); terms already 0 (off) in the recipe are skipped,
    since switching them off changes nothing. ``workers`` as for :func:`run_demo`.

    Returns ``{"seed", "rows": {"full"|"w_rec=0"|...: {rank1, ..., mAP, mINP,
    source_domain, train_seconds}}, "seconds"}`` (target metrics as fractions).
    """
    started = time.perf_counter()
    recipe = recipe or (recipes.QUICK_RECIPE if quick else recipes.DEFAULT_RECIPE)
    output = Path(output)
    datasets = {d: resolve_dataset(recipe.spec(d, seed), progress=progress) for d in "AB"}
    settings = {**recipe.train, **recipe.adapt}
    jobs = [Job("full", "full", "adapt")]
    for term in recipes.ABLATION_TERMS if weights is None else weights:
        value = settings.get(term, _CONFIG_DEFAULTS[term])
        # Keys name the run folders ("w_mmd_0"), labels the table rows ("w_mmd=0").
        if isinstance(value, bool):
            if value:
                jobs.append(Job(f"{term}_off", f"{term}=off", "adapt", {term: False}))
        elif float(value) > 0:
            jobs.append(Job(f"{term}_0", f"{term}=0", "adapt", {term: 0.0}))
    parts = len(jobs) - 1
    # The pseudo-label stage on top of the full adapted model: what the second stage adds.
    jobs.append(
        Job("pseudo_labels", "full + pseudo-labels", "adapt", after="full", runs=recipe.pseudo_runs)
    )
    log(f"ablation: the adapted model, then with each of {parts} parts switched off")
    done = run_jobs(
        recipe,
        seed,
        output,
        jobs,
        datasets,
        workers=workers,
        progress=progress,
        log=log,
    )
    rows: dict[str, dict[str, Any]] = {}
    for job in jobs:
        run = done[job.key]
        if isinstance(run, ConfigError):
            # e.g. w_cls=0 when no other term supervises the identity encoder.
            log(f"{job.label}: skipped, not a valid training configuration ({run})")
        elif isinstance(run, ClusteringError):
            log(f"{job.label}: no row, the pseudo-label stage stopped ({run})")
        elif isinstance(run, BaseException):
            raise run
        else:
            rows[job.label] = _clean(run)
    results = {"seed": seed, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
