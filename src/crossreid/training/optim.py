"""The optimiser of a run and the parts of the network it trains.

:func:`freeze_unused_parts` stops gradients to the network parts no weighted loss term
needs (:mod:`crossreid.training.terms`); :func:`build_optimizer` then takes the trainable
parameters in two groups, the ResNet trunks and the new layers, each with its learning rate.
"""

from __future__ import annotations

import torch
from torch import nn

from crossreid.training.config import TrainConfig
from crossreid.training.terms import NETWORK_PARTS, needs_part

__all__ = ["build_optimizer", "freeze_unused_parts"]


def freeze_unused_parts(model: nn.Module, config: TrainConfig) -> None:
    """Stop gradients to the parts no weighted loss reaches (pose encoder without rec/dif,
    decoder without rec, classifier without cls), so DDP and the optimiser skip them."""
    for part, attribute in NETWORK_PARTS.items():
        if not needs_part(config, part):
            getattr(model, attribute).requires_grad_(False)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam over the trainable parameters: the trunks at
    ``backbone_lr`` (default lr/10 with pretrained or initialised trunks, lr otherwise), the
    new layers at ``lr``."""
    pretrained_trunks = config.pretrained.lower() != "none" or config.init_from is not None
    backbone_lr = config.backbone_lr
    if backbone_lr is None:
        backbone_lr = config.lr * 0.1 if pretrained_trunks else config.lr
    groups = [
        {
            "params": [p for p in model.backbone_parameters() if p.requires_grad],
            "lr": backbone_lr,
            "name": "backbone",
        },
        {
            "params": [p for p in model.head_parameters() if p.requires_grad],
            "lr": config.lr,
            "name": "head",
        },
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(
        groups, lr=config.lr, betas=(config.momentum, 0.999), weight_decay=config.weight_decay
    )
