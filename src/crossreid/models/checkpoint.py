"""The checkpoint file format: atomic writes, safe reads, strict and partial loading.

A checkpoint is a plain dict written with :func:`torch.save` and read back with
``torch.load(..., weights_only=True)``, so opening one never runs code from it::

    {
        "format": "crossreid-checkpoint",
        "version": 1,                              # format version: newer ones are refused
        "model": model.state_dict(),
        "config": {"model": model.config, ...},   # plain data: str/int/float/bool/list/dict/None
        "step": 1200,
        ...                                        # training state (optimiser, scheduler, RNG)
    }

Everything stored must survive ``weights_only`` loading: tensors, and dicts/lists/tuples of
str/int/float/bool/None. (NumPy arrays do not: store ``array.tolist()`` or a tensor.)
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossreid.errors import CheckpointError, ConfigError
from crossreid.models.network import CrossDomainReID
from crossreid.utils.io import atomic_path, atomic_write, format_size, storage_error

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "build_checkpoint",
    "find_checkpoint",
    "link_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "load_partial",
    "read_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "crossreid-checkpoint"
CHECKPOINT_VERSION = 1
_MAX_NAMED_KEYS = 5


def build_checkpoint(
    model: CrossDomainReID,
    *,
    step: int = 0,
    config: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The checkpoint dict for ``model``: format header, weights, ``config["model"]``, step.

    ``config`` holds any further run configuration (plain data); ``extra`` adds top-level
    entries (e.g. ``optimizer=opt.state_dict()``). A model wrapped by DDP or
    ``torch.compile`` should be unwrapped first (``.module`` / ``._orig_mod``).
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "config": {**dict(config or {}), "model": dict(model.config)},
        "step": int(step),
        **extra,
    }


def _payload_nbytes(payload: Any) -> int:
    """Bytes of the distinct tensor storages in ``payload`` (what torch.save writes, bar a
    little pickle overhead)."""
    storages: dict[tuple[str, int], int] = {}
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.layout != torch.strided:  # sparse: no single storage; an estimate
                storages[(str(item.device), id(item))] = item.element_size() * item.numel()
                continue
            storage = item.untyped_storage()
            storages[(str(item.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(storages.values())


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path.

    The dict is saved to a temporary file in the same folder, flushed to disk and then
    renamed over ``path`` (:func:`os.replace`), so a crash mid-write leaves either the old
    file or the new one, never a truncated checkpoint. The ``format`` and ``version``
    header keys are set if absent. Parent folders are created.

    Raises:
        StorageError: no space (the message gives the size needed and free), quota, file
            size limit, permission or read-only file system; the old file is kept.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    size = _payload_nbytes(payload)
    with atomic_write(path, "wb", suffix=".tmp", expected_size=size) as stream:
        torch.save(payload, stream)
    return path


def link_checkpoint(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Make ``path`` hold the same checkpoint as ``source`` without a second copy on disk.

    Training saves ``best.pt`` at the same step as ``last.pt`` whenever the target mAP
    improves; a ResNet-50 checkpoint with its optimiser state is several hundred MB, so
    ``best.pt`` is a hard link to the file just written. This is safe because checkpoints
    are only ever replaced by renaming a new file over the name (:func:`save_checkpoint`),
    never rewritten in place: when ``last.pt`` is next saved, ``best.pt`` keeps the old
    file. The link is made under a temporary name and renamed over ``path``
    (:func:`~crossreid.utils.io.atomic_path`), so ``path`` is never missing or partial;
    where the file system has no hard links, it is copied. Storage failures raise a
    one-line :class:`StorageError`, as for :func:`save_checkpoint`.
    """
    source, path = Path(source), Path(path)
    needed = source.stat().st_size if source.is_file() else None
    with atomic_path(path, ".tmp", expected_size=needed) as temp:
        temp.unlink()  # the link takes the temporary's name
        try:
            os.link(source, temp)
        except OSError:  # no hard links here (or another device): a plain copy
            try:
                shutil.copyfile(source, temp)
            except OSError as exc:  # its errors name the source: say which file failed
                raise (storage_error(exc, path, needed=needed) or exc) from None
    return path


