"""Shared fixtures of the training tests: tiny synthetic domains and a tiny configuration."""

from __future__ import annotations

import pytest

from crossreid.training.config import TrainConfig

#: Tiny domains: 6 training identities x 4 images each, 64x32 pixels.
SOURCE = "synthetic:A?ids=12&images=4&cameras=2&size=64x32"
TARGET = "synthetic:B?ids=12&images=4&cameras=2&size=64x32"


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every training test runs on one torch thread (see ``one_torch_thread``)."""


@pytest.fixture(autouse=True)
def _synthetic_cache_env(synthetic_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    # Generated domains go to a per-session folder, never to the user's cache.
    monkeypatch.setenv("CROSSREID_CACHE", str(synthetic_cache))


def make_tiny_config(output, **overrides) -> TrainConfig:
    """resnet18 at 32x16, batch 8 (P=4, K=2), small decoder, CPU, no loader workers."""
    values = dict(
        source=SOURCE,
        target=TARGET,
        output=str(output),
        backbone="resnet18",
        pretrained="none",
        image_size=(32, 16),
        decoder_widths=(64, 32, 16, 8),
        batch_size=8,
        num_instances=2,
        max_steps=4,
        warmup_steps=2,
        lr=0.01,
        eval_every=100,
        log_every=2,
        image_every=2,
        eval_batch_size=64,
        workers=0,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def tiny_config():
    """Factory ``tiny_config(output, **overrides) -> TrainConfig``."""
    return make_tiny_config
