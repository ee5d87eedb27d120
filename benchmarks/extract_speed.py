"""Feature-extraction speed: crossreid's optimised path vs plain eager PyTorch, and onnxruntime.

Usage:
    .venv/bin/python benchmarks/extract_speed.py [--device cpu] [--repeats 3]

For each configuration — small (resnet18, 128x64, batch 64) and full (ResNet-50,
224x224, batch 16) — one randomly initialised :class:`~crossreid.models.CrossDomainReID`
is timed on the same in-memory batch of normalised images (image decoding is the same for
every variant and is left out):

* **eager**: the baseline, ``model.eval()`` under ``torch.no_grad()``, contiguous float32;
* **optimised**: what :func:`crossreid.inference.extract_features` runs —
  BatchNorm folded into the convolutions (``fuse_batchnorm``, torch.fx), channels_last
  (oneDNN's native layout for convolutions) and ``torch.inference_mode()``;
* **bf16** (for information, not used by default): the unfused channels_last model under
  CPU bfloat16 autocast, which changes the features in the third significant digit;
* **onnxruntime**: the ``crossreid export`` ONNX file on the CPU execution provider.

Each variant runs once to warm up, then ``--repeats`` timed batches; the best batch time
gives images/second. The optimised/eager ratio is printed per configuration (target:
at least 1.3x at the full configuration on CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crossreid.export import export_network
from crossreid.inference import fuse_batchnorm
from crossreid.models import CrossDomainReID

CONFIGS = (
    ("small", "resnet18", (128, 64), 64),
    ("full", "resnet50", (224, 224), 16),
)


def images_per_second(fn, batch: int, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation, weight reordering)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return batch / best


def bench(backbone: str, size: tuple[int, int], batch: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = CrossDomainReID(backbone, num_classes=10, image_size=size, decoder_widths=(8,) * 4)
    model.eval()
    x = torch.randn(batch, 3, *size)
    results: dict[str, float] = {}

    def eager() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    results["eager"] = images_per_second(eager, batch, repeats)
    reference = eager()

    model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    network = fuse_batchnorm(model).to(memory_format=torch.channels_last)

    def optimised() -> torch.Tensor:
        with torch.inference_mode():
            return network(x_cl)

    results["optimised"] = images_per_second(optimised, batch, repeats)
    error = float((optimised() - reference).abs().max())

    def bf16() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x_cl)

    results["bf16"] = images_per_second(bf16, batch, repeats)
    model.to(memory_format=torch.contiguous_format)

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        path = export_network(model, Path(folder) / "model.onnx", "onnx", verify=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x_np = x.numpy()
        results["onnxruntime"] = images_per_second(
            lambda: session.run(None, {"images": x_np}), batch, repeats
        )
        onnx_error = float(np.abs(session.run(None, {"images": x_np})[0] - reference.numpy()).max())
    results["max_abs_diff_optimised"] = error
    results["max_abs_diff_onnx"] = onnx_error
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=[c[0] for c in CONFIGS], default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for name, backbone, size, batch in CONFIGS:
        if args.only and name != args.only:
            continue
        r = bench(backbone, size, batch, args.repeats)
        tag = f"{name} ({backbone}, {size[0]}x{size[1]}, batch {batch})"
        print(
            f"{tag}: eager fp32 {r['eager']:.1f} img/s | optimised (BN folded + channels_last "
            f"+ inference_mode) {r['optimised']:.1f} img/s = {r['optimised'] / r['eager']:.2f}x eager "
            f"(max |diff| {r['max_abs_diff_optimised']:.1e}) | bf16 autocast {r['bf16']:.1f} img/s "
            f"= {r['bf16'] / r['eager']:.2f}x | onnxruntime {r['onnxruntime']:.1f} img/s = "
            f"{r['onnxruntime'] / r['eager']:.2f}x (max |diff| {r['max_abs_diff_onnx']:.1e})"
        )


if __name__ == "__main__":
    main()
