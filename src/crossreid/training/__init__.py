"""Training: the configuration, the loss terms, one training step, the loop, logging.

* :mod:`~crossreid.training.config` — :class:`TrainConfig` (plain data, YAML, validation);
* :mod:`~crossreid.training.terms` — the loss terms, declared once;
* :mod:`~crossreid.training.step` — one step: forward, losses, backward, update;
* :mod:`~crossreid.training.trainer` — :func:`train`: build, restore, loop, evaluate and save;
* :mod:`~crossreid.training.data`, ``optim``, ``rng``, ``schedule``, ``run_logger`` — the
  run's splits, optimiser, random state, learning-rate schedule and logs.

Example::

    >>> from crossreid.training import TrainConfig, train
    >>> config = TrainConfig(source="synthetic:A", target="synthetic:B", backbone="resnet18",
    ...                      pretrained="none", image_size=(128, 64), max_steps=500)
    >>> result = train(config)                           # doctest: +SKIP
    >>> result.best_metrics["mAP"], result.best_checkpoint  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crossreid.training.config import MODES, TrainConfig, build_config, load_config_file

if TYPE_CHECKING:
    from crossreid.training.trainer import TrainResult, config_from_checkpoint, train

__all__ = [
    "MODES",
    "TrainConfig",
    "TrainResult",
    "build_config",
    "config_from_checkpoint",
    "load_config_file",
    "train",
]

# The loop imports torch; the configuration does not. Loading the loop on first use keeps
# ``crossreid --help`` (which builds the train flags from TrainConfig) free of a torch import.
_LOOP = {"TrainResult", "config_from_checkpoint", "train"}


def __getattr__(name: str) -> Any:
    if name in _LOOP:
        from crossreid.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
