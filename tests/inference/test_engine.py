"""The inference engine: onnxruntime equals torch, one graph per weights, fallback and refusal."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from crossreid.data.base import ImageRecord
from crossreid.errors import ConfigError
from crossreid.inference import extract_features, extract_query_gallery, feature_engine, onnx_engine
from crossreid.inference.onnx_engine import clear_session_cache, graph_key, onnx_runner
from crossreid.models import CrossDomainReID
from crossreid.utils.threads import torch_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(size: tuple[int, int], normalize: bool = False) -> CrossDomainReID:
    """A tiny resnet18 with non-trivial BatchNorm statistics (so folding them is checked)."""
    torch.manual_seed(0)
    model = CrossDomainReID(
        "resnet18", num_classes=4, image_size=size, decoder_widths=(8,) * 4,
        normalize_features=normalize,
    )  # fmt: skip
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def records(tmp_path_factory, write_crops) -> list[ImageRecord]:
    return write_crops(tmp_path_factory.mktemp("engine") / "test", 7, seed=0)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, write_crops) -> list[ImageRecord]:
    return write_crops(tmp_path_factory.mktemp("engine") / "train", 20, seed=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty graph cache on disk and in memory; counts the exports."""
    monkeypatch.setenv("CROSSREID_ONNX_CACHE", str(tmp_path / "onnx"))
    clear_session_cache()
    exports = []
    export = onnx_engine._export_bytes

    def counted(model, size):
        exports.append(size)
        return export(model, size)

    monkeypatch.setattr(onnx_engine, "_export_bytes", counted)
    yield {"folder": tmp_path / "onnx", "exports": exports}
    clear_session_cache()


def _assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    """Within 1e-4 of the features' magnitude (as the export's own check)."""
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got - expected).max()) <= 1e-4 * scale


@pytest.mark.parametrize(
    ("size", "batch_size", "flip", "normalize"),
    [
        ((32, 16), 1, False, False),
        ((32, 16), 3, True, True),  # 3 + 3 + an odd last batch of 1
        ((64, 32), 5, True, False),  # 5 + 2
        ((64, 32), 64, False, True),  # one batch of 7
    ],
)
def test_onnxruntime_features_equal_torch(records, size, batch_size, flip, normalize) -> None:
    model = _model(size, normalize)
    options = {"batch_size": batch_size, "flip": flip}
    expected = extract_features(model, records, engine="torch", **options)
    got = extract_features(model, records, engine="onnxruntime", **options)
    _assert_close(got.features, expected.features)
    assert got.paths == expected.paths
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got.features, axis=1), 1.0, atol=1e-5)
    # auto on the CPU is onnxruntime: the same graph, the same numbers.
    auto = extract_features(model, records, engine="auto", **options)
    np.testing.assert_array_equal(auto.features, got.features)


def test_onnxruntime_features_equal_torch_with_gem_pooling(records) -> None:
    model = _model((64, 32))  # a 2x1 map: at 1x1 every pooling is the same
    gem = CrossDomainReID.from_config({**model.config, "pooling": "gem"})
    gem.load_state_dict(model.state_dict(), strict=False)  # the same weights, p = 3
    gem.eval()
    expected = extract_features(gem, records, engine="torch", flip=True).features
    got = extract_features(gem, records, engine="onnxruntime", flip=True).features
    _assert_close(got, expected)
    plain = extract_features(model, records, engine="torch", flip=True).features
    assert float(np.abs(expected - plain).max()) > 1e-3  # GeM, not max pooling
    assert graph_key(gem, (64, 32)) != graph_key(model, (64, 32))


def test_graph_is_exported_once_per_weights_and_rebuilt_when_one_changes(
    records, cache, monkeypatch
) -> None:
    model = _model((32, 16))
    first = extract_features(model, records, engine="onnxruntime", batch_size=4).features
    again = extract_features(model, records, engine="onnxruntime", batch_size=2).features
    assert cache["exports"] == [(32, 16)]  # the second run used the session in memory
    np.testing.assert_allclose(again, first, rtol=0, atol=1e-6)
    [stored] = cache["folder"].glob("*.onnx")
    assert stored.stem == graph_key(model, (32, 16))
    clear_session_cache()  # a new process: the graph comes from the disk cache
    extract_features(model, records, engine="onnxruntime")
    assert len(cache["exports"]) == 1

    monkeypatch.setattr(onnx_engine, "MAX_CACHED_GRAPHS", 1)
    with torch.no_grad():
        model.identity_encoder.trunk.conv1.weight[0, 0, 0, 0] += 0.5
    changed = extract_features(model, records, engine="onnxruntime").features
    assert len(cache["exports"]) == 2  # new weights, new graph
    assert float(np.abs(changed - first).max()) > 1e-3
    _assert_close(changed, extract_features(model, records, engine="torch").features)
    # The least recently used graph left the disk cache.
    assert [p.stem for p in cache["folder"].glob("*.onnx")] == [graph_key(model, (32, 16))]


