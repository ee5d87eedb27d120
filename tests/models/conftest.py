"""Shared small-model settings for the model tests (tiny backbone, tiny images)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from crossreid.models import CrossDomainReID

SMALL = {
    "backbone": "resnet18",
    "num_classes": 3,
    "image_size": (64, 32),
    "decoder_widths": (32, 16, 8, 8),
}


def _small_model(**overrides) -> CrossDomainReID:
    torch.manual_seed(0)
    return CrossDomainReID(**{**SMALL, **overrides})


@pytest.fixture
def make_small() -> Callable[..., CrossDomainReID]:
    """Build a resnet18, 64×32 model (seeded); keyword arguments override the settings."""
    return _small_model


@pytest.fixture(scope="module")
def small() -> CrossDomainReID:
    """A shared small model in eval mode (tests must not modify it)."""
    return _small_model().eval()
