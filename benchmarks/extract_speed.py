"""Feature-extraction speed: crossreid's engines against eager PyTorch and plain onnxruntime.

Usage:
    .venv/bin/python benchmarks/extract_speed.py [--repeats 3] [--only small|full]
        [--compile] [--quick]

On the CPU, for each configuration — small (resnet18, 128x64, batch 64) and full
(ResNet-50, 224x224, batch 16) — one randomly initialised
:class:`~crossreid.models.CrossDomainReID` is timed on the same in-memory batch of
normalised images (image decoding is the same for every variant and is left out):

* **eager**: the baseline, ``model.eval()`` under ``torch.no_grad()``, contiguous float32;
* **torch engine**: ``--engine torch`` (:func:`crossreid.inference.feature_engine`):
  BatchNorm folded, channels_last, ``torch.inference_mode()``;
* **onnxruntime**: the reference: the ``crossreid export`` ONNX file in a plain
  ``InferenceSession`` with onnxruntime's default options;
* **auto**: ``--engine auto`` as extraction runs it: the cached graph's session, with
  torch's thread count, torch tensors in and out. The target is auto >= 0.9x onnxruntime
  at both configurations;
* for information, the other CPU options (kept off, see below): **bf16 autocast** on the
  torch engine's network; **oneDNN bf16 fpmath** (float32 convolutions computed in
  bfloat16, ``torch.backends.mkldnn.conv.fp32_precision = "bf16"``); **TorchScript**
  ``freeze`` + ``optimize_for_inference``; **torch.compile** (inductor, with
  ``--compile``: it compiles for 30 s to minutes).

Timing is interleaved: after a warm-up call of each, every round times one batch of every
variant, and the best round gives images/second, so load from other processes hits all
variants alike. Each line also gives the achieved GFLOP/s (FLOPs of one forward from
``FlopCounterMode``, a multiply-add counted as two) as a fraction of a dense float32 matrix
product measured in the same run with the same threads, and the largest feature
difference from eager relative to the largest feature.

On a GPU (absent here: those figures are skipped with a line saying so) it times
ResNet-50 224x224 at batch 64 and 256: eager fp32, the torch engine (BN folded,
channels_last) in fp32, AMP fp16 and AMP bf16 on both, against the fp32 / fp16 / bf16
matrix-product rates.

Measured on the 2-core AMD EPYC (Zen 4: AVX-512 with avx512_bf16, no AMX) development VM,
shared with other work (load average 5-8), torch 2.14, onnxruntime 1.32, two runs
(``--repeats 5``; ``--repeats 3 --compile``), images/second:

=============================  ===========  ===========
variant                        small        full
=============================  ===========  ===========
eager                          82-97        4.9-5.0
torch engine                   114-121      7.3
onnxruntime                    156          10.3-11.2
auto                           153-160      10.4-10.9
bf16 autocast                  72-184       11.2-12.2
TorchScript                    113-137      7.6-8.1
torch.compile (first call)     125 (5.5 s)  7.7 (26 s)
=============================  ===========  ===========

auto / onnxruntime was 0.98-1.03 (target >= 0.9) and auto / torch engine 1.27-1.50. The
float32 GEMM reference (MKL) ran at 84-89 GFLOP/s; onnxruntime's convolutions reach
99-106% of it, the torch engine 68-82%. The other CPU options stay off: bf16 autocast is
the only one faster than onnxruntime, by up to 1.2x and not reliably (its speed swings
with the load: 0.9-1.9x eager at small), and its features are 0.9-1.3% off eager's, a
hundred times what the engines promise (1e-4); oneDNN's bf16 fpmath is not applied on
this CPU (bit-identical features); TorchScript and torch.compile are within the noise of
the torch engine and add seconds of set-up (TorchScript is deprecated). So the CPU engine
is onnxruntime (``auto``), and the torch engine stays float32 with BatchNorm folded and
channels_last (it runs on CUDA, and on the CPU for models that do not export).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from _common import GEMM_SIZE, achieved, forward_flops, gemm_line

from crossreid.export import export_network
from crossreid.inference import feature_engine
from crossreid.models import CrossDomainReID

CONFIGS = (
    ("small", "resnet18", (128, 64), 64),
    ("full", "resnet50", (224, 224), 16),
)
CUDA_BATCHES = (64, 256)
TARGET = 0.9  # auto / onnxruntime images per second


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, sync=None) -> dict:
    """Best seconds per call of each variant: a warm-up call each, then ``repeats`` rounds
    timing one call of every variant."""
    for fn in variants.values():
        fn()
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, fn in variants.items():
            if sync:
                sync()
            start = time.perf_counter()
            fn()
            if sync:
                sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _build(backbone: str, size: tuple[int, int]) -> CrossDomainReID:
    torch.manual_seed(0)
    model = CrossDomainReID(backbone, num_classes=10, image_size=size, decoder_widths=(8,) * 4)
    return model.eval()


def _torchscript(model: torch.nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; measured for information
        traced = torch.jit.trace(model, (x,), check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def bench_cpu(
    backbone: str, size: tuple[int, int], batch: int, repeats: int, compile_: bool
) -> tuple[dict[str, float], dict[str, float], dict[str, float], float, list[str]]:
    """``(seconds per batch, relative max |diff| from eager, set-up seconds (and
    ``"GEMM"``: the GFLOP/s of the reference product in the same rounds), FLOPs per image,
    notes)`` of every CPU variant."""
    cpu = torch.device("cpu")
    model = _build(backbone, size)  # the torch engine's (made channels_last inside it)
    plain = copy.deepcopy(model)  # eager, TorchScript, the ONNX export and auto
    x = torch.randn(batch, 3, *size)
    flops = forward_flops(plain, x[:1])
    with torch.no_grad():
        reference = plain(x)
    setup: dict[str, float] = {}
    notes: list[str] = []
    stack = contextlib.ExitStack()
    with stack, tempfile.TemporaryDirectory() as folder:
        # An empty graph cache of this run's own: auto's first call exports.
        stack.enter_context(mock.patch.dict(os.environ, {"CROSSREID_ONNX_CACHE": folder}))
        start = time.perf_counter()
        auto = stack.enter_context(feature_engine(plain, cpu, size, engine="auto"))
        setup["auto: export + check + session"] = time.perf_counter() - start
        network = stack.enter_context(feature_engine(model, cpu, size, engine="torch"))

        import onnxruntime as ort  # optional, heavy: the reference

        path = export_network(plain, Path(folder) / "model.onnx", "onnx", verify=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x_np = x.numpy()

        start = time.perf_counter()
        scripted = _torchscript(plain, x)
        setup["TorchScript: trace + freeze + optimize"] = time.perf_counter() - start
        variants = {
            "eager": lambda: _no_grad(plain, x),
            "torch engine": lambda: _inference(network, x),
            "onnxruntime": lambda: torch.from_numpy(session.run(None, {"images": x_np})[0]),
            "auto": lambda: _inference(auto, x),
            "bf16 autocast": lambda: _inference(network, x, torch.bfloat16),
            "TorchScript": lambda: _no_grad(scripted, x),
        }
        if _bf16_fpmath_applies(network, x):
            variants["oneDNN bf16 fpmath"] = lambda: _bf16_fpmath(network, x)
        else:
            notes.append(
                "oneDNN bf16 fpmath (torch.backends.mkldnn.conv.fp32_precision = 'bf16'): not "
                "applied on this CPU (features bit-identical to float32), not timed"
            )
        if compile_:
            compiled = torch.compile(network)
            start = time.perf_counter()
            _inference(compiled, x)
            setup["torch.compile: first call"] = time.perf_counter() - start
            variants["torch.compile"] = lambda: _inference(compiled, x)
        scale = float(reference.abs().max())
        errors = {
            name: float((fn().float() - reference).abs().max()) / scale
            for name, fn in variants.items()
        }
        # The GEMM reference is timed in the same rounds, under the same load.
        a, b = torch.randn(GEMM_SIZE, GEMM_SIZE), torch.randn(GEMM_SIZE, GEMM_SIZE)
        seconds = interleaved({**variants, "GEMM": lambda: a @ b}, repeats)
        setup["GEMM"] = 2 * GEMM_SIZE**3 / seconds.pop("GEMM") / 1e9
        # The target's two sides, alternated (A B B A ...) for more rounds: the machine's
        # load changes between calls, and best / best of a few rounds swings by 20%.
        pairs = {"onnxruntime": variants["onnxruntime"], "auto": variants["auto"]}
        ratios = []
        for round_ in range(2 * repeats):
            order = list(pairs) if round_ % 2 == 0 else list(pairs)[::-1]
            paired = {name: _seconds(pairs[name]) for name in order}
            ratios.append(paired["onnxruntime"] / paired["auto"])
            for name, value in paired.items():
                seconds[name] = min(seconds[name], value)
        notes.append(
            f"auto / onnxruntime per alternated pair: median {np.median(ratios):.2f}x over "
            f"{len(ratios)} pairs"
        )
    return seconds, errors, setup, flops, notes


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _bf16_fpmath(network, x: torch.Tensor) -> torch.Tensor:
    """The torch engine with oneDNN computing float32 convolutions in bfloat16."""
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    try:
        return _inference(network, x)
    finally:
        torch.backends.mkldnn.conv.fp32_precision = "none"


def _bf16_fpmath_applies(network, x: torch.Tensor) -> bool:
    return not torch.equal(_bf16_fpmath(network, x[:2]), _inference(network, x[:2]))


def _no_grad(network, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return network(x)


def _inference(network, x: torch.Tensor, autocast: torch.dtype | None = None) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast(x.device.type, autocast, enabled=bool(autocast)):
        return network(x)


def report_cpu(args: argparse.Namespace) -> None:
    print(gemm_line("torch")[1])
    for name, backbone, size, batch in CONFIGS:
        if args.only and name != args.only:
            continue
        seconds, errors, setup, flops, notes = bench_cpu(
            backbone, size, batch, args.repeats, args.compile
        )
        tag = f"{name} ({backbone}, {size[0]}x{size[1]}, batch {batch})"
        gemm = setup.pop("GEMM")
        print(
            f"{tag}: {flops / 1e9:.2f} GFLOP per image (FlopCounterMode); float32 GEMM "
            f"{GEMM_SIZE}^3 timed in the same rounds: {gemm:.1f} GFLOP/s"
        )
        eager = batch / seconds["eager"]
        for variant, value in seconds.items():
            ips = batch / value
            print(
                f"  {variant:<19} {ips:7.1f} img/s = {ips / eager:4.2f}x eager, "
                f"{achieved(flops * batch, value, gemm)}, max |diff| {errors[variant]:.1e}"
            )
        for what, value in setup.items():
            print(f"  set-up, {what}: {value:.1f} s")
        for note in notes:
            print(f"  {note}")
        ratio = seconds["onnxruntime"] / seconds["auto"]
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        print(
            f"  auto / onnxruntime: {ratio:.2f}x (target >= {TARGET}x) {verdict}; "
            f"auto / torch engine: {seconds['torch engine'] / seconds['auto']:.2f}x"
        )


def report_cuda(repeats: int) -> None:
    if not torch.cuda.is_available():
        print(
            "[cuda] no CUDA device: eager / torch engine (channels_last) / AMP fp16 / AMP bf16 "
            f"figures at batch {' and '.join(map(str, CUDA_BATCHES))} skipped"
        )
        return
    device = torch.device("cuda")
    rates = {}
    for library in ("cuda", "cuda-fp16", "cuda-bf16"):
        rates[library], line = gemm_line(library, 8192)
        print(f"[cuda] {line}")
    plain = _build("resnet50", (224, 224)).to(device)
    flops = forward_flops(plain, torch.randn(1, 3, 224, 224, device=device))
    model = copy.deepcopy(plain)
    with feature_engine(model, device, (224, 224), engine="auto") as network:  # torch on CUDA
        for batch in CUDA_BATCHES:
            _cuda_batch(plain, network, batch, flops, rates, max(repeats, 5))


def _cuda_batch(plain, network, batch: int, flops: float, rates: dict, repeats: int) -> None:
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    variants = {
        "eager fp32": (lambda: _no_grad(plain, x), "cuda"),
        "torch engine fp32": (lambda: _inference(network, x), "cuda"),
        "eager AMP fp16": (lambda: _inference(plain, x, torch.float16), "cuda-fp16"),
        "eager AMP bf16": (lambda: _inference(plain, x, torch.bfloat16), "cuda-bf16"),
        "engine AMP fp16": (lambda: _inference(network, x, torch.float16), "cuda-fp16"),
        "engine AMP bf16": (lambda: _inference(network, x, torch.bfloat16), "cuda-bf16"),
    }
    seconds = interleaved(
        {name: fn for name, (fn, _) in variants.items()}, repeats, torch.cuda.synchronize
    )
    eager = batch / seconds["eager fp32"]
    print(f"[cuda] resnet50 224x224 batch {batch} ({flops / 1e9:.2f} GFLOP per image):")
    for name, (_, library) in variants.items():
        ips = batch / seconds[name]
        print(
            f"[cuda]   {name:<18} {ips:8.1f} img/s = {ips / eager:4.2f}x eager fp32, "
            f"{achieved(flops * batch, seconds[name], rates[library])} ({library} GEMM)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best is kept)")
    parser.add_argument("--only", choices=[c[0] for c in CONFIGS], default=None)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, load average {load}"
    )
    report_cpu(args)
    report_cuda(args.repeats)


if __name__ == "__main__":
    main()
