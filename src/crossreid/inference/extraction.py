"""Feature extraction: images → re-ID feature vectors, in one process or across ranks.

:func:`extract_features` runs a model's ``forward`` (the identity vector) over a list of
:class:`~crossreid.data.base.ImageRecord` in dataset order, optionally averaging each
image's features with those of its horizontal mirror. The engine
(:mod:`crossreid.inference.engine`) is onnxruntime on the CPU when the model exports to
ONNX (once per weights, cached), else PyTorch under :func:`torch.inference_mode` with
BatchNorm folded into the preceding convolutions and ``channels_last`` tensors;
``benchmarks/extract_speed.py`` measures each.

:func:`extract_features_distributed` is the ``torchrun`` path: every rank extracts a
strided share of the records and rank 0 receives one merged result in the original order.

Example::

    >>> model = load_checkpoint("run/model_best.pt")                      # doctest: +SKIP
    >>> feats, pids, camids, paths = extract_features(model, ds.query)   # doctest: +SKIP
    >>> feats.shape                                                       # doctest: +SKIP
    (3368, 2048)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from crossreid.data.base import ImageRecord
from crossreid.data.loaders import build_test_loader
from crossreid.errors import ConfigError, DatasetError
from crossreid.inference.camera_bn import (
    MIN_CALIBRATION_IMAGES,
    kept_batchnorm_statistics,
    recalibrate_batchnorm,
)
from crossreid.inference.engine import check_engine, feature_engine
from crossreid.inference.features_file import query_gallery_arrays
from crossreid.utils.devices import resolve_device

logger = logging.getLogger(__name__)

__all__ = [
    "ExtractedFeatures",
    "extract_features",
    "extract_features_camera_bn",
    "extract_features_distributed",
    "extract_query_gallery",
]


class ExtractedFeatures(NamedTuple):
    """Features of the readable images among the records, in record order.

    Attributes:
        features: ``[N, D]`` float32.
        pids: ``[N]`` int64.
        camids: ``[N]`` int64.
        paths: ``N`` image paths.
    """

    features: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False)


def _extract_indexed(
    model: nn.Module,
    records: Sequence[ImageRecord],
    image_size: Sequence[int],
    *,
    batch_size: int,
    device: str | torch.device | None,
    flip: bool,
    workers: int | None,
    progress: bool,
    channels_last: bool,
    fuse_bn: bool,
    engine: str,
    desc: str,
    persist: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(features [M, D] float32, record indices [M] int64, corrupt count)`` for the M
    readable records, in record order (``batch_size`` already checked, ``device`` as given
    by the caller; ``persist``: see :func:`~crossreid.inference.engine.feature_engine`)."""
    device = resolve_device(device)
    loader = build_test_loader(
        records, image_size, int(batch_size), workers, pin_memory=device.type == "cuda"
    )
    renormalise = bool(getattr(model, "normalize_features", False))
    chunks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    with (
        feature_engine(
            model, device, image_size, engine=engine, channels_last=channels_last,
            fuse_bn=fuse_bn, persist=persist, desc=desc,
        ) as network,
        torch.inference_mode(),
    ):  # fmt: skip
        for batch in _progress(loader, len(loader), desc, progress):
            if batch is None:  # every image of the batch was unreadable
                continue
            images, _, _, index = batch
            images = images.to(device, non_blocking=True)
            features = network(images)
            if flip:
                features = (features + network(torch.flip(images, dims=[3]))) / 2
                if renormalise:  # the mean of two unit vectors is not a unit vector
                    features = F.normalize(features, dim=1)
            chunks.append(features.float().cpu().numpy())
            indices.append(index.numpy().astype(np.int64))
    corrupt = int(getattr(loader.dataset, "num_corrupt", 0))
    if corrupt:
        logger.warning("%s: skipped %d unreadable image(s) of %d", desc, corrupt, len(records))
    if not chunks:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), corrupt
    return np.concatenate(chunks), np.concatenate(indices), corrupt


def _check_args(records: Sequence[ImageRecord], batch_size: int, engine: str) -> None:
    check_engine(engine)
    if len(records) == 0:
        raise DatasetError("no images to extract features from")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")


def _default_image_size(model: nn.Module, image_size: Sequence[int] | None) -> tuple[int, int]:
    if image_size is None:
        image_size = getattr(model, "image_size", None)
        if image_size is None:
            raise ConfigError("image_size is required for a model without an image_size")
    height, width = (int(v) for v in image_size)
    return height, width


