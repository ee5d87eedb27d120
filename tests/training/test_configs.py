"""The YAML files of configs/: every one is a valid configuration of the two-stage recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossreid.training.config import build_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_each_experiment_has_both_stages():
    names = {path.stem for path in CONFIGS}
    for pair in ("duke2market", "market2duke", "market2msmt"):
        assert {f"{pair}_arn", f"{pair}_cluster"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_stage_two_starts_from_stage_one(path):
    config = build_config(path)
    assert config.method == path.stem.rsplit("_", 1)[1]
    assert config.image_size == (256, 128) and config.backbone == "resnet50"
    if config.method == "cluster":
        arn = build_config(path.with_name(path.stem.replace("_cluster", "_arn") + ".yaml"))
        assert config.init_from == arn.output
        assert (config.source, config.target) == (arn.source, arn.target)
