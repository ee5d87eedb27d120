"""ONNX Runtime as an inference engine: a model's ``forward`` exported once per weights.

:func:`onnx_runner` returns an :class:`OnnxRunner` for a model: its ``forward`` (normalised
images ``[B, 3, H, W]`` → features ``[B, D]``, dynamic batch dimension ``B``) exported to
ONNX and run by onnxruntime's CPU execution provider, which is about twice as fast as
PyTorch's eager CPU path on ResNets and 1.3-1.5x the torch engine
(``benchmarks/extract_speed.py``).

**One graph per weights.** A graph is found by a key: the SHA-256 of everything the traced
``forward`` depends on (every parameter and buffer, by name, dtype, shape and bytes; every
submodule's type and plain attributes such as ``normalize_features``, a convolution's
stride or a BatchNorm's ``eps``), the input size, the opset, the torch version and
:data:`GRAPH_FORMAT`. Changing one weight, or one BatchNorm statistic (camera-wise
BatchNorm), gives another key and so another graph: a stale graph is never used. Hashing
costs about 0.2 s for a ResNet-50 ``CrossDomainReID`` (both encoders, 190 MB).

**Two caches.** Sessions live in memory (the :data:`MAX_SESSIONS` most recent, per thread
count), so extracting a query and then a gallery exports once. Graphs are also written to
``$CROSSREID_CACHE/onnx/<key>.onnx`` (or ``$CROSSREID_ONNX_CACHE/<key>.onnx``:
:func:`onnx_cache_dir`; the :data:`MAX_CACHED_GRAPHS` most recently used are kept), so
separate commands on one checkpoint (``crossreid extract``, ``evaluate``, ``search``)
export it once. The cache is content-addressed rather than kept
beside a checkpoint: it serves models that never were a file (the trainer's), needs no
write access to a run folder, and cannot go stale when a checkpoint is overwritten.

**Verified.** A freshly exported graph is run on a random batch of 3 and compared with
PyTorch's output (``max|a - b| <= 1e-4 * max(1, max|b|)``) before it is used or cached.
The export is strict: a tracer warning (a Python branch on a tensor's value, which a
traced graph would freeze) or an operator without an ONNX form means the model does not
export (:class:`NotExportable`, one line). Such a failure is remembered for the
architecture (the key without the tensors' values), so new weights of the same network (a
trainer's next evaluation) are not exported again.

**Threads.** A session uses ``torch.get_num_threads()`` intra-op threads and one inter-op
thread, so ``torch_threads(1)`` runs stay single-threaded.

onnx and onnxruntime are optional, heavy modules: they are imported inside the functions
that need them.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from crossreid.data.specs import default_cache_dir
from crossreid.utils.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureNetwork",
    "GRAPH_FORMAT",
    "INPUT_NAME",
    "MAX_CACHED_GRAPHS",
    "MAX_SESSIONS",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "NotExportable",
    "OnnxRunner",
    "clear_session_cache",
    "export_onnx",
    "graph_key",
    "onnx_cache_dir",
    "onnx_runner",
    "onnxruntime_available",
    "open_session",
]

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "features"
#: Bumped when the exported graph changes for the same weights (part of every key).
GRAPH_FORMAT = 1
#: Sessions kept in memory: the model being extracted and one more (a ResNet-50 session
#: holds ~100 MB of weights).
MAX_SESSIONS = 2
#: Graphs kept in the disk cache, least recently used removed first (~95 MB each for a
#: ResNet-50 identity encoder).
MAX_CACHED_GRAPHS = 4
_VERIFY_BATCH = 3  # not the export batch of 2, so the dynamic batch dimension is checked
_TOLERANCE = 1e-4

_sessions: collections.OrderedDict[tuple[str, int], Any] = collections.OrderedDict()
# Architectures (graph keys without the values) that did not export, with the reason: not
# tried again, so a trainer evaluating new weights of one such model warns once.
_failures: collections.OrderedDict[str, str] = collections.OrderedDict()
_MAX_FAILURES = 16
_lock = threading.Lock()


class NotExportable(Exception):
    """The model's ``forward`` has no faithful ONNX graph (the message says why, in one
    line). The engine choice turns it into a warning or a ConfigError.

    Attributes:
        repeated: these weights failed before (they are not exported again).
    """

    def __init__(self, reason: str, *, repeated: bool = False) -> None:
        super().__init__(reason)
        self.repeated = repeated


class FeatureNetwork(nn.Module):
    """``forward`` of the wrapped model only (a stable, single-output export surface)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


