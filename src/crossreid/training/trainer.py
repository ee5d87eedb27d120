"""The training loop: :func:`train` runs a :class:`TrainConfig` to a finished run.

It reads like a list of named steps sharing one :class:`RunState`:

1. :func:`build_run` — data, model (``init_from``), loaders, optimiser, schedule, the step;
2. :func:`restore_run` — with ``resume``, weights, optimiser, schedule, best metrics and
   random state from ``checkpoints/last.pt``;
3. :func:`run_loop` — for each step: draw the batches, run the method's step
   (:class:`~crossreid.training.step.TrainingStep`), log; every ``eval_every`` /
   ``save_every`` steps :func:`evaluate_and_save`.

Reproducibility: the data stream is a function of ``(seed, step)``
(:func:`crossreid.data.loaders.infinite_batches`), and every step reseeds the random
state it uses, so on CPU a run resumed at step N continues bit for bit as the
uninterrupted run would have.

Example::

    >>> from crossreid.training import TrainConfig, train
    >>> result = train(TrainConfig(source="synthetic:A", target="synthetic:B",
    ...                            backbone="resnet18", pretrained="none",
    ...                            image_size=(128, 64), max_steps=2000))   # doctest: +SKIP
    >>> result.best_metrics["mAP"]                                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from crossreid.errors import CheckpointError, TrainingError, TrainingInterrupted
from crossreid.evaluation.pipeline import evaluate_model
from crossreid.inference.engine import check_engine
from crossreid.models import CrossDomainReID
from crossreid.models.checkpoint import (
    build_checkpoint,
    find_checkpoint,
    link_checkpoint,
    load_model_state,
    load_partial,
    read_checkpoint,
    save_checkpoint,
)
from crossreid.training.cluster import ClusterMethod
from crossreid.training.config import TrainConfig, build_config, load_config_file
from crossreid.training.data import TrainingData, load_training_data
from crossreid.training.methods import ArnMethod, build_method
from crossreid.training.optim import build_optimizer, freeze_unused_parts
from crossreid.training.preemption import stop_requests
from crossreid.training.rng import capture_rng, restore_rng
from crossreid.training.run_logger import RunLogger
from crossreid.training.schedule import LRSchedule, build_scheduler
from crossreid.utils.devices import resolve_device
from crossreid.utils.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from crossreid.utils.io import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["RunState", "TrainResult", "config_from_checkpoint", "run_config", "train"]


@dataclass
class TrainResult:
    """What a finished run produced.

    ``final_metrics`` / ``best_metrics``: ``rank1, rank5, rank10, rank20, mAP, mINP``
    (fractions) at the last step and at the best evaluation by mAP; ``final_cmc`` the final
    CMC curve; ``history`` one dict of loss values per step run by this call (rank 0's).
    ``model`` is the trained network (eval mode, on the training device).
    """

    config: TrainConfig
    output: Path
    steps: int
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    best_step: int
    final_cmc: list[float]
    metrics_path: Path
    last_checkpoint: Path
    best_checkpoint: Path
    seconds: float
    model: nn.Module | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class _LossWindow:
    """Running sums of the loss values between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, losses: dict[str, float]) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.count for key in sorted(self.sums)}