def find_checkpoint(path: str | os.PathLike[str], *, prefer_best: bool = False) -> Path:
    """A checkpoint file or run folder → the checkpoint file to read.

    For a folder: ``checkpoints/last.pt`` (``best.pt`` first when ``prefer_best``), also
    accepting a folder that directly holds them. :class:`CheckpointError` if none exists.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint or run folder {path} does not exist")
    names = ("best.pt", "last.pt") if prefer_best else ("last.pt", "best.pt")
    for folder in (path / "checkpoints", path):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    looked_for = ", ".join(f"checkpoints/{name}" for name in names) + ", " + ", ".join(names)
    raise CheckpointError(f"{path} holds no checkpoint (looked for {looked_for})")


# What a file starts with: a zip archive (what torch.save writes), or a bare pickle (a raw
# pickle or a pre-1.6 torch file, which crossreid never writes).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ANOTHER = "use another checkpoint (best.pt or last.pt of the run) or train again"


def _torch_reason(exc: BaseException) -> str:
    """The first sentence of torch's message, which may run to a paragraph."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")[:160]


def _container_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint, judged without unpickling anything."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            head = stream.read(len(_ZIP_MAGIC))
    except OSError as exc:
        return f"cannot read checkpoint {path}: {exc.strerror or exc}"
    if size == 0:
        return f"checkpoint {path} is empty (0 bytes), not a complete checkpoint; {_ANOTHER}"
    if head.startswith(_PICKLE_MAGIC):
        return (
            f"{path} is not a crossreid checkpoint: it is a bare pickle or a pre-1.6 PyTorch "
            "file, which crossreid does not open (unpickling it could run code); give a "
            "checkpoint written by crossreid train"
        )
    if head != _ZIP_MAGIC:
        return (
            f"{path} is not a crossreid checkpoint: it is not a PyTorch file at all "
            "(it does not start like a zip archive); check the path"
        )
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError, ValueError):
        return (
            f"checkpoint {path} is truncated or damaged ({format_size(size)}, not a complete "
            f"zip archive); {_ANOTHER}"
        )
    return None


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read and validate a crossreid checkpoint (``torch.load(..., weights_only=True)``).

    Raises :class:`CheckpointError` with one line saying what the file is not and what to
    do, for: a missing file, a folder, an empty, truncated or damaged file, a file that is
    not a PyTorch zip archive, one holding anything but plain data and tensors (refused
    before anything in it runs), a plain state dict, any other non-crossreid file, one
    written by a newer format version, and one lacking the model weights or config.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a directory; expected a .pt file (or use "
            "find_checkpoint / load_checkpoint for a run folder)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    problem = _container_problem(path)
    if problem is not None:
        raise CheckpointError(problem)
    try:
        with warnings.catch_warnings():  # torch warns about crafted pickle protocols first
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused something: nothing ran
        found = _REFUSED_GLOBAL.search(str(exc))
        what = (
            f"a Python object ({found.group(1)}) that only running code from the file could rebuild"
            if found
            else "pickled data that is not plain values and tensors (damaged, or made to run code)"
        )
        raise CheckpointError(
            f"{path} is not a crossreid checkpoint: it holds {what}; refused, nothing was run "
            "(open only checkpoints crossreid wrote)"
        ) from None
    except Exception as exc:  # corrupt records, truncated tensors …
        raise CheckpointError(
            f"checkpoint {path} is damaged ({_torch_reason(exc)}); {_ANOTHER}"
        ) from None
    _check_header(path, data)
    return data


def _check_header(path: Path, data: Any) -> None:
    """The loaded object must be a crossreid checkpoint this version can read."""
    if (
        isinstance(data, Mapping)
        and data
        and all(isinstance(v, torch.Tensor) for v in data.values())
    ):
        raise CheckpointError(
            f"{path} is a plain state dict ({len(data)} tensors, e.g. {next(iter(data))}), "
            "not a crossreid checkpoint; to start training from these backbone weights pass "
            "it as --pretrained PATH"
        )
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a crossreid checkpoint (no 'format': '{CHECKPOINT_FORMAT}' entry); "
            "give a checkpoint written by crossreid train (a run's checkpoints/last.pt)"
        )
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"checkpoint {path} has an invalid format version {version!r}; it is damaged "
            f"or was not written by crossreid; {_ANOTHER}"
        )
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was written by a newer crossreid (format {version}, this "
            f"one reads up to {CHECKPOINT_VERSION}); upgrade crossreid"
        )
    model_config = (
        data.get("config", {}).get("model") if isinstance(data.get("config"), dict) else None
    )
    if not isinstance(data.get("model"), Mapping) or not isinstance(model_config, dict):
        raise CheckpointError(
            f"checkpoint {path} lacks its 'model' weights or its 'config'/'model' entry; "
            f"it was not written by crossreid train; {_ANOTHER}"
        )


