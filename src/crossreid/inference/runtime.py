"""Preparing a network for inference: eval mode, BatchNorm folded, channels_last.

:func:`inference_network` yields the module to run over images and puts the model's training
flag and memory format back afterwards; :func:`fuse_batchnorm` folds each BatchNorm into
the convolution before it (``benchmarks/extract_speed.py`` measures the gain).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

logger = logging.getLogger(__name__)

__all__ = ["fuse_batchnorm", "inference_network"]


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` (in eval mode) with each BatchNorm folded into the
    convolution before it, or ``model`` itself when it cannot be traced.

    ``torch.fx`` traces ``model.forward``; the traced module references the original
    layers, and only the fused convolutions are new tensors, so the original model is
    left untouched and no full copy (decoder, pose encoder) is made.
    """
    try:
        traced = torch.fx.symbolic_trace(model)
        return fuse(traced, inplace=True, no_trace=True)
    except Exception as exc:  # data-dependent control flow etc.: run the model as it is
        logger.debug("BatchNorm folding skipped (%s: %s)", type(exc).__name__, exc)
        return model


@contextlib.contextmanager
def inference_network(
    model: nn.Module, device: torch.device, channels_last: bool, fuse_bn: bool
) -> Iterator[nn.Module]:
    """Yield the network to run: ``model`` in eval mode on ``device`` (channels_last if
    asked, BatchNorm folded if asked). The training flag and memory format of ``model`` are
    restored afterwards (it stays on ``device``)."""
    was_training = model.training
    model.eval()
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        network = fuse_batchnorm(model) if fuse_bn else model
        if channels_last and network is not model:
            network.to(memory_format=torch.channels_last)
        yield network
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
