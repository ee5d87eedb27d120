"""ONNX and TorchScript exports reproduce PyTorch's features at any batch size."""

from __future__ import annotations

import errno
import os

import numpy as np
import onnx
import pytest
import torch

from crossreid import export as export_module
from crossreid.errors import CheckpointError, ConfigError, StorageError
from crossreid.export import ExportError, export_model, export_network, run_exported
from crossreid.models import CrossDomainReID, build_checkpoint, save_checkpoint

SMALL = {
    "backbone": "resnet18",
    "num_classes": 4,
    "image_size": (64, 32),
    "decoder_widths": (8, 8, 8, 8),
}


@pytest.fixture(scope="module")
def checkpoint(module_tmp_path) -> tuple[str, CrossDomainReID]:
    torch.manual_seed(0)
    model = CrossDomainReID(**SMALL)
    # Non-trivial BatchNorm statistics, so folding them in an export is actually checked.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    path = module_tmp_path / "model.pt"
    save_checkpoint(path, build_checkpoint(model))
    return str(path), model.eval()


@pytest.fixture(scope="module")
def exported(checkpoint, module_tmp_path) -> dict:
    """Each format exported once for the module."""
    folder = module_tmp_path / "exported"
    folder.mkdir()
    return {
        fmt: export_model(checkpoint[0], fmt, folder / f"reid.{fmt}")
        for fmt in ("onnx", "torchscript")
    }


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_at_two_batch_sizes(checkpoint, exported, fmt) -> None:
    _, model = checkpoint
    out = exported[fmt]
    assert out.is_file()
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 32, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_exported(out, fmt, x.numpy())
        assert got.shape == (batch, 512)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_gem_pooling_model_exports(tmp_path, fmt) -> None:
    torch.manual_seed(0)
    model = CrossDomainReID(**SMALL, pooling="gem")
    with torch.no_grad():
        model.identity_encoder.pool.p.fill_(2.5)  # a trained exponent, not the initial 3
    path = save_checkpoint(tmp_path / "gem.pt", build_checkpoint(model))
    out = export_model(path, fmt, tmp_path / f"gem.{fmt}")
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(run_exported(out, fmt, x.numpy()), expected, atol=1e-4, rtol=0)


def test_onnx_graph_has_named_io_a_dynamic_batch_and_only_the_identity_encoder(
    checkpoint, exported
) -> None:
    _, model = checkpoint
    graph = onnx.load(str(exported["onnx"])).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["features"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 64, 32]
    stored = sum(int(np.prod(t.dims)) for t in graph.initializer)
    identity = sum(p.numel() for p in model.identity_encoder.parameters())
    assert stored <= identity * 1.01  # no pose encoder, decoder or classifier weights


def test_default_output_path_and_image_size_override(checkpoint, tmp_path) -> None:
    path, model = checkpoint
    copy = tmp_path / "ckpt.pt"
    copy.write_bytes(open(path, "rb").read())
    out = export_model(copy, "torchscript", image_size=(32, 16))
    assert out == tmp_path / "ckpt.ts.pt"
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        np.testing.assert_allclose(run_exported(out, "torchscript", x.numpy()), model(x), atol=1e-4)


def test_checkpoint_of_another_architecture_is_refused_naming_keys(checkpoint, tmp_path) -> None:
    path, _ = checkpoint
    payload = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    other = CrossDomainReID(**{**SMALL, "backbone": "resnet34"})
    payload["model"] = other.state_dict()  # config still says resnet18
    save_checkpoint(tmp_path / "mismatch.pt", payload)
    with pytest.raises(
        CheckpointError, match=r"does not match the model architecture.*unexpected .*layer1\.2"
    ):
        export_model(tmp_path / "mismatch.pt", "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        export_model(tmp_path / "missing.pt", "onnx", tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_model(path, "tflite", tmp_path / "x.tflite")


class _TinyNet(torch.nn.Module):
    image_size = (16, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).amax(dim=(2, 3))


def test_a_failed_verification_leaves_the_previous_file_untouched(tmp_path, monkeypatch) -> None:
    out = tmp_path / "m.onnx"
    assert export_network(_TinyNet(), out, "onnx") == out  # verification passes
    out.write_bytes(b"previous export")
    monkeypatch.setattr(
        export_module, "run_exported", lambda p, f, images: np.zeros((len(images), 4), np.float32)
    )
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_network(_TinyNet(), out, "onnx")
    assert out.read_bytes() == b"previous export"
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_a_full_disk_while_exporting_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")

    def fill_the_disk(network, example, target) -> None:
        target.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export_module, "_export_onnx", fill_the_disk)
    with pytest.raises(StorageError, match=r"^cannot write \S+m\.onnx: no space left on device"):
        export_network(_TinyNet(), out, "onnx")
    assert out.read_bytes() == b"previous export"
    assert list(tmp_path.iterdir()) == [out]
