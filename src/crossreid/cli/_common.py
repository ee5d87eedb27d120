"""Argument helpers shared by the commands that extract features from a checkpoint
(``extract``, ``evaluate --checkpoint``, ``search``).

The leading underscore keeps the dispatcher from listing this module as a subcommand.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_extraction_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that extracts features from a checkpoint."""
    parser.add_argument(
        "--flip", action="store_true", help="average features with the mirrored image's"
    )
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per batch")
    parser.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--engine",
        default="auto",
        metavar="E",
        help="auto (onnxruntime on the CPU when the model exports to ONNX, else torch), torch "
        "or onnxruntime (CPU only; fails for a model that does not export)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="data-loading processes (default: min(4, CPU count))",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bar"
    )


def add_camera_bn_argument(parser) -> None:
    """``--camera-bn``: camera-wise BatchNorm statistics from the dataset's training split."""
    parser.add_argument(
        "--camera-bn",
        action="store_true",
        help="normalise each camera's images with BatchNorm statistics recomputed from that "
        "camera's images in the dataset's training split (unlabelled use; test-time "
        "adaptation to a new camera network)",
    )


def extraction_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the extraction functions from the parsed options (the device
    is resolved by the library: ``cuda:LOCAL_RANK`` under torchrun; the engine name is
    checked before any checkpoint is read).

    Raises:
        ConfigError: an unknown device or engine.
    """
    # torch: loaded when a command runs, not for --help
    from crossreid.inference.engine import check_engine
    from crossreid.utils.devices import resolve_device

    return {
        "batch_size": args.batch_size,
        "device": resolve_device(args.device),
        "engine": check_engine(args.engine),
        "flip": args.flip,
        "workers": args.workers,
        "progress": args.progress,
    }
