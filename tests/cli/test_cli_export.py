"""``crossreid export``: writes a verified file; refuses bad checkpoints with exit 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossreid.cli import main
from crossreid.export import run_exported
from crossreid.models import CrossDomainReID, build_checkpoint, save_checkpoint

SMALL = {"num_classes": 3, "image_size": (64, 32), "decoder_widths": (8, 8, 8, 8)}


@pytest.fixture(scope="module")
def model_and_checkpoint(module_tmp_path) -> tuple[CrossDomainReID, str]:
    torch.manual_seed(0)
    model = CrossDomainReID("resnet18", **SMALL).eval()
    path = module_tmp_path / "model.pt"
    save_checkpoint(path, build_checkpoint(model))
    return model, str(path)


def test_export_onnx_with_another_input_size(model_and_checkpoint, tmp_path, capsys) -> None:
    model, checkpoint = model_and_checkpoint
    out = tmp_path / "reid.onnx"
    argv = ["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", str(out)]
    assert main([*argv, "--image-size", "32x16"]) == 0
    assert f"wrote {out} (onnx)" in capsys.readouterr().out
    x = torch.randn(3, 3, 32, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_exported(out, "onnx", x.numpy()), expected, atol=1e-4)


def test_mismatched_or_missing_checkpoint_exits_2_naming_the_problem(
    model_and_checkpoint, tmp_path, capsys
) -> None:
    _, checkpoint = model_and_checkpoint
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["model"]["backbone"] = "resnet34"  # weights are resnet18's
    save_checkpoint(tmp_path / "lies.pt", payload)
    out = tmp_path / "x.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "lies.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crossreid export: error: checkpoint")
    assert "does not match the model architecture" in err and "missing identity_encoder" in err
    assert not out.exists()
    assert main(["export", "--checkpoint", str(tmp_path / "gone.pt"), "--out", str(out)]) == 2
    assert "gone.pt does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", checkpoint, "--image-size", "tall"])
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", checkpoint, "--format", "tflite"])
