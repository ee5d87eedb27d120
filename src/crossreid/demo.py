"""The synthetic cross-domain demo behind ``crossreid demo`` and ``make demo``.

It shows what crossreid is for, on a machine with no dataset and no GPU:

1. two synthetic camera domains are generated (cached) through ``synthetic:`` specs:
   **A** (the labelled source: daylight, neutral colours) and **B** (the unlabelled target:
   dim indoor/night cameras with colour casts, blur and noise);
2. the same small network is trained three times from scratch:

   * ``source_only`` — on A with the source losses only (no target batches, no MMD);
   * ``adapted`` — the full cross-domain training A → B (B's labels are never read),
     evaluated with camera-wise BatchNorm statistics of B's unlabelled training images;
   * ``oracle`` — supervised on B's training labels, the upper bound;

3. each model is evaluated on B's query/gallery (the target, what the table is about) and on
   A's query/gallery (the source);
4. a table, TensorBoard logs (one folder per run), ``ranked.png`` (the same B queries ranked
   by the source-only and by the adapted model) and a JSON summary are written.

Model selection is honest: every model is the one at the *last* training step (the target
labels are used for evaluation only, never to pick a checkpoint). Every run is
single-threaded (several run side by side), so the numbers do not depend on the CPU count.

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
from crossreid.utils.threads import torch_threads

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
#: What ``--ablate`` switches off in turn: each loss weight, the target colour transfer and
#: the camera-wise BatchNorm statistics at test time.
ABLATION_TERMS = (*LOSS_WEIGHTS, "target_style_prob", "camera_bn")


@dataclass(frozen=True)
class DemoRecipe:
    """Data and training settings of the demo (sized for a 2-core CPU).

    The synthetic domains are generated at ``data_size`` with ``ids`` identities each (half
    train, half test), ``images`` images per identity and ``cameras`` cameras. ``train`` holds
    :class:`~crossreid.training.TrainConfig` fields shared by the three runs, ``adapt``
    those of the adapted run only.
    """

    ids: int = 100
    images: int = 12
    cameras: int = 4
    data_size: tuple[int, int] = (64, 32)
    train: dict[str, Any] = field(default_factory=dict)
    #: Settings of the adapted run only (on top of ``train``): what uses unlabelled target
    #: data outside the training batches, such as camera-wise BatchNorm at test time.
    adapt: dict[str, Any] = field(default_factory=dict)

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

#: The adapted model is evaluated with camera-wise BatchNorm statistics taken from B's
#: unlabelled training images (test-time adaptation to each target camera's colour cast and
#: exposure; measured in the README's demo section). The source-only model must not see
#: target data and the oracle is the plain supervised model, so neither uses it.
_ADAPT_ONLY: dict[str, Any] = {"camera_bn": True}

DEFAULT_RECIPE = DemoRecipe(train={**_COMMON_TRAIN, "max_steps": 250}, adapt=dict(_ADAPT_ONLY))
QUICK_RECIPE = DemoRecipe(
    ids=60, images=10, train={**_COMMON_TRAIN, "max_steps": 80}, adapt=dict(_ADAPT_ONLY)
)


def _train_config(recipe: DemoRecipe, mode: str, seed: int, output: Path, **overrides: Any):
    from crossreid.training import TrainConfig

    values = {**recipe.train, **(recipe.adapt if mode == "adapt" else {}), **overrides}
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
            camera_bn=dataset.train if config.camera_bn else None,
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
    step_callback: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """One training run, evaluated on the target (B) and on the source (A)."""
    from crossreid.training import train

    config = _train_config(recipe, mode, seed, output, **overrides)
    result = train(config, progress=progress, step_callback=step_callback)
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


@dataclass(frozen=True)
class _Job:
    """One training run of the demo or the ablation: results key, label, mode, overrides."""

    key: str
    label: str
    mode: str
    overrides: dict[str, Any] = field(default_factory=dict)


def default_jobs() -> int:
    """Training runs at once: the CPUs this process may use, at most 3."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(3, cpus))


def _worker(recipe: DemoRecipe, seed: int, output: str, job: _Job, queue) -> dict[str, Any]:
    """A job in a worker process: one thread, progress reported through ``queue``."""
    import torch

    from crossreid.data.specs import resolve_dataset

    torch.set_num_threads(1)  # for the life of this worker process
    datasets = {d: resolve_dataset(recipe.spec(d, seed), progress=False) for d in "AB"}
    return _train_and_evaluate(
        recipe,
        job.mode,
        seed,
        Path(output),
        datasets,
        False,
        step_callback=lambda step, total: queue.put((job.key, step, total)),
        **job.overrides,
    )


