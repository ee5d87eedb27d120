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
:func:`extract_features_camera_bn` extracts features camera by camera with them. The
model's own statistics are restored afterwards.

Example::

    >>> feats = extract_features_camera_bn(model, ds.query, calibration=ds.train)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from crossreid.data.base import ImageRecord
from crossreid.errors import DatasetError

logger = logging.getLogger(__name__)

__all__ = ["batchnorm_layers", "extract_features_camera_bn", "recalibrate_batchnorm"]

#: extract_features' defaults, for the options not given.
_EXTRACT_DEFAULTS: dict[str, Any] = {
    "batch_size": 64,
    "device": "cpu",
    "flip": False,
    "workers": 0,
    "progress": False,
    "channels_last": True,
    "fuse_bn": True,
    "desc": "extract",
}
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]


@contextlib.contextmanager
def kept_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm layer's running statistics and momentum on exit."""
    layers = batchnorm_layers(model)
    saved = [
        (
            layer.momentum,
            layer.running_mean.clone(),
            layer.running_var.clone(),
            layer.num_batches_tracked.clone(),
        )
        for layer in layers
    ]
    try:
        yield
    finally:
        for layer, (momentum, mean, var, count) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(count)


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
    from crossreid.data.loaders import build_test_loader
    from crossreid.evaluation.extraction import resolve_device

    device = resolve_device(device)
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    loader = build_test_loader(records, image_size, int(batch_size), workers)
    seen = 0
    model.to(device)
    model.eval()
    saved = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
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
        for layer, momentum, (mean, var) in zip(layers, momenta, saved, strict=True):
            layer.momentum = momentum
            if seen == 0:
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
        model.train(was_training)
    if seen == 0:
        logger.warning(
            "BatchNorm statistics kept: no batch of 2 or more readable images among %d",
            len(records),
        )
    return seen


def extract_features_camera_bn(
    model: nn.Module,
    records: Sequence[ImageRecord],
    calibration: Sequence[ImageRecord],
    image_size: Sequence[int] | None = None,
    *,
    min_images: int = 8,
    **options: Any,
):
    """:func:`~crossreid.evaluation.extraction.extract_features` with camera-wise BatchNorm.

    ``options`` are those of :func:`~crossreid.evaluation.extraction.extract_features`
    (``batch_size``, ``device``, ``flip``, ``workers``, ``progress``, ``channels_last``,
    ``fuse_bn``, ``desc``). ``records`` are grouped by camera id; for each camera, the BatchNorm statistics are
    recomputed from the ``calibration`` images of that camera (:func:`recalibrate_batchnorm`)
    and that camera's records are extracted with them. A camera with fewer than
    ``min_images`` calibration images is calibrated on its own ``records`` instead (they
    are unlabelled too), with a warning. The model's statistics are restored afterwards.

    Returns :class:`~crossreid.evaluation.extraction.ExtractedFeatures` in record order.

    Raises:
        DatasetError: no records, or none of them readable.
    """
    from crossreid.evaluation.extraction import (
        _assemble,
        _check_args,
        _default_image_size,
        _extract_indexed,
    )

    options = {**_EXTRACT_DEFAULTS, **options}
    batch_size, desc = options["batch_size"], options["desc"]
    _check_args(records, batch_size)
    size = _default_image_size(model, image_size)
    by_camera: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        by_camera.setdefault(int(record.camid), []).append(index)
    pool: dict[int, list[ImageRecord]] = {}
    for record in calibration:
        pool.setdefault(int(record.camid), []).append(record)

    chunks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    with kept_batchnorm_statistics(model):
        for camera, members in sorted(by_camera.items()):
            own = [records[i] for i in members]
            images = pool.get(camera, [])
            if len(images) < min_images:
                logger.warning(
                    "%s: camera %d has %d calibration image(s) (< %d); its BatchNorm "
                    "statistics come from its own %d image(s)",
                    desc,
                    camera,
                    len(images),
                    min_images,
                    len(own),
                )
                images = own
            recalibrate_batchnorm(
                model,
                images,
                size,
                batch_size=max(int(batch_size), 2),
                device=options["device"],
                workers=options["workers"],
            )
            features, local, _ = _extract_indexed(
                model, own, size, **{**options, "desc": f"{desc} camera {camera}"}
            )
            if len(local):
                chunks.append(features)
                indices.append(np.asarray(members, dtype=np.int64)[local])
    if not chunks:
        raise DatasetError(f"{desc}: none of the {len(records)} images could be read")
    features = np.concatenate(chunks)
    order = np.concatenate(indices)
    sort = np.argsort(order, kind="stable")
    return _assemble(records, features[sort], order[sort], desc)
