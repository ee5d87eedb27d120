"""Tests of crossreid.models.network: shapes, parameter groups, config, export-friendliness."""

from __future__ import annotations

import json

import pytest
import torch

from crossreid.errors import ConfigError
from crossreid.models import CrossDomainReID, Decoder, IdentityEncoder, PoseEncoder
from crossreid.models.network import default_decoder_widths
from crossreid.models.pooling import GeneralizedMeanPooling, GlobalMaxPooling


@pytest.mark.parametrize(
    ("image_size", "map_size"),
    [((224, 224), (7, 7)), ((256, 128), (8, 4))],
)
def test_full_size_shapes(image_size, map_size):
    torch.manual_seed(0)
    model = CrossDomainReID("resnet50", num_classes=10, image_size=image_size).eval()
    x = torch.randn(1, 3, *image_size)
    with torch.inference_mode():
        identity_map, identity_vector = model.encode_identity(x)
        pose_map, pose_vector = model.encode_pose(x)
        reconstruction = model.decode(identity_map, pose_map)
        features = model(x)
        logits = model.classify(identity_vector)
    assert identity_map.shape == pose_map.shape == (1, 2048, *map_size)
    assert identity_vector.shape == pose_vector.shape == (1, 2048)
    assert reconstruction.shape == (1, 3, *image_size)
    assert logits.shape == (1, 10)
    assert model.feature_dim == 2048
    # global MAX pooling, and forward() is the identity vector
    assert torch.equal(identity_vector, identity_map.amax(dim=(2, 3)))
    assert torch.equal(features, identity_vector)
    # the decoder input is the 4096-channel concatenation
    assert model.decoder.blocks[0][1].in_channels == 4096


def test_encoders_are_separate_classes_with_no_shared_parameters(small):
    assert isinstance(small.identity_encoder, IdentityEncoder)
    assert isinstance(small.pose_encoder, PoseEncoder)
    identity = {p.data_ptr() for p in small.identity_encoder.parameters()}
    pose = {p.data_ptr() for p in small.pose_encoder.parameters()}
    assert identity and pose and not identity & pose


def test_small_shapes(small):
    x = torch.randn(2, 3, 64, 32)
    with torch.inference_mode():
        identity_map, identity_vector = small.encode_identity(x)
        pose_map, _ = small.encode_pose(x)
        reconstruction = small.decode(identity_map, pose_map)
    assert identity_map.shape == (2, 512, 2, 1)
    assert identity_vector.shape == (2, 512)
    assert reconstruction.shape == (2, 3, 64, 32)
    assert small.feature_dim == 512


@pytest.mark.parametrize(
    ("map_size", "image_size"),
    [((2, 1), (64, 32)), ((4, 2), (128, 64)), ((2, 1), (50, 30)), ((3, 3), (70, 90))],
)
def test_decoder_output_equals_image_size(map_size, image_size):
    decoder = Decoder(16, widths=(8, 8, 4, 4), output_size=image_size).eval()
    with torch.inference_mode():
        out = decoder(torch.randn(2, 16, *map_size))
    assert out.shape == (2, 3, *image_size)


def test_decoder_widths_are_configurable(make_small):
    model = make_small(decoder_widths=(24, 12))
    convs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1024, 24), (24, 12), (12, 3)]
    with torch.inference_mode():
        maps = torch.zeros(1, 512, 2, 1)
        assert model.eval().decode(maps, maps).shape == (1, 3, 64, 32)


@pytest.mark.parametrize(
    ("backbone", "channels", "expected"),
    [("resnet50", 2048, (2048, 512, 256, 64)), ("resnet18", 512, (512, 128, 64, 16))],
)
def test_default_decoder_widths_scale_with_the_trunk(backbone, channels, expected):
    # The design's widths for 2048-channel trunks; scaled by channels / 2048 otherwise.
    assert default_decoder_widths(channels) == expected
    if backbone == "resnet18":
        model = CrossDomainReID(backbone, num_classes=3, image_size=(64, 32))
        assert model.config["decoder_widths"] == list(expected)
        convs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs[0].in_channels == 2 * channels and convs[0].out_channels == expected[0]


def test_parameter_groups_partition_the_model(small):
    backbone = {id(p) for p in small.backbone_parameters()}
    head = {id(p) for p in small.head_parameters()}
    everything = {id(p) for p in small.parameters()}
    assert backbone and head and not backbone & head
    assert backbone | head == everything
    assert {id(p) for p in small.classifier.parameters()} <= head