def _run_jobs(
    recipe: DemoRecipe,
    seed: int,
    output: Path,
    jobs: Sequence[_Job],
    datasets: dict[str, Any],
    *,
    workers: int | None,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any] | BaseException]:
    """Run the training jobs, each on one thread, ``workers`` at a time.

    Every run uses exactly one thread whatever the machine, so its numbers do not depend on
    the CPU count (float sums are split across threads differently, and training from
    scratch amplifies the difference); on a multi-core CPU, single-threaded runs side by
    side are also faster than one run using all cores. With ``workers == 1`` the runs are
    made in this process, one after the other; otherwise in spawned worker processes,
    longest (adaptation) first; ``None`` means :func:`default_jobs`. Returns each job's
    result, or the exception it raised.
    """
    if workers is None:
        workers = default_jobs()
    results: dict[str, dict[str, Any] | BaseException] = {}

    def finished(job: _Job, run: dict[str, Any] | BaseException) -> None:
        results[job.key] = run
        if isinstance(run, BaseException):
            return
        line = (
            f"{job.label}: target mAP {run['mAP']:.1%} rank-1 {run['rank1']:.1%}; "
            f"source mAP {run['source_domain']['mAP']:.1%} ({run['train_seconds']:.0f} s)"
        )
        if bars:  # print above the live progress bars instead of through them
            from tqdm import tqdm

            with tqdm.external_write_mode():
                log(line)
        else:
            log(line)

    bars: dict[str, Any] = {}
    if workers <= 1:
        for job in jobs:
            log(f"training {job.label} ...")
            try:
                with torch_threads(1):
                    run = _train_and_evaluate(
                        recipe,
                        job.mode,
                        seed,
                        output / job.key,
                        datasets,
                        progress,
                        **job.overrides,
                    )
            except ConfigError as err:
                run = err
            finished(job, run)
        return results

    import multiprocessing
    import queue as queue_module
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no forked copy of a threaded parent
    ordered = sorted(jobs, key=lambda job: job.mode != "adapt")
    log(f"training {len(jobs)} models, {workers} at a time (one thread each) ...")
    if progress:
        from tqdm.auto import tqdm

        bars = {
            job.key: tqdm(
                total=int({**recipe.train, **job.overrides}["max_steps"]),
                desc=f"{job.label:<20}",
                position=i,
                leave=True,
                dynamic_ncols=True,
                unit="step",
            )
            for i, job in enumerate(ordered)
        }
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
        updates = manager.Queue()
        futures = {
            pool.submit(_worker, recipe, seed, str(output / job.key), job, updates): job
            for job in ordered
        }
        pending = set(futures)
        started: set[str] = set()
        while pending:
            try:
                key, step, total = updates.get(timeout=0.5)
                if key in bars:
                    if key not in started:  # the clock (and rate) start with the first step
                        started.add(key)
                        bars[key].reset(total=total)
                    bars[key].n = step
                    bars[key].refresh()
            except queue_module.Empty:
                pass
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                job = futures[future]
                error = future.exception()
                finished(job, error if error is not None else future.result())
                if error is not None and not isinstance(error, ConfigError):
                    for other in pending:
                        other.cancel()
                    raise error
    for bar in bars.values():
        bar.close()
    return results


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
    if gap > 0 and gain > gap:
        share = "more than the whole gap: above the oracle"
    elif gap > 0:
        share = f"{gain / gap:.0%} of the gap to the oracle"
    else:
        share = "the oracle is not above source-only"
    return f"adaptation: target mAP {gain * 100:+.1f} points over source-only ({share})"


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
        workers: training runs at once, each on one thread (default :func:`default_jobs`);
            the results do not depend on it.

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

    jobs = [_Job(key, label, mode) for key, (mode, label) in MODEL_LABELS.items()]
    done = _run_jobs(
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
        if isinstance(run, BaseException):
            raise run
        runs[job.key] = run

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
    workers: int | None = None,
) -> dict[str, Any]:
    """The adapted model with each part of the method switched off in turn (plus the full one).

    ``weights`` defaults to :data:`ABLATION_TERMS` (the loss weights, the target colour
    transfer and camera-wise BatchNorm); terms already 0 (off) in the recipe are skipped,
    since switching them off changes nothing. ``workers`` as for :func:`run_demo`.

    Returns ``{"seed", "rows": {"full"|"w_rec=0"|...: {rank1, ..., mAP, mINP,
    source_domain, train_seconds}}, "seconds"}`` (target metrics as fractions).
    """
    from crossreid.data.specs import resolve_dataset

    started = time.perf_counter()
    recipe = recipe or (QUICK_RECIPE if quick else DEFAULT_RECIPE)
    output = Path(output)
    datasets = {d: resolve_dataset(recipe.spec(d, seed), progress=progress) for d in "AB"}
    settings = {**recipe.train, **recipe.adapt}
    jobs = [_Job("full", "full", "adapt")]
    for term in ABLATION_TERMS if weights is None else weights:
        value = settings.get(term, 1.0)
        # Keys name the run folders ("w_mmd_0"), labels the table rows ("w_mmd=0").
        if isinstance(value, bool):
            if value:
                jobs.append(_Job(f"{term}_off", f"{term}=off", "adapt", {term: False}))
        elif float(value) > 0:
            jobs.append(_Job(f"{term}_0", f"{term}=0", "adapt", {term: 0.0}))
    log(f"ablation: the adapted model, then with each of {len(jobs) - 1} parts switched off")
    done = _run_jobs(
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
        elif isinstance(run, BaseException):
            raise run
        else:
            rows[job.label] = _clean(run)
    results = {"seed": seed, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


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


def recipe_replace(recipe: DemoRecipe, **train_overrides: Any) -> DemoRecipe:
    """A copy of ``recipe`` with some training settings changed."""
    return dataclasses.replace(recipe, train={**recipe.train, **train_overrides})
