"""Tests of crossreid.inference.camera_bn: per-camera BatchNorm statistics at test time."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from crossreid.data.base import ImageRecord
from crossreid.data.transforms import build_transforms
from crossreid.inference import (
    extract_features,
    extract_features_camera_bn,
    kept_batchnorm_statistics,
    recalibrate_batchnorm,
)

SIZE = (16, 8)


class TinyNet(nn.Module):
    """1x1 convolution + BatchNorm + global average pool: features are linear in the BN."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _write(folder, name, array) -> str:
    path = folder / name
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture
def cameras(tmp_path):
    """Camera 0: random images; camera 1: the same scenes, darker and washed out
    (gain 0.5, offset +60), i.e. an affine change of every pixel."""
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 180, (*SIZE, 3), dtype=np.uint8) for _ in range(12)]
    records = []
    for i, image in enumerate(base):
        dim = (image.astype(np.float64) * 0.5 + 60).round().astype(np.uint8)
        records.append(ImageRecord(_write(tmp_path, f"c0_{i}.png", image), i, 0))
        records.append(ImageRecord(_write(tmp_path, f"c1_{i}.png", dim), i, 1))
    return records


def _conv_outputs(model, records):
    tf = build_transforms(SIZE, train=False)
    x = torch.stack([tf(Image.open(r.path).convert("RGB")) for r in records])
    with torch.no_grad():
        return model.conv(x)


def test_recalibrate_sets_the_exact_statistics_and_restores_the_rest(cameras):
    model = TinyNet().eval()
    model.bn.momentum = 0.3
    camera0 = [r for r in cameras if r.camid == 0]
    seen = recalibrate_batchnorm(model, camera0, SIZE, batch_size=12)
    assert seen == 12
    out = _conv_outputs(model, camera0)  # one batch of 12: its mean and unbiased variance
    torch.testing.assert_close(model.bn.running_mean, out.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        model.bn.running_var, out.var(dim=(0, 2, 3), unbiased=True), atol=1e-5, rtol=1e-5
    )
    assert model.bn.momentum == 0.3 and not model.training and not model.bn.training


def test_camera_bn_equals_extraction_with_each_cameras_own_statistics(cameras):
    model = TinyNet().eval()
    before = copy.deepcopy(model.state_dict())
    got = extract_features_camera_bn(model, cameras, cameras, SIZE, batch_size=5)
    for camera in (0, 1):
        own = [r for r in cameras if r.camid == camera]
        reference = copy.deepcopy(model)
        recalibrate_batchnorm(reference, own, SIZE, batch_size=5)
        expected = extract_features(reference, own, SIZE, batch_size=5).features
        rows = [i for i, r in enumerate(cameras) if r.camid == camera]
        np.testing.assert_allclose(got.features[rows], expected, atol=1e-5)
    assert got.paths == [r.path for r in cameras]  # record order kept
    for key, value in model.state_dict().items():  # the model's own statistics are back
        assert torch.equal(value, before[key]), key


def test_camera_bn_removes_a_camera_wide_brightness_and_contrast_change(cameras):
    model = TinyNet().eval()
    # Push the model's own statistics far from either camera's.
    model.bn.running_mean.fill_(0.5)
    model.bn.running_var.fill_(4.0)
    plain = extract_features(model, cameras, SIZE).features
    adapted = extract_features(model, cameras, SIZE, camera_bn=cameras).features
    c0, c1 = plain[0::2], plain[1::2]
    a0, a1 = adapted[0::2], adapted[1::2]
    # Same scenes under the two cameras: far apart with the model's statistics, nearly
    # equal once each camera is normalised by its own (up to 8-bit rounding).
    shift, residual = np.abs(c0 - c1).mean(), np.abs(a0 - a1).mean()
    assert residual < shift / 10, (shift, residual)


def test_a_camera_without_calibration_images_uses_its_own(cameras, caplog):
    model = TinyNet().eval()
    calibration = [r for r in cameras if r.camid == 0]
    with caplog.at_level(logging.WARNING, logger="crossreid.inference.extraction"):
        got = extract_features_camera_bn(model, cameras, calibration, SIZE)
    assert "camera 1 has 0 calibration image(s)" in caplog.text
    fallback = extract_features_camera_bn(
        model, [r for r in cameras if r.camid == 1], cameras, SIZE
    )
    np.testing.assert_allclose(got.features[1::2], fallback.features, atol=1e-5)


def test_statistics_are_kept_when_nothing_can_be_read(tmp_path, caplog):
    model = TinyNet().eval()
    model.bn.running_mean.fill_(0.25)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        assert recalibrate_batchnorm(model, [ImageRecord(str(bad), 0, 0)] * 3, SIZE) == 0
    assert torch.all(model.bn.running_mean == 0.25)
    assert "BatchNorm statistics kept" in caplog.text


def test_kept_statistics_restores_after_an_error():
    model = TinyNet()
    with pytest.raises(RuntimeError), kept_batchnorm_statistics(model):
        model.bn.running_mean.fill_(9.0)
        model.bn.momentum = None
        raise RuntimeError("boom")
    assert torch.all(model.bn.running_mean == 0) and model.bn.momentum == 0.1
