"""``crossreid extract`` as a library call: a checkpoint's features of a dataset's
query/gallery, or of a folder of crops, written to a features file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crossreid.data.specs import resolve_dataset
from crossreid.inference.extraction import extract_features_distributed, extract_query_gallery
from crossreid.inference.features_file import images_arrays, save_features_file
from crossreid.inference.images import records_from_folder
from crossreid.models.checkpoint import load_checkpoint
from crossreid.utils.devices import resolve_device
from crossreid.utils.distributed import cleanup_distributed, setup_distributed

__all__ = ["extract_to_file"]


def extract_to_file(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    images: str | os.PathLike[str] | None = None,
    camera_bn: bool = False,
    device: Any = "auto",
    **extraction: Any,
) -> str | None:
    """Extract and save features; returns a one-line summary on rank 0 (``None`` on the other
    ranks under ``torchrun``, where the work is split and rank 0 writes one merged file).

    Args:
        checkpoint: a checkpoint file or run folder.
        out: the ``.npz`` to write (atomically).
        dataset, data_root: a dataset spec whose query and gallery are extracted; or
        images: a folder of crops (recursive).
        camera_bn: with ``dataset``, camera-wise BatchNorm statistics from its training split.
        device, extraction: options of
            :func:`~crossreid.inference.extract_features_distributed` (``batch_size``,
            ``flip``, ``workers``, ``progress``, ``engine``: ``"auto"``, ``"torch"`` or
            ``"onnxruntime"``, ...).

    Raises:
        ConfigError, DatasetError, CheckpointError: bad options, data or checkpoint; all of
            them are read before a process group is joined, so every rank fails fast.
    """
    device = resolve_device(device)
    model = load_checkpoint(checkpoint, map_location="cpu")
    data = resolve_dataset(dataset, data_root) if dataset is not None else None
    records = records_from_folder(images) if data is None else None
    info = setup_distributed(device.type)
    try:
        options = {**extraction, "device": device}
        if data is not None:
            calibration = data.train if camera_bn else None
            arrays = extract_query_gallery(
                model, data.query, data.gallery, camera_bn=calibration, **options
            )
        else:
            result = extract_features_distributed(model, records, desc="images", **options)
            arrays = images_arrays(result) if result is not None else None
        if arrays is None:
            return None
        path = save_features_file(out, arrays)
    finally:
        cleanup_distributed(info)
    return _summary(path, arrays, data, records, images, info.world_size)


def _summary(path: Path, arrays, data, records, images, world_size: int) -> str:
    if data is not None:
        qf, gf = arrays["qf"], arrays["gf"]
        return (
            f"wrote {path}: query {qf.shape[0]} x {qf.shape[1]}, gallery {gf.shape[0]} x "
            f"{gf.shape[1]} ({data.name}, {world_size} process(es))"
        )
    features = arrays["features"]
    skipped = len(records) - len(arrays["paths"])
    note = f", {skipped} unreadable skipped" if skipped else ""
    return (
        f"wrote {path}: {features.shape[0]} x {features.shape[1]} features from {images}{note} "
        f"({world_size} process(es))"
    )