@dataclass
class RunState:
    """Everything the named steps of a run share (instead of closures over locals)."""

    config: TrainConfig
    dist: DistInfo
    device: torch.device
    data: TrainingData
    model: CrossDomainReID
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    method: ArnMethod | ClusterMethod
    started: float
    step: int = 0
    start_step: int = 0
    resumed: bool = False
    best_map: float = -1.0
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    final_cmc: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    loss_window: _LossWindow = field(default_factory=_LossWindow)
    run_logger: RunLogger | None = None
    bar: Any = None

    @property
    def output(self) -> Path:
        return Path(self.config.output)

    @property
    def last_path(self) -> Path:
        return self.output / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.output / "checkpoints" / "best.pt"


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    step_callback: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Run (or resume) the training described by ``config``; see the module docstring.

    ``step_callback(step, max_steps)``, when given, is called after every training step
    (e.g. to report progress from a worker process).

    Writes under ``config.output``: ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``,
    ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (rank 0 only under ``torchrun``).

    Raises:
        ConfigError: invalid options or an unavailable device.
        DatasetError: unknown/missing datasets, fewer than 2 source identities.
        CheckpointError: an unreadable ``resume``/``init_from`` checkpoint or one of another
            architecture (the message names the mismatched keys).
        TrainingError: the loss became NaN/inf; the message gives the step, and the last
            good ``checkpoints/last.pt`` is left intact.
    """
    config.validate()
    started = time.perf_counter()
    probe = resolve_device(config.device)  # fail fast on a missing GPU, before joining a group
    dist_info = setup_distributed(probe.type)
    try:
        state = build_run(config, dist_info, progress=progress, started=started)
        run_loop(state, progress=progress, step_callback=step_callback)
        return _result(state)
    finally:
        cleanup_distributed(dist_info)


# ---------------------------------------------------------------------------------------------
# Build and restore
# ---------------------------------------------------------------------------------------------


def build_run(
    config: TrainConfig, dist_info: DistInfo, *, progress: bool, started: float
) -> RunState:
    """Data, model, loaders, optimiser, schedule and step of a run, restored when resuming."""
    device = resolve_device(config.device, dist_info.local_rank)
    check_engine(config.engine)
    amp = config.amp
    if amp and device.type != "cuda":
        warnings.warn("--amp needs CUDA; training in float32 on CPU", stacklevel=3)
        amp = False
    data = load_training_data(config, progress and dist_info.is_main)
    resume = _read_checkpoint_option(config.resume, prefer_best=False)
    init = _read_checkpoint_option(config.init_from, prefer_best=True)
    model = _build_model(config, data, resume, init).to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    freeze_unused_parts(model, config)  # before the optimiser, which takes trainable ones only
    method = build_method(config, data, model, device, dist_info)
    if config.epochs is not None:
        # Recorded in config.yaml and the checkpoints, so a resume continues the same schedule.
        max_steps = max(1, math.ceil(config.epochs * method.steps_per_epoch))
        config = dataclasses.replace(config, max_steps=max_steps)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, _schedule(config))
    scaler = torch.amp.GradScaler("cuda") if amp else None
    method.prepare(config, optimizer, scheduler, scaler)
    state = RunState(
        config, dist_info, device, data, model, optimizer, scheduler, scaler, method, started
    )
    if resume is not None:
        restore_run(state, *resume)
    return state


def _read_checkpoint_option(
    option: str | None, *, prefer_best: bool
) -> tuple[dict[str, Any], Path] | None:
    """``(checkpoint, path)`` of a ``resume`` / ``init_from`` option, or ``None``."""
    if not option:
        return None
    path = find_checkpoint(option, prefer_best=prefer_best)
    return read_checkpoint(path), path


def _build_model(
    config: TrainConfig,
    data: TrainingData,
    resume: tuple[dict[str, Any], Path] | None,
    init: tuple[dict[str, Any], Path] | None,
) -> CrossDomainReID:
    torch.manual_seed(config.seed)  # initialisation of the new layers
    from_checkpoint = resume is not None or init is not None
    pretrained = (
        None if from_checkpoint or config.pretrained.lower() == "none" else config.pretrained
    )
    model = CrossDomainReID(
        backbone=config.backbone,
        num_classes=data.num_classes,
        pretrained=pretrained,
        image_size=config.image_size,
        dropout=config.dropout,
        normalize_features=config.normalize_features,
        pooling=config.pooling,
        **({"decoder_widths": config.decoder_widths} if config.decoder_widths else {}),
    )
    if resume is not None:
        load_model_state(model, resume[0]["model"], source=f"checkpoint {resume[1]}")
    elif init is not None:
        loaded, skipped = load_partial(model, init[0]["model"])
        logger.info(
            "init-from %s: loaded %d tensors, skipped %d", init[1], len(loaded), len(skipped)
        )
    return model


def _schedule(config: TrainConfig) -> LRSchedule:
    return LRSchedule(
        max_steps=config.max_steps,
        warmup_steps=config.warmup_steps,
        kind=config.schedule,
        milestones=config.milestones,
        gamma=config.gamma,
        restart_every=config.restart_every,
    )


def restore_run(state: RunState, checkpoint: dict[str, Any], path: Path) -> None:
    """Optimiser, schedule, AMP scaler, step, best metrics and random state of a resumed run."""
    if "soup" in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} is an average of {len(checkpoint['soup'])} runs' weights "
            "(crossreid soup): it holds no training state to resume; start a run from it "
            "with --init-from"
        )
    try:
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        state.scheduler.load_state_dict(checkpoint["scheduler"])
        if state.scaler is not None and checkpoint.get("scaler"):
            state.scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: optimiser/scheduler state does not fit this "
            f"configuration ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    state.start_step = state.step = int(checkpoint["step"])
    state.resumed = True
    state.best_map = float(checkpoint.get("best_mAP", -1.0))
    state.best_step = int(checkpoint.get("best_step", 0))
    state.best_metrics = dict(checkpoint.get("best_metrics", {}))
    state.method.load_state_dict(checkpoint.get("method_state", {}))
    if "rng" in checkpoint:
        restore_rng(checkpoint["rng"])
    logger.info("resumed %s at step %d", path, state.start_step)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def run_loop(
    state: RunState,
    *,
    progress: bool = True,
    step_callback: Callable[[int, int], None] | None = None,
) -> None:
    """Train from ``state.step`` to ``max_steps``: step, log, evaluate and save."""
    config, is_main = state.config, state.dist.is_main
    state.run_logger = RunLogger(
        state.output, enabled=is_main, resume_step=state.start_step if state.resumed else None
    )
    if is_main:
        write_text_atomic(
            state.output / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False)
        )
    if progress and is_main:
        state.bar = tqdm(
            total=config.max_steps,
            initial=state.start_step,
            desc=f"train {config.mode}",
            dynamic_ncols=True,
            leave=True,
        )
    state.method.start(state.start_step)
    state.model.train()
    try:
        with stop_requests() as stop:
            while state.step < config.max_steps:
                _one_step(state)
                if step_callback is not None:
                    step_callback(state.step, config.max_steps)
                evaluate = state.step % config.eval_every == 0 or state.step == config.max_steps
                save = (
                    state.step % config.effective_save_every == 0 or state.step == config.max_steps
                )
                if evaluate or save:
                    evaluate_and_save(state, evaluate=evaluate, save=save)
                if stop.agreed(state.dist, state.device):
                    _stop(state, stop.signal, saved=save)
            if not state.final_metrics and is_main:  # resumed at or past max_steps: evaluate
                evaluate_and_save(state, evaluate=True, save=not state.last_path.is_file())
    except KeyboardInterrupt:  # outside the main thread no handler catches Ctrl-C
        if is_main and state.step > state.start_step:
            save_checkpoint(state.last_path, checkpoint_payload(state))
            logger.warning("interrupted: saved %s at step %d", state.last_path, state.step)
        raise
    finally:
        if state.bar is not None:
            state.bar.close()
        state.run_logger.close()


def _stop(state: RunState, received: signal.Signals, *, saved: bool) -> None:
    """After a stop signal: ``last.pt`` of the step just finished, then
    :class:`TrainingInterrupted` saying how to resume (exit code 128 + the signal)."""
    if state.dist.is_main and not saved:
        save_checkpoint(state.last_path, checkpoint_payload(state))
    barrier(state.dist)
    raise TrainingInterrupted(
        f"stopped by {received.name} after step {state.step} of {state.config.max_steps}; "
        f"saved {state.last_path}; continue with: crossreid train --resume {state.output}",
        exit_code=128 + int(received),
    )


def _one_step(state: RunState) -> None:
    """Run the method's training step, update progress and logs."""
    config = state.config
    keep_images = state.dist.is_main and (state.step + 1) % config.image_every == 0
    try:
        out = state.method.step(state, keep_images)
    except TrainingError as exc:
        last = state.last_path
        kept = (
            f"last good checkpoint {last} (step {_checkpoint_step(last)})"
            if last.is_file()
            else "no checkpoint had been written yet"
        )
        raise TrainingError(f"{exc}; training stopped, {kept}") from None
    state.step += 1
    state.history.append(out.losses)
    state.loss_window.add(out.losses)
    if state.bar is not None:
        state.bar.update(1)
        state.bar.set_postfix({k: f"{v:.3f}" for k, v in out.losses.items()}, refresh=False)
    if state.step % config.log_every == 0 or state.step == config.max_steps:
        _log_losses(state, state.loss_window.means(), out.grad_norm)
        state.loss_window = _LossWindow()
    if out.images:
        state.run_logger.images(state.step, out.images)


