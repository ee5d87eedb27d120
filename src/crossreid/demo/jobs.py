"""The demo's training runs: each on one thread, several side by side in worker processes.

Every run uses exactly one thread whatever the machine, so its numbers do not depend on the
CPU count (float sums are split across threads differently, and training from scratch
amplifies the difference); single-threaded runs side by side are also faster on a small CPU
than one run using all cores.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from crossreid.data.specs import resolve_dataset
from crossreid.demo.recipe import METRICS, STAGE_SEED_STRIDE, DemoRecipe, train_config
from crossreid.errors import ClusteringError, ConfigError
from crossreid.evaluation.pipeline import evaluate_model
from crossreid.models.checkpoint import load_checkpoint, save_checkpoint
from crossreid.models.soup import soup_checkpoint
from crossreid.training.config import TrainConfig
from crossreid.training.trainer import train
from crossreid.utils.parallel import usable_cpus
from crossreid.utils.threads import torch_threads

__all__ = ["Job", "default_jobs", "run_jobs"]


def _evaluate(model, dataset, config: TrainConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of ``model`` on ``dataset``'s query/gallery plus the features used."""
    evaluation = evaluate_model(
        model,
        dataset.query,
        dataset.gallery,
        image_size=config.image_size,
        metric=config.dist_metric,
        max_rank=50,
        camera_bn=dataset.train if config.camera_bn else None,
        split_across_ranks=False,
        batch_size=config.eval_batch_size,
        device=config.device,
        flip=False,
        workers=0,
        channels_last=False,
        engine=config.engine,
    )
    metrics = {key: value for key, value in evaluation.metrics.items() if key in METRICS}
    return metrics, evaluation.arrays


