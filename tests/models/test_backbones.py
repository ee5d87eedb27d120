"""Tests of crossreid.models.backbones: trunks, local weight files, ImageNet weights offline."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from crossreid.errors import CheckpointError, ConfigError
from crossreid.models import BACKBONES, CrossDomainReID, build_trunk
from crossreid.models.backbones import imagenet_state_dict

SMALL = {"num_classes": 3, "image_size": (64, 32), "decoder_widths": (8, 8, 8, 8)}


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)],
)
def test_trunk_channels_and_stride(name, channels):
    trunk = build_trunk(name).eval()
    assert BACKBONES[name].channels == channels
    with torch.inference_mode():
        out = trunk(torch.randn(1, 3, 64, 40))
    # stride 32 with ceil: 64 → 2, 40 → 2
    assert out.shape == (1, channels, 2, 2)


def test_resnet101_is_dispatched_to_torchvision():
    # not built here: 44M parameters take seconds to initialise on a loaded CPU
    assert BACKBONES["resnet101"].builder is torchvision.models.resnet101
    assert BACKBONES["resnet101"].channels == 2048


def test_trunk_keys_are_torchvision_keys_without_fc():
    expected = {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    assert set(build_trunk("resnet18").state_dict()) == expected


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="resnet18, resnet34, resnet50, resnet101"):
        build_trunk("resnet152")


def _assert_trunks_hold(model: CrossDomainReID, state_dict: dict) -> None:
    for encoder in (model.identity_encoder, model.pose_encoder):
        for key, value in encoder.trunk.state_dict().items():
            assert torch.equal(value, state_dict[key]), key


def test_pretrained_path_loads_both_trunks(tmp_path):
    torch.manual_seed(1)
    state_dict = torchvision.models.resnet18().state_dict()  # includes fc.*, ignored
    path = tmp_path / "resnet18.pth"
    torch.save(state_dict, path)
    model = CrossDomainReID("resnet18", pretrained=path, **SMALL)
    _assert_trunks_hold(model, state_dict)
    assert model.config["pretrained"] == str(path)
    # the two trunks are copies, not shared tensors
    model.identity_encoder.trunk.conv1.weight.data.zero_()
    assert torch.equal(model.pose_encoder.trunk.conv1.weight, state_dict["conv1.weight"])


def test_pretrained_path_accepts_wrapped_and_prefixed_state_dicts(tmp_path):
    state_dict = torchvision.models.resnet18().state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, path)
    _assert_trunks_hold(CrossDomainReID("resnet18", pretrained=str(path), **SMALL), state_dict)


def test_pretrained_path_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        CrossDomainReID("resnet18", pretrained=tmp_path / "missing.pth", **SMALL)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="cannot read pretrained weights"):
        CrossDomainReID("resnet18", pretrained=garbage, **SMALL)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(CheckpointError, match="not a state dict"):
        CrossDomainReID("resnet18", pretrained=not_a_state_dict, **SMALL)


def test_pretrained_path_of_another_variant_names_the_keys(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        CrossDomainReID("resnet18", pretrained=path, **SMALL)
    message = str(info.value)
    assert "\n" not in message
    assert "unexpected: layer1.2." in message
    assert "(+" in message  # more than five keys: the rest are counted


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case someone called set_dir()
    return home


def test_imagenet_offline_gives_one_line_error(empty_torch_home, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(CheckpointError) as info:
        CrossDomainReID("resnet18", pretrained="imagenet", **SMALL)
    message = str(info.value)
    assert "\n" not in message
    assert "ImageNet weights for resnet18" in message
    assert str(empty_torch_home) in message
    assert "--pretrained PATH" in message and "--pretrained none" in message


def test_imagenet_weights_are_read_from_the_hub_cache(empty_torch_home, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = empty_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(2)
    state_dict = torchvision.models.resnet18().state_dict()
    torch.save(state_dict, cache / weights.url.rsplit("/", 1)[-1])
    assert set(imagenet_state_dict("resnet18")) == set(state_dict)
    _assert_trunks_hold(CrossDomainReID("resnet18", pretrained="imagenet", **SMALL), state_dict)


def test_imagenet_uses_the_default_torchvision_weights():
    assert str(BACKBONES["resnet50"].weights.DEFAULT).endswith("IMAGENET1K_V2")
    assert str(BACKBONES["resnet18"].weights.DEFAULT).endswith("IMAGENET1K_V1")


def test_pretrained_none_string_means_random_init():
    model = CrossDomainReID("resnet18", pretrained="none", **SMALL)
    assert model.config["pretrained"] == "none"
