"""Camera-wise BatchNorm statistics: test-time adaptation to each camera of a new network.

A camera network's cameras differ in colour cast, exposure, contrast, blur and noise, and
a model's BatchNorm layers carry the feature statistics of the images it was trained on.
Camera-based BatchNorm (Zhuang et al., "Rethinking the Distribution Gap of Person
Re-identification with Camera-based Batch Normalization", ECCV 2020) normalises each
camera's images with statistics of that camera: before extracting the features of camera
``c``'s images, every BatchNorm layer's running mean and variance are recomputed from
unlabelled images of camera ``c`` (typically the target's training split; no identity
labels are read, only camera ids, which a camera network always knows).

:func:`recalibrate_batchnorm` recomputes the statistics from a set of images;
:func:`~crossreid.inference.extract_features` with ``camera_bn=`` (or
:func:`~crossreid.inference.extract_features_camera_bn`) extracts features camera by camera
with them. The model's own statistics are restored afterwards.

Example::

    >>> feats = extract_features_camera_bn(model, ds.query, calibration=ds.train)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from crossreid.data.base import ImageRecord
from crossreid.data.loaders import build_test_loader
from crossreid.utils.devices import resolve_device

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_CALIBRATION_IMAGES",
    "batchnorm_layers",
    "kept_batchnorm_statistics",
    "recalibrate_batchnorm",
]

#: A camera with fewer calibration images than this is calibrated on its own images.
MIN_CALIBRATION_IMAGES = 8
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]


_Snapshot = list[tuple[float | None, torch.Tensor, torch.Tensor, torch.Tensor]]


def _snapshot(layers: Sequence[nn.modules.batchnorm._BatchNorm]) -> _Snapshot:
    return [
        (
            layer.momentum,
            layer.running_mean.clone(),
            layer.running_var.clone(),
            layer.num_batches_tracked.clone(),
        )
        for layer in layers
    ]


def _restore(
    layers: Sequence[nn.modules.batchnorm._BatchNorm], saved: _Snapshot, statistics: bool = True
) -> None:
    """Put back each layer's momentum and, when ``statistics``, its running statistics."""
    for layer, (momentum, mean, var, count) in zip(layers, saved, strict=True):
        layer.momentum = momentum
        if statistics:
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def kept_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm layer's running statistics and momentum on exit."""
    layers = batchnorm_layers(model)
    saved = _snapshot(layers)
    try:
        yield
    finally:
        _restore(layers, saved)


def recalibrate_batchnorm(
    model: nn.Module,
    records: Sequence[ImageRecord],
    image_size: Sequence[int],
    *,
    batch_size: int = 128,
    device: str | torch.device | None = "cpu",
    workers: int | None = 0,
) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers by those of ``records``.

    The statistics are reset and accumulated as a cumulative average over the batches
    (``momentum=None``) of a forward pass in which only the BatchNorm layers are in
    training mode (dropout and everything else stay in eval mode); no gradient is computed
    and no weight changes. The layers' momentum and the model's training flag are restored.

    Returns the number of images read (unreadable ones are skipped with a warning). When
    no batch of at least two images could be read, the statistics are left as they were.
    """
    device = resolve_device(device)
    layers = batchnorm_layers(model)
    saved = _snapshot(layers)
    was_training = model.training
    loader = build_test_loader(records, image_size, int(batch_size), workers)
    seen = 0
    model.to(device)
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch counts the same
        layer.train()
    try:
        with torch.no_grad():
            for batch in loader:
                if batch is None:  # every image of the batch was unreadable
                    continue
                images = batch[0].to(device, non_blocking=True)
                if images.shape[0] < 2:  # batch statistics of one image are meaningless
                    continue
                model(images)
                seen += int(images.shape[0])
    finally:
        _restore(layers, saved, statistics=seen == 0)
        model.train(was_training)
    if seen == 0:
        logger.warning(
            "BatchNorm statistics kept: no batch of 2 or more readable images among %d",
            len(records),
        )
    return seen
