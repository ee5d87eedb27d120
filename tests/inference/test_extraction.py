"""Feature extraction: order, values, flip averaging, corrupt images, folders, ranks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from crossreid.data.base import ImageRecord
from crossreid.data.transforms import build_transforms
from crossreid.errors import ConfigError, DatasetError
from crossreid.inference import (
    extract_features,
    extract_features_distributed,
    extract_query_gallery,
    fuse_batchnorm,
    records_from_folder,
    records_from_paths,
)
from crossreid.models import CrossDomainReID
from crossreid.utils.devices import resolve_device

SIZE = (32, 16)


class TinyNet(nn.Module):
    """A small, deterministic feature network: conv → BN → ReLU → global max-pool."""

    image_size = SIZE

    def __init__(self, normalize_features: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.normalize_features = normalize_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.conv(x))).amax(dim=(2, 3))
        return nn.functional.normalize(features, dim=1) if self.normalize_features else features


def _reference(model: nn.Module, records: list[ImageRecord]) -> np.ndarray:
    """Features computed the plain way: one image at a time, contiguous, no_grad."""
    transform = build_transforms(SIZE, train=False)
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [model(transform(Image.open(r.path).convert("RGB"))[None]).numpy() for r in records]
        )


def test_features_follow_record_order_and_equal_plain_eager_inference(
    write_crops, tmp_path
) -> None:
    records = write_crops(tmp_path)[::-1]  # not sorted by path: the order must be the records'
    model = TinyNet()
    result = extract_features(model, records, batch_size=3)
    features, pids, camids, paths = result  # a 4-tuple
    assert features.dtype == np.float32 and features.shape == (7, 8)
    assert paths == [r.path for r in records]
    np.testing.assert_array_equal(pids, [r.pid for r in records])
    np.testing.assert_array_equal(camids, [r.camid for r in records])
    np.testing.assert_allclose(features, _reference(TinyNet(), records), rtol=1e-5, atol=1e-5)
    # Batch size and memory layout do not change the result.
    again = extract_features(model, records, SIZE, batch_size=1, channels_last=False)
    np.testing.assert_allclose(again.features, features, rtol=1e-5, atol=1e-5)


def test_model_state_is_restored(write_crops, tmp_path) -> None:
    model = TinyNet().train()
    extract_features(model, write_crops(tmp_path, 2), batch_size=2)
    assert model.training
    assert model.conv.weight.is_contiguous()  # back from channels_last
    assert model.bn.running_mean.abs().sum() == 0  # eval mode during extraction: no BN update


def test_flip_averages_the_mirrored_image_and_renormalises(write_crops, tmp_path) -> None:
    records = write_crops(tmp_path, 3)
    plain = TinyNet()
    result = extract_features(plain, records, flip=True)
    transform = build_transforms(SIZE, train=False)
    x = torch.stack([transform(Image.open(r.path).convert("RGB")) for r in records])
    with torch.no_grad():
        plain.eval()
        expected = (plain(x) + plain(torch.flip(x, dims=[3]))) / 2
    np.testing.assert_allclose(result.features, expected.numpy(), rtol=1e-5, atol=1e-5)
    unit_model = TinyNet(normalize_features=True).eval()
    unit = extract_features(unit_model, records, flip=True).features
    with torch.no_grad():
        mean = (unit_model(x) + unit_model(torch.flip(x, dims=[3]))) / 2
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, nn.functional.normalize(mean, dim=1).numpy(), atol=1e-5)


def test_unreadable_images_are_skipped_with_a_warning(write_crops, tmp_path, caplog) -> None:
    records = write_crops(tmp_path, 4)
    broken = tmp_path / "0009_c1s1_000099_00.jpg"
    broken.write_bytes(b"not a jpeg")
    records.insert(2, ImageRecord(str(broken), 9, 0))
    with caplog.at_level(logging.WARNING):
        result = extract_features(TinyNet(), records, batch_size=2)
    assert str(broken) in caplog.text and "skipped 1 unreadable" in caplog.text
    assert result.paths == [r.path for r in records if r.path != str(broken)]
    assert 9 not in result.pids
    with pytest.raises(DatasetError, match="none of the 1 images could be read"):
        extract_features(TinyNet(), [ImageRecord(str(broken), 9, 0)])


def test_bad_arguments() -> None:
    with pytest.raises(DatasetError, match="no images"):
        extract_features(TinyNet(), [])
    with pytest.raises(ConfigError, match="batch size"):
        extract_features(TinyNet(), [ImageRecord("x.jpg", 1, 0)], batch_size=0)
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_records_from_folder_parses_market_names_and_warns_about_other_files(
    write_crops, tmp_path, caplog
) -> None:
    write_crops(tmp_path / "crops" / "sub", 3)
    Image.new("RGB", (8, 8)).save(tmp_path / "crops" / "street.png")
    (tmp_path / "crops" / "notes.txt").write_text("not an image")
    (tmp_path / "crops" / ".hidden").write_text("ignored")
    with caplog.at_level(logging.WARNING):
        records = records_from_folder(tmp_path / "crops")
    assert "skipping 1 non-image file" in caplog.text and "notes.txt" in caplog.text
    # Sorted by path: crops/street.png comes before crops/sub/...
    assert [(r.pid, r.camid) for r in records] == [(-1, -1), (1, 0), (1, 1), (2, 0)]
    assert records[0].path.endswith("street.png")
    with pytest.raises(DatasetError, match="does not exist"):
        records_from_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no image file"):
        records_from_folder(tmp_path / "empty")


def test_records_from_paths(write_crops, tmp_path, caplog) -> None:
    records = write_crops(tmp_path, 2)
    (tmp_path / "a.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        got = records_from_paths([records[1].path, str(tmp_path / "a.txt"), records[0].path])
    assert got == [records[1], records[0]] and "a.txt" in caplog.text
    with pytest.raises(DatasetError, match="missing.jpg does not exist"):
        records_from_paths([str(tmp_path / "missing.jpg")])


def test_query_gallery_arrays_use_the_evaluate_keys(
    write_crops, tmp_path, features_file_keys
) -> None:
    records = write_crops(tmp_path, 5)
    arrays = extract_query_gallery(TinyNet(), records[:2], records[2:], batch_size=4)
    assert set(arrays) == features_file_keys
    assert arrays["qf"].shape == (2, 8) and arrays["gf"].shape == (3, 8)
    assert list(arrays["g_paths"]) == [r.path for r in records[2:]]
    np.testing.assert_array_equal(arrays["q_camids"], [0, 1])


def test_without_a_process_group_the_distributed_path_is_the_single_process_one(
    write_crops, tmp_path
) -> None:
    # The two-process run is tested end to end in tests/cli/test_cli_extract.py.
    records = write_crops(tmp_path, 3)
    a = extract_features_distributed(TinyNet(), records, batch_size=2)
    b = extract_features(TinyNet(), records, batch_size=2)
    assert a.paths == b.paths
    np.testing.assert_array_equal(a.features, b.features)


class _Untraceable(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return super().forward(x)
        return -super().forward(x)


def test_fuse_batchnorm_folds_without_touching_the_model() -> None:
    model = TinyNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_batchnorm(model)
    assert fused is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(4, 3, *SIZE)
    with torch.no_grad():
        np.testing.assert_allclose(fused(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    untraceable = _Untraceable().eval()
    assert fuse_batchnorm(untraceable) is untraceable  # falls back to the model itself


def test_fuse_batchnorm_folds_a_gem_pooling_network() -> None:
    torch.manual_seed(0)
    model = CrossDomainReID(
        "resnet18", num_classes=2, image_size=SIZE, decoder_widths=(8,) * 4, pooling="gem"
    ).eval()
    fused = fuse_batchnorm(model)
    assert fused is not model  # traced: GeM does not stop the folding
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        np.testing.assert_allclose(fused(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