def _assemble(
    records: Sequence[ImageRecord], features: np.ndarray, indices: np.ndarray, desc: str
) -> ExtractedFeatures:
    if len(indices) == 0:
        raise DatasetError(f"{desc}: none of the {len(records)} images could be read")
    return ExtractedFeatures(
        features=np.ascontiguousarray(features, dtype=np.float32),
        pids=np.array([records[i].pid for i in indices], dtype=np.int64),
        camids=np.array([records[i].camid for i in indices], dtype=np.int64),
        paths=[str(records[i].path) for i in indices],
    )


def extract_features(
    model: nn.Module,
    records: Sequence[ImageRecord],
    image_size: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = "cpu",
    flip: bool = False,
    workers: int | None = 0,
    progress: bool = False,
    channels_last: bool = True,
    fuse_bn: bool = True,
    engine: str = "auto",
    desc: str = "extract",
    camera_bn: Sequence[ImageRecord] | None = None,
) -> ExtractedFeatures:
    """Features of ``records`` from ``model.forward`` (one process).

    Args:
        model: maps ``[B, 3, H, W]`` normalised images to ``[B, D]`` features (e.g.
            :class:`~crossreid.models.CrossDomainReID`). It is put in eval mode and moved to
            ``device`` (kept there); its training flag and memory format are restored.
        records: images to read, in the order the result follows.
        image_size: ``(H, W)`` the images are resized to (default ``model.image_size``).
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or ``"auto"``/``None``.
        flip: average each image's features with those of its horizontal mirror (and
            re-normalise when the model L2-normalises its features).
        workers: data-loading processes (``None``: :func:`crossreid.data.loaders.default_workers`).
        progress: show a tqdm progress bar.
        channels_last: run convolutions in the channels_last layout.
        fuse_bn: fold BatchNorm layers into the convolutions before them (eval-mode
            arithmetic, the same features up to float rounding; see :func:`fuse_batchnorm`).
        engine: ``"auto"`` (onnxruntime on the CPU when the model exports, else torch),
            ``"torch"`` or ``"onnxruntime"`` (see :mod:`crossreid.inference.engine`; the
            features agree within 1e-4 relative). ``channels_last`` and ``fuse_bn`` apply
            to torch.
        desc: label of the progress bar and of warnings.
        camera_bn: unlabelled images of the same camera network (e.g. its training split):
            when given, each camera's records are extracted with BatchNorm statistics
            recomputed from that camera's images (see
            :mod:`crossreid.inference.camera_bn`); the model's own are restored after.

    Returns:
        :class:`ExtractedFeatures` ``(features [N, D] float32, pids [N], camids [N], paths)``
        for the ``N`` readable images (unreadable ones are skipped with a warning).

    Raises:
        DatasetError: no records, or none of them readable.
        ConfigError: bad batch size, device or engine, or ``engine="onnxruntime"`` for a
            model that does not export to ONNX (or on a CUDA device).
    """
    options = {
        "batch_size": batch_size,
        "device": device,
        "flip": flip,
        "workers": workers,
        "progress": progress,
        "channels_last": channels_last,
        "fuse_bn": fuse_bn,
        "engine": engine,
        "desc": desc,
    }
    _check_args(records, batch_size, engine)
    size = _default_image_size(model, image_size)
    if camera_bn is not None:
        features, indices = _extract_per_camera(model, records, camera_bn, size, options)
    else:
        features, indices, _ = _extract_indexed(model, records, size, **options)
    return _assemble(records, features, indices, desc)


def extract_features_camera_bn(
    model: nn.Module,
    records: Sequence[ImageRecord],
    calibration: Sequence[ImageRecord],
    image_size: Sequence[int] | None = None,
    **options: Any,
) -> ExtractedFeatures:
    """:func:`extract_features` with camera-wise BatchNorm
    (its ``camera_bn`` argument): ``options`` are that function's.

    ``records`` are grouped by camera id; for each camera, the BatchNorm statistics are
    recomputed from the ``calibration`` images of that camera (:func:`recalibrate_batchnorm`)
    and that camera's records are extracted with them. A camera with fewer than
    :data:`MIN_CALIBRATION_IMAGES` calibration images is calibrated on its own ``records``
    instead (they are unlabelled too), with a warning. The model's statistics are restored
    afterwards.

    Returns :class:`ExtractedFeatures` in record order.

    Raises:
        DatasetError: no records, or none of them readable.
    """
    return extract_features(model, records, image_size, camera_bn=calibration, **options)