def _strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # State dicts taken from a DDP or torch.compile wrapper carry these prefixes.
    result = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if result and all(key.startswith(prefix) for key in result):
            result = {key[len(prefix) :]: value for key, value in result.items()}
    return result


def _describe(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_NAMED_KEYS} more)" if len(keys) > _MAX_NAMED_KEYS else ""
    return ", ".join(keys[:_MAX_NAMED_KEYS]) + more


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def load_model_state(
    model: nn.Module, state_dict: Mapping[str, Any], source: str = "checkpoint"
) -> None:
    """Load ``state_dict`` into ``model`` strictly, with a readable error on mismatch.

    Raises :class:`CheckpointError` naming up to five missing, unexpected and
    shape-mismatched keys (with both shapes) and ``source`` (e.g. the file name).
    """
    state_dict = _strip_wrapper_prefixes(state_dict)
    expected = model.state_dict()
    missing = [f"{k} {tuple(v.shape)}" for k, v in expected.items() if k not in state_dict]
    unexpected = [f"{k} {_shape(v)}" for k, v in state_dict.items() if k not in expected]
    mismatched = [
        f"{k} {_shape(state_dict[k])} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and _shape(state_dict[k]) != tuple(v.shape)
    ]
    problems = [
        f"{label} {_describe(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not match the model architecture: {'; '.join(problems)}"
        )
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    *,
    prefer_best: bool = False,
) -> CrossDomainReID:
    """Rebuild the model stored in a checkpoint, from the checkpoint alone.

    ``path`` is a checkpoint file or a run folder (see :func:`find_checkpoint`; ``best.pt``
    first when ``prefer_best``). The architecture comes from ``config["model"]`` (no
    pretrained weights are fetched); the weights are loaded strictly. Returns the model in
    eval mode on ``map_location``; every failure is a one-line :class:`CheckpointError`.
    """
    path = find_checkpoint(path, prefer_best=prefer_best)
    checkpoint = read_checkpoint(path, map_location=map_location)
    try:
        model = CrossDomainReID.from_config(checkpoint["config"]["model"], pretrained=None)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
    load_model_state(model, checkpoint["model"], source=f"checkpoint {path}")
    if map_location is not None:
        model.to(map_location)
    return model.eval()


def load_partial(model: nn.Module, state_dict: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Load the entries of ``state_dict`` that fit ``model`` (for ``--init-from``).

    Keys absent from the model or whose shape differs (typically the classifier when the
    number of classes differs) are skipped and logged; model entries the state dict lacks
    keep their current values. ``state_dict`` may also be a whole checkpoint dict (its
    ``"model"`` entry is used).

    Returns:
        ``(loaded_keys, skipped_keys)``.

    Raises:
        CheckpointError: if not a single key could be loaded (another architecture).
    """
    if state_dict.get("format") == CHECKPOINT_FORMAT:
        state_dict = state_dict["model"]
    state_dict = _strip_wrapper_prefixes(state_dict)
    expected = model.state_dict()
    loadable = {
        key: value
        for key, value in state_dict.items()
        if key in expected and _shape(value) == tuple(expected[key].shape)
    }
    skipped = [key for key in state_dict if key not in loadable]
    if not loadable:
        raise CheckpointError(
            f"none of the {len(state_dict)} weights fit the model (e.g. {_describe(skipped)}); "
            "is it a checkpoint of another backbone?"
        )
    model.load_state_dict(loadable, strict=False)
    untouched = [key for key in expected if key not in loadable]
    for key in skipped:
        reason = "shape" if key in expected else "not in model"
        logger.warning(
            "init-from: skipped %s (%s: %s vs %s)",
            key,
            reason,
            _shape(state_dict[key]),
            _shape(expected.get(key)),
        )
    if untouched:
        logger.info("init-from: %d model entries keep their initial values", len(untouched))
    return list(loadable), skipped