@contextlib.contextmanager
def _native_output_to(sink: BinaryIO) -> Iterator[None]:
    """Send what native code writes to file descriptors 1 and 2 to ``sink`` for the block.

    On a failed export, torch's TorchScript-based exporter prints its whole IR graph to
    the process's standard output (its ONNX log switch is left on by
    ``setup_onnx_logging``, torch 2.14); ``auto`` promises one warning line instead.
    """
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # no C library handle (Windows): unflushed C output stays buffered
        libc = None
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        if libc is not None:  # C stdio buffers (std::cout writes through them) go to the sink
            libc.fflush(None)
        for fd, copy in enumerate(saved, start=1):
            os.dup2(copy, fd)
            os.close(copy)


def export_onnx(
    model: nn.Module, example: torch.Tensor, target: str | os.PathLike[str] | BinaryIO
) -> list[str]:
    """Write ``model.forward`` as ONNX to ``target`` (a path or a binary stream): input
    :data:`INPUT_NAME`, output :data:`OUTPUT_NAME`, dynamic batch dimension, opset
    :data:`ONNX_OPSET`, constants folded (BatchNorm folded into the convolutions).

    The TorchScript-based exporter (``dynamo=False``) is used: it works offline with the
    pinned torch alone, whereas ``dynamo=True`` needs the extra ``onnxscript`` package.

    Returns:
        The tracer's warnings: each one marks a Python branch or conversion on a tensor
        value, which the graph froze for the example input (an empty list for a faithful
        graph).
    """
    network = FeatureNetwork(model).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category=torch.jit.TracerWarning)
        # The TorchScript-based exporter is deprecated in favour of dynamo=True, which
        # needs onnxscript; this one is still supported by the pinned torch.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            network,
            (example,),
            target if isinstance(target, io.IOBase) else str(target),
            dynamo=False,
            export_params=True,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported (it is an optional dependency)."""
    try:
        import onnxruntime  # noqa: F401  (optional, heavy: only probed here)
    except ImportError:
        return False
    return True


def open_session(model: str | os.PathLike[str] | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` of a graph (a file or its bytes) with
    ``threads`` intra-op threads (default ``torch.get_num_threads()``) and one inter-op
    thread."""
    import onnxruntime as ort  # optional and heavy: loaded when a graph is run

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-session notes on stderr
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """Runs an onnxruntime session on torch batches: ``runner(images [B, 3, H, W])`` →
    features ``[B, D]`` float32 (CPU tensors in, CPU tensors out).

    Attributes:
        key: the graph's key (see :func:`graph_key`).
        session: the onnxruntime ``InferenceSession``.
    """

    def __init__(self, key: str, session: Any) -> None:
        self.key = key
        self.session = session

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def graph_key(model: nn.Module, image_size: Sequence[int], *, values: bool = True) -> str:
    """SHA-256 (hex) of what the exported graph of ``model.forward`` at ``image_size``
    depends on: see the module docstring. ``model`` is expected in eval mode. Without
    ``values`` the tensors count by name, dtype and shape only: the key of the
    architecture, whatever its weights."""
    digest = hashlib.sha256()
    header = (GRAPH_FORMAT, ONNX_OPSET, torch.__version__, tuple(int(v) for v in image_size))
    digest.update(repr(header).encode())
    for name, module in model.named_modules():
        attributes = sorted(
            (key, value)
            for key, value in vars(module).items()
            if not key.startswith("_") and _plain(value)
        )
        digest.update(repr((name, type(module).__qualname__, attributes)).encode())
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]
    for name, tensor in tensors:
        if not values:
            digest.update(repr((name, str(tensor.dtype), tuple(tensor.shape))).encode())
            continue
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(repr((name, str(data.dtype), tuple(tensor.shape))).encode())
        digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()


def onnx_cache_dir() -> Path:
    """Where exported graphs are kept: ``$CROSSREID_ONNX_CACHE`` if set, else
    ``$CROSSREID_CACHE/onnx`` (see :func:`crossreid.data.specs.default_cache_dir`)."""
    if os.environ.get("CROSSREID_ONNX_CACHE"):
        return Path(os.environ["CROSSREID_ONNX_CACHE"]).expanduser()
    return default_cache_dir() / "onnx"


