"""TrainConfig: coercion, YAML loading, precedence and validation."""

from __future__ import annotations

import pytest

from crossreid.errors import ConfigError
from crossreid.training.config import (
    POOLING_CHOICES,
    TrainConfig,
    build_config,
    coerce_value,
    load_config_file,
    parse_image_size,
)


def valid(**changes) -> TrainConfig:
    values = {"source": "synthetic:A", "target": "synthetic:B", **changes}
    return TrainConfig(**values)


def test_defaults_follow_the_design():
    c = valid()
    c.validate()
    assert (c.w_cls, c.w_rec, c.w_dif, c.w_mmd, c.w_ctr, c.w_tri) == (1.0, 0.1, 0.1, 0.1, 0.1, 0.0)
    assert (c.optimizer, c.momentum, c.weight_decay) == ("sgd", 0.9, 5e-4)
    assert c.backbone == "resnet50" and c.image_size == (224, 224)


def test_to_dict_is_plain_and_round_trips():
    c = valid(image_size=(128, 64), milestones=(10, 20), mmd_bandwidths=(0.5, 1.0))
    d = c.to_dict()
    assert d["image_size"] == [128, 64] and d["milestones"] == [10, 20]
    assert TrainConfig.from_dict(d) == c


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256x128", (256, 128)), ("64,32", (64, 32)), ([32, 16], (32, 16)), (224, (224, 224))],
)
def test_parse_image_size(text, expected):
    assert parse_image_size(text) == expected


@pytest.mark.parametrize("bad", ["256", "axb", "256x128x3", "0x10", [1, 2, 3]])
def test_parse_image_size_rejects(bad):
    if bad == "256":  # a single number means a square image
        assert parse_image_size(bad) == (256, 256)
        return
    with pytest.raises(ConfigError, match="image_size"):
        parse_image_size(bad)


def test_coerce_values_from_strings():
    assert coerce_value("max_steps", "30") == 30
    assert coerce_value("lr", "1e-3") == pytest.approx(1e-3)
    assert coerce_value("amp", "yes") is True and coerce_value("amp", "off") is False
    assert coerce_value("milestones", "10, 20") == (10, 20)
    assert coerce_value("target", "null") is None
    with pytest.raises(ConfigError, match="max_steps: 'ten'"):
        coerce_value("max_steps", "ten")
    with pytest.raises(ConfigError, match="batch_size"):
        coerce_value("batch_size", 2.5)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown option 'w_reconstruction'"):
        TrainConfig.from_dict({"source": "x", "w_reconstruction": 1})


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "source: synthetic:A\ntarget: synthetic:B\nmax-steps: 50\nlr: 0.002\n"
        "image_size: 128x64\nw_mmd: 0.5\n"
    )
    assert load_config_file(path)["max_steps"] == 50
    c = build_config(path, {"max_steps": "7", "w_mmd": 0})
    assert (c.max_steps, c.lr, c.image_size, c.w_mmd) == (7, 0.002, (128, 64), 0.0)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("lr: [1, 2\n", "not valid YAML at line"),
        ("- just\n- a list\n", "must be a mapping"),
        ("nonsense_key: 1\n", "unknown option 'nonsense_key'"),
        ("batch_size: many\n", "batch_size: 'many'"),
    ],
)
def test_bad_config_files(tmp_path, content, match):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        build_config(path)


def test_missing_or_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*missing.yaml"):
        load_config_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path)  # a directory


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"batch_size": 10, "num_instances": 4},
            "batch_size 10 is not divisible by num_instances 4",
        ),
        ({"num_instances": 1, "batch_size": 8}, "num_instances must be >= 2"),
        ({"target": None}, "mode adapt needs a target"),
        ({"source": None}, "no source dataset"),
        ({"mode": "semi"}, "mode is 'semi'"),
        ({"dist_metric": "hamming"}, "dist_metric"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"w_mmd": -1.0}, "w_mmd must be a finite number >= 0"),
        ({"device": "gpu0"}, "device 'gpu0'"),
        ({"image_size": (8, 8)}, "at least 16"),
        ({"w_cls": 0.0, "w_ctr": 0.0}, "nothing teaches"),
        ({"resume": "a", "init_from": "b"}, "exclusive"),
        ({"max_rank": 10}, "max_rank must be >= 20"),
        ({"pooling": "avg"}, "pooling is 'avg'; expected one of max, gem"),
        ({"restart_every": -5}, "restart_every must be >= 0"),
        (
            {"restart_every": 50, "schedule": "step"},
            r"needs schedule cosine, got 50 \(schedule step",
        ),
    ],
)
def test_validation_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        valid(**changes).validate()


def test_pooling_choices_are_the_models():
    from crossreid.models.pooling import POOLINGS  # imports torch, which the config does not

    assert POOLING_CHOICES == POOLINGS
    assert valid().pooling == "max"


def test_modes():
    valid(mode="source-only", target=None).validate()  # evaluates on the source then
    valid(mode="oracle", source=None).validate()
    with pytest.raises(ConfigError, match="oracle"):
        valid(mode="oracle", target=None).validate()
    assert valid().uses_target_batches
    assert not valid(mode="source-only").uses_target_batches
    assert not valid(w_mmd=0, w_rec=0, w_dif=0).uses_target_batches


def test_crop_padding_scales_with_image_height_unless_given():
    # 10 px at the usual 256x128 re-ID size; small images get a proportional shift so the
    # random crop cannot move the person out of view.
    assert TrainConfig(image_size=(256, 128)).effective_crop_padding == 10
    assert TrainConfig(image_size=(64, 32)).effective_crop_padding == 2
    assert TrainConfig(image_size=(32, 16), crop_padding=0).effective_crop_padding == 0
    with pytest.raises(ConfigError, match="crop_padding must be >= 0"):
        TrainConfig(source="synthetic:A", target="synthetic:B", crop_padding=-1).validate()
