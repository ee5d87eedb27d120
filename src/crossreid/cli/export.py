"""``crossreid export``: the feature network of a checkpoint as ONNX or TorchScript."""

from __future__ import annotations

import argparse

from crossreid.cli._checkpoint import add_checkpoint_option, checkpoint_file

HELP = "export a checkpoint's feature network to ONNX or TorchScript (dynamic batch)"
DESCRIPTION = (
    "Write the identity-feature network of a checkpoint (input: normalised images "
    "[B, 3, H, W], output: features [B, D]; B dynamic) to ONNX (input 'images', output "
    "'features') or TorchScript. The file is reloaded and checked against PyTorch's output "
    "before it replaces --out. A checkpoint whose weights do not fit its recorded "
    "architecture is refused."
)


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x128, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"image size {text!r} must be positive")
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_option(parser, required=True)
    parser.add_argument(
        "--format", dest="fmt", choices=["onnx", "torchscript"], default="onnx", help="file format"
    )
    parser.add_argument(
        "--out", metavar="FILE", help="output file (default: beside the checkpoint file)"
    )
    parser.add_argument(
        "--image-size",
        type=_size,
        default=None,
        metavar="HxW",
        help="input size of the example (default: the checkpoint's)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip reloading the file and comparing it with PyTorch",
    )


def run(args: argparse.Namespace) -> int:
    from crossreid.export import export_model

    checkpoint = checkpoint_file(args)
    path = export_model(checkpoint, args.fmt, args.out, args.image_size, verify=args.verify)
    print(f"wrote {path} ({args.fmt})")
    return 0
