"""The inference engine choice: PyTorch or onnxruntime runs a model over images.

* ``"torch"``: the model in eval mode with BatchNorm folded and channels_last tensors
  (:func:`~crossreid.inference.runtime.inference_network`), on any device;
* ``"onnxruntime"``: the model's ``forward`` exported to ONNX once per weights and run by
  onnxruntime on the CPU (:mod:`crossreid.inference.onnx_engine`); a model that does not
  export is a :class:`~crossreid.errors.ConfigError`;
* ``"auto"`` (the default): onnxruntime on the CPU when it is installed and the model
  exports, torch otherwise (on CUDA, or with one warning for a model that does not
  export).

On the project's 2-core AMD EPYC (Zen 4) development machine, ``benchmarks/extract_speed.py``
measured onnxruntime at 1.3-1.5x the torch engine (2x eager) at equal features (within
1e-4 relative), and ``benchmarks/evaluate_end_to_end.py`` ``crossreid evaluate`` 1.5x
faster end to end on a Market-1501 replica. The other CPU options it measures stay off
(the figures are in that benchmark's docstring): bf16 autocast (features about 1% off),
oneDNN's bf16 fpmath (not applied on this CPU), TorchScript ``optimize_for_inference`` and
``torch.compile`` (within the noise of the torch engine, seconds of set-up).

Camera-wise BatchNorm changes the BatchNorm statistics for each camera; they are part of
the graph key, so each camera's statistics get their own graph (kept in memory only).

Example::

    >>> with feature_engine(model, torch.device("cpu"), (256, 128)) as network:  # doctest: +SKIP
    ...     features = network(images)                                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from crossreid.errors import ConfigError
from crossreid.inference.onnx_engine import NotExportable, onnx_runner, onnxruntime_available
from crossreid.inference.runtime import inference_network

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "check_engine", "feature_engine"]

#: The engine names accepted by the extraction functions and ``--engine``.
ENGINES = ("auto", "torch", "onnxruntime")

FeatureRunner = Callable[[torch.Tensor], torch.Tensor]


def check_engine(engine: str) -> str:
    """``engine`` lower-cased if it is one of :data:`ENGINES`.

    Raises:
        ConfigError: another name.
    """
    name = str(engine).lower()
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    return name


def _torch_runner(network: nn.Module, channels_last: bool) -> FeatureRunner:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def run(images: torch.Tensor) -> torch.Tensor:
        return network(images.contiguous(memory_format=memory_format))

    return run


def _onnx_or_none(
    model: nn.Module, image_size: Sequence[int], engine: str, persist: bool, desc: str
) -> FeatureRunner | None:
    """The onnxruntime runner, or ``None`` where ``auto`` falls back to torch."""
    if not onnxruntime_available():
        if engine == "onnxruntime":
            raise ConfigError("engine 'onnxruntime' needs the onnxruntime package (pip install)")
        logger.debug("onnxruntime is not installed: extracting with torch")
        return None
    try:
        return onnx_runner(model, image_size, persist=persist)
    except NotExportable as exc:
        if engine == "onnxruntime":
            raise ConfigError(
                f"engine 'onnxruntime': the model does not export to ONNX ({exc}); "
                "use --engine torch"
            ) from None
        if not exc.repeated:  # one warning per weights (query and gallery are two passes)
            logger.warning("%s: the model does not export to ONNX (%s); using torch", desc, exc)
        return None


@contextlib.contextmanager
def feature_engine(
    model: nn.Module,
    device: torch.device,
    image_size: Sequence[int],
    *,
    engine: str = "auto",
    channels_last: bool = True,
    fuse_bn: bool = True,
    persist: bool = True,
    desc: str = "extract",
) -> Iterator[FeatureRunner]:
    """Yield ``run(images [B, 3, H, W] on device) -> features [B, D]`` for ``model``.

    ``model`` is put in eval mode and moved to ``device`` (kept there); its training flag
    and memory format are restored afterwards. ``channels_last`` and ``fuse_bn`` are the
    torch engine's options (onnxruntime folds BatchNorm and picks its layouts itself);
    ``persist``: keep a new ONNX graph in the disk cache; ``desc`` labels the warning.

    Raises:
        ConfigError: an unknown engine, ``onnxruntime`` on a CUDA device, without the
            onnxruntime package, or for a model that does not export.
    """
    engine = check_engine(engine)
    if engine == "onnxruntime" and device.type != "cpu":
        raise ConfigError(
            f"engine 'onnxruntime' runs on the CPU, not {device}; use --device cpu or "
            "--engine torch"
        )
    runner = None
    if engine != "torch" and device.type == "cpu":
        was_training = model.training
        model.eval()
        model.to(device)
        try:
            runner = _onnx_or_none(model, image_size, engine, persist, desc)
        finally:
            model.train(was_training)
    if runner is not None:
        yield runner
        return
    with inference_network(model, device, channels_last, fuse_bn) as network:
        yield _torch_runner(network, channels_last)