def _log_losses(state: RunState, means: dict[str, float], grad_norm: float) -> None:
    names = list(means)
    values = torch.tensor([means[k] for k in names], dtype=torch.float64)
    values = all_reduce_mean(values.to(state.device), state.dist).cpu().tolist()
    step, log = state.step, state.run_logger
    log.scalars(step, dict(zip(names, values, strict=True)), prefix="loss/")
    log.scalars(step, {"grad_norm": grad_norm}, prefix="train/")
    groups = state.optimizer.param_groups
    log.scalars(step, {g.get("name", str(i)): g["lr"] for i, g in enumerate(groups)}, prefix="lr/")


# ---------------------------------------------------------------------------------------------
# Evaluate and save
# ---------------------------------------------------------------------------------------------


def evaluate_and_save(state: RunState, *, evaluate: bool, save: bool) -> None:
    """On rank 0: evaluate on the target query/gallery, write ``last.pt`` (and ``best.pt`` on
    a new best mAP); every rank then meets at a barrier."""
    if state.dist.is_main:
        improved = _evaluate(state) if evaluate else False
        if save or improved:
            save_checkpoint(state.last_path, checkpoint_payload(state))
            if improved:
                link_checkpoint(state.last_path, state.best_path)  # one file, two names
    barrier(state.dist)