def test_graph_key_covers_weights_statistics_flags_and_input_size() -> None:
    model = _model((32, 16))
    key = graph_key(model, (32, 16))
    assert graph_key(model, (32, 16)) == key
    assert graph_key(model, (64, 32)) != key
    model.normalize_features = True  # not a weight, but the graph differs
    assert graph_key(model, (32, 16)) != key
    model.normalize_features = False
    bn = model.identity_encoder.trunk.bn1
    with torch.no_grad():
        bn.running_mean[0] += 1.0  # camera-wise BatchNorm changes exactly these
    assert graph_key(model, (32, 16)) != key
    with torch.no_grad():
        bn.running_mean[0] -= 1.0
    assert graph_key(model, (32, 16)) == key


def test_camera_wise_batchnorm_exports_each_cameras_statistics_in_memory_only(
    records, calibration, cache
) -> None:
    model = _model((32, 16))
    key = graph_key(model, (32, 16))
    expected = extract_features(model, records, camera_bn=calibration, engine="torch").features
    got = extract_features(model, records, camera_bn=calibration, engine="onnxruntime").features
    _assert_close(got, expected)
    plain = extract_features(model, records, engine="torch").features
    assert float(np.abs(expected - plain).max()) > 1e-3  # the statistics did change
    assert len(cache["exports"]) == 2  # one graph per camera's statistics
    assert not cache["folder"].exists() or not list(cache["folder"].glob("*.onnx"))
    assert graph_key(model, (32, 16)) == key  # the model's own statistics are back


class _BranchyNet(nn.Module):
    """Data-dependent control flow: a trace would freeze one branch."""

    image_size = (32, 16)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x).amax(dim=(2, 3))
        return features if features.mean() > 0 else -features


class _SpectralNet(_BranchyNet):
    """A layer without an ONNX form (no FFT operator at opset 17)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(self.conv(x)).abs().amax(dim=(2, 3))


@pytest.mark.parametrize("network", [_BranchyNet, _SpectralNet])
def test_auto_falls_back_to_torch_with_one_warning_line_and_onnxruntime_refuses(
    network, records, cache, caplog, capfd
) -> None:
    model = network()
    with caplog.at_level(logging.WARNING):
        arrays = extract_query_gallery(model, records[:3], records[3:], engine="auto")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "the model does not export to ONNX" in lines[0] and lines[0].endswith("using torch")
    assert capfd.readouterr() == ("", "")  # the exporter's graph dump stays out of sight
    expected = extract_features(model, records[:3], engine="torch").features
    np.testing.assert_array_equal(arrays["qf"], expected)
    with torch.no_grad():  # new weights of the same network (a trainer's next evaluation)
        model.conv.weight.mul_(2)
    with caplog.at_level(logging.WARNING):
        extract_features(model, records, engine="auto")
    assert len(caplog.records) == 1  # no second warning
    assert len(cache["exports"]) == 1  # the failure is remembered, not retried
    with pytest.raises(ConfigError) as error:
        extract_features(model, records, engine="onnxruntime")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("engine 'onnxruntime': the model does not export to ONNX (")
    assert message.endswith("; use --engine torch")


def test_sessions_follow_torch_thread_count(cache) -> None:
    model = _model((32, 16))
    with torch_threads(1):
        one = onnx_runner(model, (32, 16))
    with torch_threads(2):
        two = onnx_runner(model, (32, 16))
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert two.session.get_session_options().intra_op_num_threads == 2
    assert len(cache["exports"]) == 1  # the second session reads the cached graph


def test_unknown_engine_and_onnxruntime_on_cuda_are_config_errors(records) -> None:
    model = _model((32, 16))
    with pytest.raises(ConfigError, match=r"unknown engine 'tensorrt'; expected one of auto"):
        extract_features(model, records, engine="tensorrt")
    with (
        pytest.raises(ConfigError, match=r"engine 'onnxruntime' runs on the CPU, not cuda"),
        feature_engine(model, torch.device("cuda"), (32, 16), engine="onnxruntime"),
    ):
        pass
