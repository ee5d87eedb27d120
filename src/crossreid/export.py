"""Export the re-ID feature network of a checkpoint to ONNX or TorchScript.

What is exported is ``model.forward``: normalised images ``[B, 3, H, W]`` (ImageNet
mean/std, ``H, W`` from the checkpoint's config) → identity features ``[B, D]``, with a
dynamic batch dimension ``B``. The pose encoder, decoder and classifier are not part of it.

* **ONNX** uses PyTorch's TorchScript-based exporter (``torch.onnx.export(...,
  dynamo=False)`` with ``dynamic_axes``): it works offline with the pinned torch alone,
  whereas the newer ``dynamo=True`` exporter needs the extra ``onnxscript`` package. Input
  ``images``, output ``features``, opset 17. It is the exporter of the inference engine
  (:func:`crossreid.inference.onnx_engine.export_onnx`), so a file written here is the
  graph ``--engine onnxruntime`` runs.
* **TorchScript** traces the network and freezes it (``torch.jit.freeze``), which inlines
  the weights it uses and drops the rest, so the file holds the identity encoder only.

After writing, the file is loaded back (onnxruntime / ``torch.jit.load``) and its output
on a random batch is compared with PyTorch's; a mismatch raises instead of shipping a
broken model.

Example::

    >>> export_model("runs/ab", "onnx", "reid.onnx")   # its checkpoints/last.pt  # doctest: +SKIP
    PosixPath('reid.onnx')
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crossreid.errors import ConfigError, CrossReIDError
from crossreid.inference.onnx_engine import INPUT_NAME, FeatureNetwork, open_session
from crossreid.inference.onnx_engine import export_onnx as _export_onnx
from crossreid.models.checkpoint import find_checkpoint, load_checkpoint
from crossreid.utils.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "ExportError", "export_model", "export_network"]

EXPORT_FORMATS = ("onnx", "torchscript")


class ExportError(CrossReIDError, RuntimeError):
    """The exported model could not be written or does not reproduce PyTorch's output."""


def _export_torchscript(network: nn.Module, example: torch.Tensor, target: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but remains the way to write a
        # self-contained file that plain `torch.jit.load` (C++ or Python) can run.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(network, (example,), check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    frozen.save(str(target))


def run_exported(path: str | os.PathLike[str], fmt: str, images: np.ndarray) -> np.ndarray:
    """Run an exported file on ``images`` ``[B, 3, H, W]`` float32 → ``[B, D]`` (CPU)."""
    if fmt == "onnx":
        session = open_session(path)
        return session.run(None, {INPUT_NAME: images.astype(np.float32)})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(torch.from_numpy(images)).numpy()


def export_network(
    model: nn.Module,
    out: str | os.PathLike[str],
    fmt: str = "onnx",
    image_size: Sequence[int] | None = None,
    *,
    verify: bool = True,
    tolerance: float = 1e-4,
) -> Path:
    """Export ``model.forward`` (on CPU, eval mode) to ``out``; see the module docstring.

    Args:
        model: a feature network, e.g. :class:`~crossreid.models.CrossDomainReID`.
        out: output file (written atomically: a temporary file renamed over it).
        fmt: ``"onnx"`` or ``"torchscript"``.
        image_size: ``(H, W)`` of the example input (default ``model.image_size``).
        verify: reload the file and compare its output on a random batch of 3 with
            PyTorch's (a batch size other than the traced one, so the dynamic batch
            dimension is checked too).
        tolerance: largest allowed difference, relative to the features' magnitude
            (``max|a - b| <= tolerance * max(1, max|b|)``).

    Returns:
        The written path.
    """
    fmt = str(fmt).lower()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}"
        )
    if image_size is None:
        image_size = getattr(model, "image_size", None)
        if image_size is None:
            raise ConfigError("image_size is required for a model without an image_size")
    height, width = (int(v) for v in image_size)
    model = model.to("cpu").eval()
    network = FeatureNetwork(model).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, height, width, generator=generator)
    out = Path(out)
    with atomic_path(out) as target:
        if fmt == "onnx":
            _export_onnx(model, example, target)
        else:
            _export_torchscript(network, example, target)
        if verify:
            check = torch.randn(3, 3, height, width, generator=generator)
            with torch.inference_mode():
                expected = network(check).numpy()
            got = run_exported(target, fmt, check.numpy())
            error = float(np.abs(got - expected).max()) if got.shape == expected.shape else np.inf
            scale = max(1.0, float(np.abs(expected).max()))
            if not error <= tolerance * scale:
                raise ExportError(
                    f"the exported {fmt} model differs from PyTorch by {error:.3g} "
                    f"(shape {got.shape} vs {expected.shape}); not writing {out}"
                )
    return out


def export_model(
    checkpoint: str | os.PathLike[str],
    fmt: str = "onnx",
    out: str | os.PathLike[str] | None = None,
    image_size: Sequence[int] | None = None,
    *,
    verify: bool = True,
) -> Path:
    """Export the feature network stored in a crossreid checkpoint.

    Args:
        checkpoint: a checkpoint written by training (``crossreid-checkpoint`` format), or
            a run folder (its ``checkpoints/last.pt``; see
            :func:`~crossreid.models.checkpoint.find_checkpoint`).
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: output file (default: the checkpoint file's path with ``.onnx`` / ``.ts.pt``,
            e.g. ``run/checkpoints/last.onnx`` for a run folder).
        image_size: ``(H, W)`` of the input (default: the checkpoint's ``image_size``).
        verify: see :func:`export_network`.

    Raises:
        CheckpointError: missing or unreadable checkpoint, or weights that do not fit the
            architecture recorded in it (the message names the offending keys).
        ConfigError: unknown format.
    """
    fmt = str(fmt).lower()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}"
        )
    checkpoint = find_checkpoint(checkpoint)
    model = load_checkpoint(checkpoint, map_location="cpu")
    if out is None:
        out = Path(checkpoint).with_suffix(".onnx" if fmt == "onnx" else ".ts.pt")
    path = export_network(model, out, fmt, image_size, verify=verify)
    size = image_size or model.image_size
    logger.info("exported %s to %s (%s, input [B, 3, %d, %d])", checkpoint, path, fmt, *size)
    return path