def clear_session_cache() -> None:
    """Forget the sessions and export failures kept in memory (the disk cache is left as
    it is)."""
    with _lock:
        _sessions.clear()
        _failures.clear()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _export_bytes(model: nn.Module, image_size: tuple[int, int]) -> bytes:
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, *image_size, generator=generator)
    buffer = io.BytesIO()
    with tempfile.TemporaryFile() as native_log:
        try:
            with _native_output_to(native_log):
                traced_branches = export_onnx(model, example, buffer)
        except Exception as exc:  # an operator without an ONNX form, ...
            native_log.seek(0)
            logger.debug(
                "ONNX export failed; exporter output:\n%s",
                native_log.read().decode(errors="replace"),
            )
            raise NotExportable(_first_line(exc)) from exc
    if traced_branches:  # e.g. "Converting a tensor to a Python boolean might cause ..."
        first = traced_branches[0].strip().split(". ")[0].rstrip(".")
        raise NotExportable(f"its forward depends on tensor values: {first}")
    return buffer.getvalue()


def _verify(model: nn.Module, session: Any, image_size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(_VERIFY_BATCH, 3, *image_size, generator=generator)
    with torch.inference_mode():
        expected = model(images).float()
    got = OnnxRunner("", session)(images)
    if got.shape != expected.shape:
        raise NotExportable(
            f"its graph gives shape {tuple(got.shape)}, torch {tuple(expected.shape)}"
        )
    error = float((got - expected).abs().max()) if got.numel() else 0.0
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    if not error <= _TOLERANCE * scale:
        raise NotExportable(f"its graph differs from torch by {error:.3g} on a random batch")


def _cached_file(key: str) -> Path | None:
    path = onnx_cache_dir() / f"{key}.onnx"
    if not path.is_file():
        return None
    with contextlib.suppress(OSError):  # most recently used: evicted last
        os.utime(path)
    return path


def _store(key: str, graph: bytes) -> None:
    """Write the graph to the disk cache and drop the least recently used beyond
    :data:`MAX_CACHED_GRAPHS`; a cache that cannot be written is only a lost speed-up."""
    folder = onnx_cache_dir()
    try:
        with atomic_write(folder / f"{key}.onnx", expected_size=len(graph)) as stream:
            stream.write(graph)
        graphs = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError as exc:  # StorageError is an OSError too
        logger.debug("ONNX graph not cached in %s (%s)", folder, _first_line(exc))
        return
    for old in graphs[MAX_CACHED_GRAPHS:]:
        with contextlib.suppress(OSError):  # another process may have removed it
            old.unlink()


def _export_and_verify(
    model: nn.Module, size: tuple[int, int], threads: int, persist: bool, key: str
) -> Any:
    graph = _export_bytes(model, size)
    try:
        session = open_session(graph, threads)
    except ImportError:
        raise
    except Exception as exc:  # an operator onnxruntime cannot run
        raise NotExportable(f"onnxruntime cannot load its graph ({_first_line(exc)})") from exc
    _verify(model, session, size)
    if persist:
        _store(key, graph)
    return session


def onnx_runner(model: nn.Module, image_size: Sequence[int], *, persist: bool = True) -> OnnxRunner:
    """The :class:`OnnxRunner` of ``model.forward`` at ``image_size`` ``(H, W)``: from the
    memory cache, else the disk cache, else exported (and verified) now.

    Args:
        model: a feature network on the CPU, in eval mode.
        image_size: the input's ``(H, W)``.
        persist: keep a freshly exported graph in the disk cache too (off for transient
            weights, such as one camera's BatchNorm statistics).

    Raises:
        NotExportable: the model does not export, or its graph does not reproduce torch's
            output; the message is one line.
        ImportError: onnxruntime is not installed.
    """
    size = (int(image_size[0]), int(image_size[1]))
    threads = torch.get_num_threads()
    architecture = graph_key(model, size, values=False)
    with _lock:
        if architecture in _failures:
            raise NotExportable(_failures[architecture], repeated=True)
    key = graph_key(model, size)
    with _lock:
        session = _sessions.get((key, threads))
        if session is not None:
            _sessions.move_to_end((key, threads))
            return OnnxRunner(key, session)
    cached = _cached_file(key)
    session = None
    if cached is not None:
        try:
            session = open_session(cached, threads)
        except Exception as exc:  # a damaged file: export again
            logger.debug("cached ONNX graph %s unreadable (%s)", cached, _first_line(exc))
    if session is None:
        try:
            session = _export_and_verify(model, size, threads, persist, key)
        except NotExportable as exc:
            with _lock:
                _failures[architecture] = str(exc)
                while len(_failures) > _MAX_FAILURES:
                    _failures.popitem(last=False)
            raise
    with _lock:
        _sessions[(key, threads)] = session
        while len(_sessions) > MAX_SESSIONS:
            _sessions.popitem(last=False)
    return OnnxRunner(key, session)