def test_every_parameter_receives_a_gradient(make_small):
    model = make_small().train()
    x = torch.randn(2, 3, 64, 32)
    identity_map, identity_vector = model.encode_identity(x)
    pose_map, pose_vector = model.encode_pose(x.flip(1))
    loss = (
        model.classify(identity_vector).logsumexp(1).mean()
        + (model.decode(identity_map, pose_map) - x).abs().mean()
        + pose_vector.mean()
    )
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_config_is_plain_data_and_rebuilds_the_model(small):
    config = small.config
    assert json.loads(json.dumps(config)) == config
    assert config == {
        "backbone": "resnet18",
        "num_classes": 3,
        "pretrained": None,
        "image_size": [64, 32],
        "decoder_widths": [32, 16, 8, 8],
        "dropout": 0.0,
        "normalize_features": False,
        "pooling": "max",
    }
    rebuilt = CrossDomainReID.from_config(config)
    assert rebuilt.config == config
    shapes = {k: v.shape for k, v in small.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


def test_a_config_without_pooling_rebuilds_a_max_pooling_model(small):
    # Checkpoints written before the pooling option existed.
    config = {key: value for key, value in small.config.items() if key != "pooling"}
    assert CrossDomainReID.from_config(config).config["pooling"] == "max"


def test_gem_pools_the_identity_map_and_its_exponent_is_a_head_parameter(make_small):
    model = make_small(pooling="gem").eval()
    assert model.config["pooling"] == "gem"
    assert isinstance(model.identity_encoder.pool, GeneralizedMeanPooling)
    assert isinstance(model.pose_encoder.pool, GlobalMaxPooling)  # the pose encoder max-pools
    x = torch.randn(2, 3, 64, 32)
    with torch.inference_mode():
        identity_map, identity_vector = model.encode_identity(x)
        pose_map, pose_vector = model.encode_pose(x)
    gem = identity_map.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    assert torch.allclose(identity_vector, gem, rtol=1e-5)
    assert torch.equal(pose_vector, pose_map.amax(dim=(2, 3)))
    head = {id(p) for p in model.head_parameters()}
    assert id(model.identity_encoder.pool.p) in head
    backbone = {id(p) for p in model.backbone_parameters()}
    assert backbone | head == {id(p) for p in model.parameters()} and not backbone & head
    assert CrossDomainReID.from_config(model.config).config["pooling"] == "gem"


def test_from_config_rejects_unknown_keys(small):
    with pytest.raises(ConfigError, match="colour"):
        CrossDomainReID.from_config({**small.config, "colour": "red"})


def test_normalize_features(make_small):
    model = make_small(normalize_features=True).eval()
    with torch.inference_mode():
        features = model(torch.randn(3, 3, 64, 32))
    assert features.shape == (3, 512)
    assert torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-5)


def test_dropout_only_acts_in_training(make_small):
    model = make_small(dropout=0.5)
    vector = torch.ones(2, 512)
    assert torch.equal(model.eval().classify(vector), model.classify(vector))
    torch.manual_seed(1)
    assert not torch.equal(model.train().classify(vector), model.eval().classify(vector))


def test_channels_last_matches_contiguous(make_small):
    model = make_small().eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.inference_mode():
        identity_map, _ = model.encode_identity(x)
        expected = model.decode(identity_map, identity_map)
        model = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        identity_map_cl, vector_cl = model.encode_identity(x_cl)
        actual = model.decode(identity_map_cl, identity_map_cl)
    assert identity_map_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(identity_map_cl, identity_map, atol=1e-4)
    assert torch.allclose(actual, expected, atol=1e-4)
    assert vector_cl.shape == (2, 512)


def test_forward_exports_with_a_dynamic_batch(make_small):
    # torch.export (what the ONNX exporter builds on) fails on batch-dependent Python control flow
    model = make_small(normalize_features=True).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(
        model, (torch.randn(2, 3, 64, 32),), dynamic_shapes={"x": {0: batch}}
    )
    x = torch.randn(5, 3, 64, 32)
    with torch.inference_mode():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "vgg16"}, "unknown backbone 'vgg16'; expected one of resnet18"),
        ({"num_classes": None}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"image_size": (64,)}, "image_size"),
        ({"image_size": (0, 32)}, "image_size"),
        ({"decoder_widths": ()}, "decoder_widths"),
        ({"dropout": 1.0}, "dropout"),
        ({"pooling": "avg"}, "unknown pooling 'avg'; expected one of max, gem"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, message):
    arguments = {"backbone": "resnet18", "num_classes": 3, "image_size": (64, 32), **kwargs}
    with pytest.raises(ConfigError, match=message):
        CrossDomainReID(**arguments)
