"""Training methods: what one step of the loop does, and the data it draws.

A method is built by :func:`build_method` from :data:`METHODS` (``TrainConfig.method``) and
offers the loop five things: ``steps_per_epoch`` (for ``epochs``), ``prepare`` (attach the
optimiser, schedule and AMP scaler), ``start`` (the data streams from a step), ``step``
(one training step, returning a :class:`~crossreid.training.step.StepOutput`) and
``state_dict`` / ``load_state_dict`` (what a checkpoint must hold besides the weights and
optimiser to resume exactly mid-run).

* :class:`ArnMethod` — the ARN stage: PK source batches plus unlabelled target batches,
  :class:`~crossreid.training.step.TrainingStep`;
* :class:`~crossreid.training.cluster.ClusterMethod` — the pseudo-label stage.

Adding a method: a class with those members, one entry in :data:`METHODS`, its name in
:data:`crossreid.training.terms.METHODS` and its loss terms in ``terms.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from crossreid.data.loaders import build_target_loader, infinite_batches
from crossreid.training.cluster import ClusterMethod
from crossreid.training.config import TrainConfig
from crossreid.training.data import TrainingData, labelled_source_loader, loader_options
from crossreid.training.step import StepOutput, TrainingStep
from crossreid.utils.distributed import DistInfo

__all__ = ["METHODS", "ArnMethod", "build_method"]


class ArnMethod:
    """The ARN stage: a PK source batch (and an unlabelled target batch) per step."""

    def __init__(
        self,
        config: TrainConfig,
        data: TrainingData,
        model: nn.Module,
        device: torch.device,
        dist: DistInfo,
    ) -> None:
        self.config, self.model, self.device, self.dist = config, model, device, dist
        options = loader_options(config, dist)
        self.source_loader = labelled_source_loader(config, data, dist)
        self.use_target = data.target_records is not None and config.uses_target_batches
        self.target_loader = None
        if self.use_target:
            self.target_loader = build_target_loader(
                data.target_records, config.image_size, config.effective_target_batch_size,
                **options,
            )  # fmt: skip
        self.steps_per_epoch = len(self.source_loader)
        self.step_fn: TrainingStep | None = None
        self._source: Iterator | None = None
        self._target: Iterator | None = None

    def prepare(
        self,
        config: TrainConfig,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        self.config = config
        self.step_fn = TrainingStep(
            self.model, optimizer, scheduler, config, self.device,
            dist_info=self.dist, scaler=scaler, use_target=self.use_target,
        )  # fmt: skip

    def start(self, start_step: int) -> None:
        self._source = infinite_batches(self.source_loader, start_step=start_step)
        if self.target_loader is not None:
            self._target = infinite_batches(self.target_loader, start_step=start_step)

    def step(self, state: Any, keep_images: bool) -> StepOutput:
        source_images, pids, _, _ = next(self._source)
        target_images = next(self._target)[0] if self._target is not None else None
        return self.step_fn(state.step, source_images, pids, target_images, keep_images=keep_images)

    def state_dict(self) -> dict[str, Any]:
        return {}  # the data streams are a function of (seed, step)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


#: The training methods by name (``TrainConfig.method``).
METHODS = {"arn": ArnMethod, "cluster": ClusterMethod}


def build_method(
    config: TrainConfig,
    data: TrainingData,
    model: nn.Module,
    device: torch.device,
    dist: DistInfo,
) -> ArnMethod | ClusterMethod:
    """The method object of ``config.method`` (its loaders built, no optimiser yet)."""
    return METHODS[config.method](config, data, model, device, dist)