def _train_and_evaluate(
    recipe: DemoRecipe,
    job: Job,
    seed: int,
    output: Path,
    datasets: dict[str, Any],
    progress: bool,
    step_callback: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """One training run (in ``output / job.key``), evaluated on the target (B) and on the
    source (A)."""
    config = _job_config(recipe, job, seed, output)
    result = train(config, progress=progress, step_callback=step_callback)
    if job.soup_member:  # evaluated as part of the average (and on the target, for the log)
        target_metrics, _ = _evaluate(result.model, datasets["B"], config)
        return {
            **target_metrics,
            "seed": config.seed,
            "train_seconds": round(result.seconds, 1),
            "steps": result.steps,
        }
    return _evaluated_run(result.model, datasets, config, result.seconds, result.steps)


def _job_config(recipe: DemoRecipe, job: Job, seed: int, output: Path) -> TrainConfig:
    """The configuration of ``job``'s run, in ``output / job.key`` (started from
    ``output / job.after`` when it follows another run)."""
    init_from = output / job.after if job.after else None
    return train_config(recipe, job.mode, seed, output / job.key, init_from, **job.overrides)


def _evaluated_run(
    model, datasets: dict[str, Any], config: TrainConfig, seconds: float, steps: int
) -> dict[str, Any]:
    """The result of a model: its metrics on the target (B) and on the source (A)."""
    target_metrics, target_features = _evaluate(model, datasets["B"], config)
    source_metrics, _ = _evaluate(model, datasets["A"], config)
    return {
        **target_metrics,
        "source_domain": source_metrics,
        "train_seconds": round(seconds, 1),
        "steps": steps,
        "_features": target_features,
    }


def _soup_and_evaluate(
    recipe: DemoRecipe,
    job: Job,
    members: list[Job],
    runs: dict[str, Any],
    seed: int,
    output: Path,
    datasets: dict[str, Any],
) -> dict[str, Any]:
    """The average of the weights of ``members``' runs (:mod:`crossreid.models.soup`),
    written to ``output / job.key`` and evaluated (one thread); its runs' target metrics
    under ``_runs``."""
    payload = soup_checkpoint([output / member.key for member in members])
    model = load_checkpoint(save_checkpoint(output / job.key / "checkpoints" / "last.pt", payload))
    config = _job_config(recipe, job, seed, output)
    done = [runs[member.key] for member in members]
    with torch_threads(1):
        result = _evaluated_run(
            model, datasets, config, sum(r["train_seconds"] for r in done), done[0]["steps"]
        )
    return {**result, "_runs": {member.key: runs[member.key] for member in members}}


@dataclass(frozen=True)
class Job:
    """One training run of the demo or the ablation: results key (its run folder), label,
    mode, setting overrides and, for the pseudo-label stage, the key of the run it starts
    from (``after``: it is trained once that run has finished)."""

    key: str
    label: str
    mode: str
    overrides: dict[str, Any] = field(default_factory=dict)
    after: str | None = None
    #: Train this many runs (run i seeded ``seed + STAGE_SEED_STRIDE * (i - 1)``) and
    #: average their weights: the job's model (:mod:`crossreid.models.soup`).
    runs: int = 1
    #: A run to be averaged: evaluated on the target only.
    soup_member: bool = False

    def members(self, seed: int) -> list[Job]:
        """The runs this job averages (``[self]`` for a single run)."""
        if self.runs <= 1:
            return [self]
        return [
            dataclasses.replace(
                self,
                key=f"{self.key}_{i}",
                label=f"{self.label} run {i}",
                overrides={**self.overrides, "seed": seed + STAGE_SEED_STRIDE * (i - 1)},
                runs=1,
                soup_member=True,
            )
            for i in range(1, self.runs + 1)
        ]

    def max_steps(self, recipe: DemoRecipe) -> int:
        stage = recipe.pseudo if self.after else {}
        return int({**recipe.train, **stage, **self.overrides}["max_steps"])


def default_jobs() -> int:
    """Training runs at once: the CPUs this process may use, at most 3."""
    return max(1, min(3, usable_cpus()))


def _worker(recipe: DemoRecipe, seed: int, output: str, job: Job, queue) -> dict[str, Any]:
    """A job in a worker process: one thread, progress reported through ``queue``."""
    torch.set_num_threads(1)  # for the life of this worker process
    datasets = {d: resolve_dataset(recipe.spec(d, seed), progress=False) for d in "AB"}
    return _train_and_evaluate(
        recipe,
        job,
        seed,
        Path(output),
        datasets,
        False,
        step_callback=lambda step, total: queue.put((job.key, step, total)),
    )


class _Results:
    """Each job's result (or the exception it raised), with a line logged per finished run
    (above the live progress bars, when there are any)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.runs: dict[str, dict[str, Any] | BaseException] = {}
        self.bars: dict[str, Any] = {}

    def finished(self, job: Job, run: dict[str, Any] | BaseException) -> None:
        self.runs[job.key] = run
        if isinstance(run, BaseException):
            return
        source = f"; source mAP {run['source_domain']['mAP']:.1%}" if "source_domain" in run else ""
        line = (
            f"{job.label}: target mAP {run['mAP']:.1%} rank-1 {run['rank1']:.1%}{source} "
            f"({run['train_seconds']:.0f} s)"
        )
        if self.bars:
            with tqdm.external_write_mode():
                self.log(line)
        else:
            self.log(line)


def run_jobs(
    recipe: DemoRecipe,
    seed: int,
    output: Path,
    jobs: Sequence[Job],
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
    longest (adaptation) first; ``None`` means :func:`default_jobs`. A job with ``runs``
    above 1 is trained as that many runs (keys ``<key>_1`` ...), side by side like the
    others, and its result is the average of their weights, evaluated once they have all
    finished. Returns each job's (and each such run's) result, or the exception it raised
    (:class:`ConfigError` and :class:`ClusteringError` only; others are raised).
    """
    if workers is None:
        workers = default_jobs()
    results = _Results(log)
    groups = {job.key: job.members(seed) for job in jobs if job.runs > 1}
    trained = [member for job in jobs for member in groups.get(job.key, [job])]
    if workers <= 1:
        for job in trained:
            log(f"training {job.label} ...")
            try:
                if isinstance(results.runs.get(job.after), BaseException):
                    raise results.runs[job.after]
                with torch_threads(1):
                    run = _train_and_evaluate(recipe, job, seed, output, datasets, progress)
            except (ConfigError, ClusteringError) as err:
                run = err
            results.finished(job, run)
    else:
        _run_in_workers(recipe, seed, output, trained, workers, progress, results)
    for job in jobs:
        members = groups.get(job.key)
        if members is None:
            continue
        failed = [
            results.runs[m.key] for m in members if isinstance(results.runs[m.key], Exception)
        ]
        if failed:
            results.finished(job, failed[0])
            continue
        log(f"averaging the weights of {len(members)} runs: {job.label} ...")
        soup = _soup_and_evaluate(recipe, job, members, results.runs, seed, output, datasets)
        results.finished(job, soup)
    return results.runs


def _run_in_workers(
    recipe: DemoRecipe,
    seed: int,
    output: Path,
    jobs: Sequence[Job],
    workers: int,
    progress: bool,
    results: _Results,
) -> None:
    """The jobs in spawned single-threaded worker processes, with one progress bar each."""
    context = multiprocessing.get_context("spawn")  # no forked copy of a threaded parent
    ordered = sorted(jobs, key=lambda job: job.mode != "adapt")
    results.log(f"training {len(jobs)} models, {workers} at a time (one thread each) ...")
    if progress:
        results.bars = {
            job.key: tqdm(
                total=job.max_steps(recipe),
                desc=f"{job.label:<20}",
                position=i,
                leave=True,
                dynamic_ncols=True,
                unit="step",
            )
            for i, job in enumerate(ordered)
        }
    bars = results.bars
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
        updates = manager.Queue()

        def submit(job: Job):
            return pool.submit(_worker, recipe, seed, str(output), job, updates)

        futures = {submit(job): job for job in ordered if job.after is None}
        waiting = [job for job in ordered if job.after is not None]
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
                job, error = futures[future], future.exception()
                results.finished(job, error if error is not None else future.result())
                if error is not None and not isinstance(error, ConfigError | ClusteringError):
                    for other in pending:
                        other.cancel()
                    raise error
                for follower in [j for j in waiting if j.after == job.key]:
                    waiting.remove(follower)
                    if error is not None:  # nothing to start from
                        results.finished(follower, error)
                    else:
                        started_future = submit(follower)
                        futures[started_future] = follower
                        pending.add(started_future)
    for bar in bars.values():
        bar.close()
