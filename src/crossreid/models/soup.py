"""Weight averaging of runs trained from one start (a "model soup").

Runs fine-tuned from the same weights with different random streams (batch order,
augmentation) end close together, and the average of their weights is usually a better
model than each of them (Wortsman et al., "Model soups", ICML 2022). The pseudo-label stage
is such a case: each run learns from noisy pseudo-labels, and each memorises different
mistakes; averaging keeps what the runs share (measured in docs/demo-measurements.md).

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


class _RunningMean:
    """The element-wise mean of state dicts added one at a time: float64 sums of the
    floating-point tensors, integer buffers from the first. Only the sums are kept, so
    averaging many runs holds one run's weights in memory at a time (plus the sums)."""

    def __init__(self, first: Mapping[str, torch.Tensor], name: str) -> None:
        self.name = name
        self.dtypes = {key: value.dtype for key, value in first.items()}
        # One copy per tensor: floating-point ones straight to float64, the others as they are.
        self.sums = {
            key: value.detach().to("cpu", torch.float64 if value.is_floating_point() else None,
                                   copy=True)
            for key, value in first.items()
        }  # fmt: skip
        self.count = 1

    def add(self, state: Mapping[str, torch.Tensor], name: str) -> None:
        missing = sorted(set(self.sums) - set(state))
        extra = sorted(set(state) - set(self.sums))
        if missing or extra:
            shown = ", ".join(
                [*(f"missing {k}" for k in missing[:3]), *(f"extra {k}" for k in extra[:3])]
            )
            raise CheckpointError(
                f"{name} has other weights than {self.name} ({shown}): only runs of one "
                "architecture can be averaged"
            )
        for key, dtype in self.dtypes.items():
            other = state[key]
            shape = self.sums[key].shape
            if other.shape != shape or other.dtype != dtype:
                raise CheckpointError(
                    f"{name} does not match {self.name} at {key}: {tuple(other.shape)} "
                    f"{other.dtype} against {tuple(shape)} {dtype}; only runs of "
                    "one architecture can be averaged"
                )
        for key, dtype in self.dtypes.items():
            if dtype.is_floating_point:
                self.sums[key] += state[key].detach().to("cpu", torch.float64)
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        return {
            key: (total / self.count).to(self.dtypes[key])
            if self.dtypes[key].is_floating_point
            else total
            for key, total in self.sums.items()
        }


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
    running = _RunningMean(states[0], names[0])
    for name, state in zip(names[1:], states[1:], strict=True):
        running.add(state, name)
    return running.mean()


def soup_checkpoint(
    paths: Sequence[str | os.PathLike[str]], *, prefer_best: bool = False
) -> dict[str, Any]:
    """The checkpoint of the average of the runs ``paths`` (checkpoint files or run folders).

    The architecture (``config["model"]``) must be the same in every run; the soup keeps
    the first run's configuration and step, and names its runs under ``"soup"``. It holds
    no optimiser or schedule state, so it cannot be resumed; it can be evaluated, exported,
    searched with, and passed to ``--init-from``.

    The runs are read one at a time and added to float64 sums of the weights, so the memory
    needed is one checkpoint (its optimiser state included) and twice the float32 weights,
    however many runs are averaged.

    Raises:
        CheckpointError: fewer than two runs, an unreadable one, or runs of different
            architectures.
    """
    if len(paths) < 2:
        raise CheckpointError(f"a soup averages two runs or more; got {len(paths)}")
    files = [find_checkpoint(path, prefer_best=prefer_best) for path in paths]
    # One run read at a time (its optimiser state included) and added to the running sums.
    first = read_checkpoint(files[0])
    config, step = first["config"], int(first.get("step", 0))
    first_model = config["model"]
    running = _RunningMean(_strip_wrapper_prefixes(first["model"]), str(files[0]))
    del first
    for path in files[1:]:
        checkpoint = read_checkpoint(path)
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
        running.add(_strip_wrapper_prefixes(checkpoint["model"]), str(path))
        del checkpoint
    weights = running.mean()
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": weights,
        "config": config,
        "step": step,
        "soup": [str(path) for path in files],
    }
