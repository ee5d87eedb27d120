"""Weight averaging of runs trained from one start (a "model soup").

Runs fine-tuned from the same weights with different random streams (batch order,
augmentation) end close together, and the average of their weights is usually a better
model than each of them (Wortsman et al., "Model soups", ICML 2022). The pseudo-label stage
is such a case: each run learns from noisy pseudo-labels, and each memorises different
mistakes; averaging keeps what the runs share (measured in the README's demo section).

Floating-point tensors are averaged (summed in float64, then cast back); integer buffers
(BatchNorm's ``num_batches_tracked``) are taken from the first run. BatchNorm's running
statistics are averaged too, which only approximates the statistics of the averaged
weights: evaluate a soup with camera-wise BatchNorm (``--camera-bn``), which recomputes
them, or use it as ``--init-from`` of a run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from crossreid.errors import CheckpointError
from crossreid.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    _strip_wrapper_prefixes,
    find_checkpoint,
    read_checkpoint,
)

__all__ = ["average_state_dicts", "soup_checkpoint"]


def average_state_dicts(
    states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys, shapes and dtypes.

    ``names`` (one per state dict, e.g. file names) make the errors say which one differs.

    Raises:
        CheckpointError: no state dict, or one whose keys, shapes or dtypes differ from
            the first's.
    """
    if not states:
        raise CheckpointError("nothing to average: no state dict given")
    names = (
        list(names) if names is not None else [f"state dict {i + 1}" for i in range(len(states))]
    )
    first = states[0]
    for name, state in zip(names[1:], states[1:], strict=True):
        missing = sorted(set(first) - set(state))
        extra = sorted(set(state) - set(first))
        if missing or extra:
            shown = ", ".join(
                [*(f"missing {k}" for k in missing[:3]), *(f"extra {k}" for k in extra[:3])]
            )
            raise CheckpointError(
                f"{name} has other weights than {names[0]} ({shown}): only runs of one "
                "architecture can be averaged"
            )
        for key, value in first.items():
            other = state[key]
            if other.shape != value.shape or other.dtype != value.dtype:
                raise CheckpointError(
                    f"{name} does not match {names[0]} at {key}: {tuple(other.shape)} "
                    f"{other.dtype} against {tuple(value.shape)} {value.dtype}; only runs of "
                    "one architecture can be averaged"
                )
    averaged = {}
    for key, value in first.items():
        if value.is_floating_point():
            total = sum(state[key].detach().to("cpu", torch.float64) for state in states)
            averaged[key] = (total / len(states)).to(value.dtype)
        else:
            averaged[key] = value.detach().cpu().clone()
    return averaged


def soup_checkpoint(
    paths: Sequence[str | os.PathLike[str]], *, prefer_best: bool = False
) -> dict[str, Any]:
    """The checkpoint of the average of the runs ``paths`` (checkpoint files or run folders).

    The architecture (``config["model"]``) must be the same in every run; the soup keeps
    the first run's configuration and step, and names its runs under ``"soup"``. It holds
    no optimiser or schedule state, so it cannot be resumed; it can be evaluated, exported,
    searched with, and passed to ``--init-from``.

    Raises:
        CheckpointError: fewer than two runs, an unreadable one, or runs of different
            architectures.
    """
    if len(paths) < 2:
        raise CheckpointError(f"a soup averages two runs or more; got {len(paths)}")
    files = [find_checkpoint(path, prefer_best=prefer_best) for path in paths]
    checkpoints = [read_checkpoint(path) for path in files]
    first_model = checkpoints[0]["config"]["model"]
    for path, checkpoint in zip(files[1:], checkpoints[1:], strict=True):
        model = checkpoint["config"]["model"]
        if model != first_model:
            differ = sorted(
                k for k in set(model) | set(first_model) if model.get(k) != first_model.get(k)
            )
            detail = ", ".join(
                f"{k} {first_model.get(k)!r} vs {model.get(k)!r}" for k in differ[:3]
            )
            raise CheckpointError(
                f"{path} has another architecture than {files[0]} ({detail}); only runs of "
                "one architecture can be averaged"
            )
    weights = average_state_dicts(
        [_strip_wrapper_prefixes(c["model"]) for c in checkpoints], [str(p) for p in files]
    )
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": weights,
        "config": checkpoints[0]["config"],
        "step": int(checkpoints[0].get("step", 0)),
        "soup": [str(path) for path in files],
    }