def _extract_per_camera(
    model: nn.Module,
    records: Sequence[ImageRecord],
    calibration: Sequence[ImageRecord],
    size: tuple[int, int],
    options: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """The camera-wise part of :func:`extract_features` (``camera_bn=``)
    (arguments already checked, ``options`` complete): ``(features [M, D], record indices
    [M])`` of the M readable records, in record order."""
    batch_size, desc = options["batch_size"], options["desc"]
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
            if len(images) < MIN_CALIBRATION_IMAGES:
                logger.warning(
                    "%s: camera %d has %d calibration image(s) (< %d); its BatchNorm "
                    "statistics come from its own %d image(s)",
                    desc,
                    camera,
                    len(images),
                    MIN_CALIBRATION_IMAGES,
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
            # This camera's statistics are transient weights: an ONNX graph of them is
            # kept in memory only.
            features, local, _ = _extract_indexed(
                model, own, size, **{**options, "desc": f"{desc} camera {camera}"}, persist=False
            )
            if len(local):
                chunks.append(features)
                indices.append(np.asarray(members, dtype=np.int64)[local])
    if not chunks:  # nothing readable: extract_features reports it
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    order = np.concatenate(indices)
    sort = np.argsort(order, kind="stable")
    return np.concatenate(chunks)[sort], order[sort]


def extract_features_distributed(
    model: nn.Module,
    records: Sequence[ImageRecord],
    image_size: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = "cpu",
    flip: bool = False,
    workers: int | None = 0,
    progress: bool = False,
    channels_last: bool = True,
    fuse_bn: bool = True,
    engine: str = "auto",
    desc: str = "extract",
    dst: int = 0,
) -> ExtractedFeatures | None:
    """:func:`extract_features` split across the ranks of the default process group.

    Rank ``r`` of ``W`` extracts ``records[r::W]``; the shares are gathered on rank ``dst``
    (``torch.distributed.gather_object``, so gloo and NCCL both work) and merged back into
    record order, giving exactly what one process would return. Without an initialised
    process group (or with one rank) this is :func:`extract_features`.

    Every rank must call it with the same records. Returns the merged result on rank
    ``dst`` and ``None`` on the other ranks.
    """
    # Every option but ``progress`` (shown on rank ``dst`` only) goes to each rank as given.
    options = {
        "batch_size": batch_size,
        "device": device,
        "flip": flip,
        "workers": workers,
        "channels_last": channels_last,
        "fuse_bn": fuse_bn,
        "engine": engine,
        "desc": desc,
    }
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return extract_features(model, records, image_size, progress=progress, **options)
    _check_args(records, batch_size, engine)
    rank, world = dist.get_rank(), dist.get_world_size()
    size = _default_image_size(model, image_size)
    share = list(range(rank, len(records), world))
    if share:
        features, local, _ = _extract_indexed(
            model, [records[i] for i in share], size, progress=progress and rank == dst, **options
        )
        indices = np.asarray(share, dtype=np.int64)[local]
    else:  # more ranks than records
        features, indices = np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    gathered: list | None = [None] * world if rank == dst else None
    dist.gather_object((features, indices), gathered, dst=dst)
    if rank != dst:
        return None
    parts = [(f, i) for f, i in gathered if len(i)]
    if not parts:
        return _assemble(records, np.zeros((0, 0), np.float32), np.zeros(0, np.int64), desc)
    all_features = np.concatenate([f for f, _ in parts])
    all_indices = np.concatenate([i for _, i in parts])
    order = np.argsort(all_indices, kind="stable")
    return _assemble(records, all_features[order], all_indices[order], desc)


def extract_query_gallery(
    model: nn.Module,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    image_size: Sequence[int] | None = None,
    camera_bn: Sequence[ImageRecord] | None = None,
    *,
    split_across_ranks: bool = True,
    **options,
) -> dict[str, np.ndarray] | None:
    """Features of a dataset's query and gallery, under the keys of a features file
    (:data:`~crossreid.inference.features_file.QUERY_GALLERY_KEYS`): ``qf, gf`` (float32
    ``[Q, D]``, ``[G, D]``), ``q_pids, g_pids, q_camids, g_camids`` (int64) and ``q_paths,
    g_paths`` (str).

    ``options`` are those of :func:`extract_features_distributed`: under ``torchrun`` the
    work is split across ranks and ``None`` is returned on ranks other than 0, unless
    ``split_across_ranks`` is false (a caller that runs on one rank alone, such as the
    trainer's evaluation). ``camera_bn``: unlabelled images of the same cameras for
    camera-wise BatchNorm statistics (see :func:`extract_features`); that extraction runs
    on rank 0 alone.
    """
    if not split_across_ranks:
        extract = functools.partial(extract_features, camera_bn=camera_bn)
    elif camera_bn is not None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return None
        extract = functools.partial(extract_features, camera_bn=camera_bn)
    else:
        extract = extract_features_distributed
    results = {
        prefix: extract(model, records, image_size, desc=desc, **options)
        for prefix, records, desc in (("q", query, "query"), ("g", gallery, "gallery"))
    }
    if any(result is None for result in results.values()):
        return None
    return query_gallery_arrays(results["q"], results["g"])
