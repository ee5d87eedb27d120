"""The cross-domain re-ID network: identity encoder, pose encoder, decoder, classifier.

Example::

    model = CrossDomainReID(backbone="resnet50", num_classes=702, pretrained="imagenet")
    id_map, id_vec = model.encode_identity(anchor)          # [B, 2048, 7, 7], [B, 2048]
    pose_map, pose_vec = model.encode_pose(jitter(positive))
    reconstruction = model.decode(id_map, pose_map)         # [B, 3, 224, 224]
    logits = model.classify(id_vec)                         # [B, 702]
    features = model(images)                                # re-ID features [B, 2048]
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossreid.errors import ConfigError
from crossreid.models.backbones import (
    TRUNK_STRIDE,
    backbone_spec,
    build_trunk,
    load_trunk_state_dict,
    resolve_pretrained,
)
from crossreid.models.decoder import Decoder
from crossreid.models.pooling import build_pooling

__all__ = ["CrossDomainReID", "IdentityEncoder", "PoseEncoder"]


class _ResNetEncoder(nn.Module):
    """A ResNet trunk followed by global pooling (max, or GeM: :mod:`crossreid.models.pooling`).

    ``forward(x)``: ``[B, 3, H, W]`` → ``(map [B, C, ceil(H/32), ceil(W/32)], vector [B, C])``.
    """

    def __init__(self, backbone: str, pooling: str = "max") -> None:
        super().__init__()
        self.trunk = build_trunk(backbone)
        self.channels = backbone_spec(backbone).channels
        self.pool = build_pooling(pooling)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.trunk(x)
        return feature_map, self.pool(feature_map)


class IdentityEncoder(_ResNetEncoder):
    """Encodes who the person is (appearance); its pooled vector is the re-ID feature.

    ``pooling``: ``"max"`` (the default) or ``"gem"`` (generalised mean, learnable exponent).
    """


class PoseEncoder(_ResNetEncoder):
    """Encodes pose and layout; fed colour-jittered images so it cannot carry clothing colour."""


def _image_size(value: Any) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"image_size must be (height, width), got {value!r}") from None
    if height < 1 or width < 1:
        raise ConfigError(f"image_size must be positive, got {value!r}")
    return height, width


#: Decoder widths of the design (seed architecture) for a 2048-channel trunk.
DESIGN_DECODER_WIDTHS = (2048, 512, 256, 64)


def default_decoder_widths(trunk_channels: int) -> tuple[int, ...]:
    """The design's decoder widths scaled by ``trunk_channels / 2048`` (at least 8 each)."""
    return tuple(max(8, w * trunk_channels // 2048) for w in DESIGN_DECODER_WIDTHS)


class CrossDomainReID(nn.Module):
    """ARN-style network with separate identity and pose encoders and a shared decoder.

    Args:
        backbone: ``"resnet18" | "resnet34" | "resnet50" | "resnet101"``; both encoders use
            their own (unshared) copy.
        num_classes: number of source identities for the classifier (required).
        pretrained: ``None`` / ``"none"`` (random init), ``"imagenet"`` (torchvision weights,
            see :mod:`crossreid.models.backbones`) or a path to a torchvision-format ResNet
            state dict; loaded into both trunks.
        image_size: ``(H, W)`` of input images and of reconstructions.
        decoder_widths: output channels of the decoder's upsampling blocks. ``None`` (the
            default) gives the design's ``(2048, 512, 256, 64)`` for the 2048-channel trunks
            (resnet50/101) and the same widths scaled by the trunk's channels otherwise
            (``(512, 128, 64, 16)`` for resnet18/34), so a small backbone does not get a
            decoder several times its own cost.
        dropout: dropout probability before the classifier.
        normalize_features: L2-normalise the vector returned by :meth:`forward`.
        pooling: how the identity encoder pools its map into the identity vector:
            ``"max"`` (global max pooling) or ``"gem"`` (generalised-mean pooling with a
            learnable exponent, see :mod:`crossreid.models.pooling`). The pose encoder
            always max-pools.

    Attributes:
        config: the constructor arguments as plain data (rebuild with :meth:`from_config`).
        feature_dim: size of identity/pose vectors (2048 for resnet50/101, 512 for 18/34).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int | None = None,
        pretrained: str | os.PathLike[str] | None = None,
        image_size: Sequence[int] = (224, 224),
        decoder_widths: Sequence[int] | None = None,
        dropout: float = 0.0,
        normalize_features: bool = False,
        pooling: str = "max",
    ) -> None:
        super().__init__()
        spec = backbone_spec(backbone)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
        image_size = _image_size(image_size)
        if decoder_widths is None:
            decoder_widths = default_decoder_widths(spec.channels)
        widths = [int(w) for w in decoder_widths]
        if not widths or min(widths) < 1:
            raise ConfigError(
                f"decoder_widths must be a non-empty list of positive ints, got {decoder_widths!r}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")

        self.config: dict[str, Any] = {
            "backbone": backbone,
            "num_classes": num_classes,
            "pretrained": None if pretrained is None else os.fspath(pretrained),
            "image_size": list(image_size),
            "decoder_widths": widths,
            "dropout": float(dropout),
            "normalize_features": bool(normalize_features),
            "pooling": pooling,
        }
        self.feature_dim = spec.channels
        self.image_size = image_size
        self.normalize_features = bool(normalize_features)
        self.map_size = (
            math.ceil(image_size[0] / TRUNK_STRIDE),
            math.ceil(image_size[1] / TRUNK_STRIDE),
        )

        self.identity_encoder = IdentityEncoder(backbone, pooling)
        self.pose_encoder = PoseEncoder(backbone)
        self.decoder = Decoder(2 * spec.channels, widths, image_size)
        self.classifier_dropout = nn.Dropout(float(dropout))
        self.classifier = nn.Linear(spec.channels, num_classes)
        # Small init keeps the initial logits near uniform (common practice for re-ID heads).
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

        state_dict = resolve_pretrained(backbone, pretrained)
        if state_dict is not None:
            source = f"pretrained weights {self.config['pretrained']!r}"
            load_trunk_state_dict(self.identity_encoder.trunk, state_dict, source)
            load_trunk_state_dict(self.pose_encoder.trunk, state_dict, source)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], pretrained: str | os.PathLike[str] | None = None
    ) -> CrossDomainReID:
        """Rebuild a model from :attr:`config`; ``pretrained`` overrides the stored value
        (``None`` by default: the weights are expected to come from a checkpoint). Keys
        added after a checkpoint was written take their defaults (``pooling``: max)."""
        known = {
            "backbone",
            "num_classes",
            "image_size",
            "decoder_widths",
            "dropout",
            "normalize_features",
            "pooling",
        }
        unknown = sorted(set(config) - known - {"pretrained"})
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        kwargs = {key: config[key] for key in known if key in config}
        return cls(pretrained=pretrained, **kwargs)

    def encode_identity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` → ``(identity map [B, C, h, w], identity vector [B, C])``."""
        return self.identity_encoder(x)

    def encode_pose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` → ``(pose map [B, C, h, w], pose vector [B, C])``."""
        return self.pose_encoder(x)

    def decode(self, identity_map: torch.Tensor, pose_map: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` × 2 → reconstruction ``[B, 3, H, W]`` (normalised-image space)."""
        return self.decoder(torch.cat((identity_map, pose_map), dim=1))

    def classify(self, identity_vector: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` → source-identity logits ``[B, num_classes]``."""
        return self.classifier(self.classifier_dropout(identity_vector))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Re-ID features: ``[B, 3, H, W]`` → identity vector ``[B, C]``
        (L2-normalised when ``normalize_features``)."""
        _, vector = self.identity_encoder(x)
        if self.normalize_features:  # a constant attribute: exports trace it away
            vector = F.normalize(vector, dim=1)
        return vector

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the two (pretrained) trunks."""
        yield from self.identity_encoder.trunk.parameters()
        yield from self.pose_encoder.trunk.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the newly initialised layers: decoder, classifier and the
        identity encoder's pooling (GeM's exponent; max pooling has none)."""
        yield from self.decoder.parameters()
        yield from self.classifier.parameters()
        yield from self.identity_encoder.pool.parameters()

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config.items())
