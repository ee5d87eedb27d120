"""Device resolution: the one place that turns ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` into a
:class:`torch.device` for training, extraction and every command.

Example::

    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import os

import torch

from crossreid.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(
    name: str | torch.device | None = "auto", local_rank: int | None = None
) -> torch.device:
    """``auto`` (or ``None``) / ``cpu`` / ``cuda`` / ``cuda:N`` → a device that exists here.

    ``auto`` picks CUDA when available. A bare ``cuda`` (or ``auto`` on a GPU machine) under
    ``torchrun`` selects ``cuda:LOCAL_RANK``: ``local_rank`` when given, else the
    ``LOCAL_RANK`` environment variable, else 0.

    Raises:
        ConfigError: an unknown device name, CUDA requested on a machine without it, or a
            CUDA index beyond the visible devices.
    """
    if name is None or str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(name)!r} requested but CUDA is not available on this machine "
            "(use --device cpu)"
        )
    if device.index is not None:
        index = device.index
    elif local_rank is not None:
        index = local_rank
    else:
        index = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device cuda:{index} requested but only {torch.cuda.device_count()} CUDA "
            "device(s) are visible"
        )
    return torch.device("cuda", index)