def _evaluate(state: RunState) -> bool:
    """Evaluate the model; True when its mAP is a new best."""
    config, data = state.config, state.data
    evaluation = evaluate_model(
        state.model,
        data.eval_query,
        data.eval_gallery,
        image_size=config.image_size,
        metric=config.dist_metric,
        max_rank=config.max_rank,
        camera_bn=data.eval_train if config.camera_bn else None,
        split_across_ranks=False,  # the other ranks wait at the barrier
        batch_size=config.eval_batch_size,
        workers=config.workers,
        device=state.device,
        channels_last=config.channels_last,
        flip=False,
        engine=config.engine,
    )
    metrics = evaluation.metrics
    state.final_metrics, state.final_cmc = metrics, evaluation.cmc
    state.run_logger.evaluation(state.step, metrics)
    improved = metrics["mAP"] > state.best_map
    if improved:
        state.best_map, state.best_step, state.best_metrics = metrics["mAP"], state.step, metrics
    if state.bar is not None:
        state.bar.write(
            f"step {state.step}: {data.eval_name} rank-1 {metrics['rank1']:.1%} "
            f"mAP {metrics['mAP']:.1%} (best {state.best_map:.1%} at step {state.best_step})"
        )
    return improved


def checkpoint_payload(state: RunState) -> dict[str, Any]:
    """The ``last.pt`` of the run at its current step (weights, optimiser, schedule, RNG,
    best metrics, configuration)."""
    return build_checkpoint(
        state.model,
        step=state.step,
        config={"num_classes": state.data.num_classes},
        optimizer=state.optimizer.state_dict(),
        scheduler=state.scheduler.state_dict(),
        scaler=state.scaler.state_dict() if state.scaler is not None else {},
        rng=capture_rng(),
        best_mAP=state.best_map,
        best_step=state.best_step,
        best_metrics=state.best_metrics,
        train_config=state.config.to_dict(),
        method_state=state.method.state_dict(),
    )


def _checkpoint_step(path: Path) -> int | str:
    try:
        return int(read_checkpoint(path)["step"])
    except Exception:  # only used to enrich an error message
        return "?"


def _result(state: RunState) -> TrainResult:
    state.model.eval()
    return TrainResult(
        config=state.config,
        output=state.output,
        steps=state.step,
        final_metrics=state.final_metrics,
        best_metrics=state.best_metrics,
        best_step=state.best_step,
        final_cmc=state.final_cmc,
        metrics_path=state.run_logger.metrics_path,
        last_checkpoint=state.last_path,
        best_checkpoint=state.best_path,
        seconds=time.perf_counter() - state.started,
        model=state.model,
        history=state.history,
    )


def config_from_checkpoint(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` stored in a run's checkpoint (to resume it with few flags)."""
    checkpoint = read_checkpoint(find_checkpoint(path))
    stored = checkpoint.get("train_config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"checkpoint {path} holds no training configuration")
    return TrainConfig.from_dict(stored, origin=f"checkpoint {path}")


def run_config(options: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """The configuration of a run from options (e.g. command-line flags): defaults < the run
    being resumed < YAML ``config_file`` < ``options``; validated."""
    values: dict[str, Any] = {}
    resume = options.get("resume")
    if resume is None and config_file is not None:
        resume = load_config_file(config_file).get("resume")
    if resume:
        stored = config_from_checkpoint(resume).to_dict()
        stored.pop("init_from", None)
        values.update(stored)
        # A moved run folder: continue writing where the checkpoint now lives.
        checkpoint = find_checkpoint(resume)
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
        if run_dir is not None:
            values["output"] = str(run_dir)
    if config_file is not None:
        values.update(load_config_file(config_file))
    values.update(options)
    return build_config(overrides=values)
