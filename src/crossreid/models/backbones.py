"""ResNet trunks (conv1 … layer4) and their ImageNet / local-file initialisation.

A trunk is an ``nn.Sequential`` whose child names are torchvision's (``conv1``, ``bn1``,
``relu``, ``maxpool``, ``layer1`` … ``layer4``), so its state dict has exactly the keys of
a torchvision ResNet state dict without ``fc.*``. That is what lets a file downloaded by
torchvision (or saved with ``torchvision.models.resnet50().state_dict()``) be loaded into a
trunk strictly, key for key.

ImageNet weights come from torchvision's weights API: ``<Backbone>_Weights.DEFAULT``, which
is ``IMAGENET1K_V2`` for resnet50/resnet101 and ``IMAGENET1K_V1`` for resnet18/resnet34
(the only set torchvision publishes for those). They are fetched with
``torch.hub.load_state_dict_from_url``, i.e. read from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``) when present and downloaded otherwise.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torchvision
from torch import nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
)

from crossreid.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "build_trunk",
    "imagenet_state_dict",
    "load_trunk_state_dict",
    "read_resnet_state_dict",
    "resolve_pretrained",
    "TRUNK_STRIDE",
]

#: Total downsampling of a ResNet trunk: a H×W input gives a ceil(H/32)×ceil(W/32) map.
TRUNK_STRIDE = 32

_TRUNK_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class BackboneSpec(NamedTuple):
    """How to build one ResNet variant: torchvision constructor, weights enum, output channels."""

    builder: Callable[..., torchvision.models.ResNet]
    weights: Any  # a torchvision WeightsEnum class
    channels: int


#: Supported backbones, by name.
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(torchvision.models.resnet18, ResNet18_Weights, 512),
    "resnet34": BackboneSpec(torchvision.models.resnet34, ResNet34_Weights, 512),
    "resnet50": BackboneSpec(torchvision.models.resnet50, ResNet50_Weights, 2048),
    "resnet101": BackboneSpec(torchvision.models.resnet101, ResNet101_Weights, 2048),
}


def backbone_spec(name: str) -> BackboneSpec:
    """Look up a backbone by name; :class:`ConfigError` listing the choices if unknown."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}"
        ) from None


def build_trunk(name: str) -> nn.Sequential:
    """A randomly initialised ResNet trunk: conv1 … layer4, no avg-pool and no fc.

    Input ``[B, 3, H, W]`` → output ``[B, C, ceil(H/32), ceil(W/32)]`` with C = 512
    (resnet18/34) or 2048 (resnet50/101).
    """
    resnet = backbone_spec(name).builder(weights=None)
    return nn.Sequential(OrderedDict((child, getattr(resnet, child)) for child in _TRUNK_CHILDREN))


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # Weights saved from a DataParallel/DDP or torch.compile wrapper carry these prefixes.
    result = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if result and all(key.startswith(prefix) for key in result):
            result = {key[len(prefix) :]: value for key, value in result.items()}
    return result


def read_resnet_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a torchvision-format ResNet state dict from a local file (``weights_only``).

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``
    (with optional ``module.`` prefixes). Raises :class:`CheckpointError` for a missing,
    unreadable or non-state-dict file.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"pretrained weights file {path} {what}; expected a torchvision ResNet state dict (.pth)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read pretrained weights {path}: {reason}") from None
    if isinstance(data, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(data.get(wrapper), Mapping):
                data = data[wrapper]
                break
    if not isinstance(data, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in data.values()
    ):
        raise CheckpointError(
            f"pretrained weights {path} are not a state dict (a mapping of names to tensors)"
        )
    return _strip_prefixes(data)


def load_trunk_state_dict(
    trunk: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load a torchvision ResNet state dict into ``trunk``, strictly on the trunk keys.

    ``fc.*`` keys are ignored (the trunk has no fc). Any missing, unexpected or mismatched
    key raises :class:`CheckpointError` naming up to five of them and ``source``.
    """
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
    expected = trunk.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{label}: {', '.join(keys[:5])}{more}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the trunk ({'; '.join(problems)}); "
            "expected a torchvision state dict of the same ResNet variant"
        )
    trunk.load_state_dict(state_dict, strict=True)


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict of ``backbone`` (``<Weights>.DEFAULT``).

    Read from the torch hub cache when present, downloaded otherwise. When neither works
    (no network), raises :class:`CheckpointError` with a one-line message saying how to
    proceed (``--pretrained PATH`` or ``--pretrained none``).
    """
    weights = backbone_spec(backbone).weights.DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        # Looked up on the module at call time so tests can replace it.
        state_dict = torch.hub.load_state_dict_from_url(
            weights.url, progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"ImageNet weights for {backbone} ({weights}) are not in the torch hub cache "
            f"({cache}) and could not be downloaded ({reason}); pass --pretrained PATH to a "
            f"local torchvision {backbone} state dict (e.g. a copy of {weights.url}) "
            "or --pretrained none to train from scratch"
        ) from None
    logger.info("loaded ImageNet weights %s for %s", weights, backbone)
    return _strip_prefixes(state_dict)


def _no_weights(backbone: str) -> None:
    return None


def _weights_from_file(backbone: str, path: str) -> dict[str, torch.Tensor]:
    return read_resnet_state_dict(path)


_PRETRAINED_SOURCES: dict[str, Callable[[str], dict[str, torch.Tensor] | None]] = {
    "none": _no_weights,
    "imagenet": imagenet_state_dict,
}


def resolve_pretrained(
    backbone: str, pretrained: str | os.PathLike[str] | None
) -> dict[str, torch.Tensor] | None:
    """The state dict to initialise both trunks with, or ``None`` for random initialisation.

    ``pretrained`` is ``None`` / ``"none"`` (random), ``"imagenet"`` (torchvision weights)
    or a path to a local torchvision-format ResNet state dict.
    """
    key = "none" if pretrained is None else os.fspath(pretrained)
    source = _PRETRAINED_SOURCES.get(key.lower())
    if source is not None:
        return source(backbone)
    return _weights_from_file(backbone, key)
