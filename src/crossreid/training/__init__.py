"""Training: the configuration, the adaptation loop, schedules, logging and DDP helpers.

Example::

    >>> from crossreid.training import TrainConfig, train
    >>> config = TrainConfig(source="synthetic:A", target="synthetic:B", backbone="resnet18",
    ...                      pretrained="none", image_size=(128, 64), max_steps=500)
    >>> result = train(config)                           # doctest: +SKIP
    >>> result.best_metrics["mAP"], result.best_checkpoint  # doctest: +SKIP

Importing this package does not import torch; :func:`train` and friends load it lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crossreid.training.config import MODES, TrainConfig, build_config, load_config_file

if TYPE_CHECKING:
    from crossreid.training.trainer import (
        TrainResult,
        config_from_checkpoint,
        evaluate_model,
        find_checkpoint,
        train,
    )

__all__ = [
    "MODES",
    "TrainConfig",
    "TrainResult",
    "build_config",
    "config_from_checkpoint",
    "evaluate_model",
    "find_checkpoint",
    "load_config_file",
    "train",
]

_LAZY = {
    "TrainResult",
    "config_from_checkpoint",
    "evaluate_model",
    "find_checkpoint",
    "train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from crossreid.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
