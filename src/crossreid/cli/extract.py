"""``crossreid extract``: features of a dataset's query/gallery, or of a folder of crops."""

from __future__ import annotations

import argparse
import logging

from crossreid.cli._checkpoint import add_checkpoint_option, checkpoint_file
from crossreid.cli._common import (
    add_camera_bn_argument,
    add_extraction_arguments,
    extraction_options,
)
from crossreid.errors import ConfigError

HELP = "extract re-ID features of a dataset (query + gallery) or an image folder to a .npz"
DESCRIPTION = (
    "Run a checkpoint's identity encoder over images and save the features with their paths, "
    "pids and camera ids. With --dataset the file holds qf, gf, q_pids, g_pids, q_camids, "
    "g_camids, q_paths, g_paths (what 'crossreid evaluate --features' and 'crossreid search "
    "--index' read); with --images it holds features, paths, pids, camids (pid/camid parsed "
    "from Market-style names, -1 otherwise). Launched with torchrun, the images are split "
    "across the processes and rank 0 writes one merged file."
)

log = logging.getLogger("crossreid.extract")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_option(parser, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset", metavar="SPEC", help="NAME, folder:PATH or synthetic:DOMAIN (query+gallery)"
    )
    source.add_argument("--images", metavar="DIR", help="a folder of person crops (recursive)")
    parser.add_argument("--data-root", metavar="DIR", help="folder holding named datasets")
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    add_extraction_arguments(parser)
    add_camera_bn_argument(parser)


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs (see crossreid.cli): torch.
    from crossreid.inference.extract_file import extract_to_file

    if args.camera_bn and args.dataset is None:
        raise ConfigError(
            "--camera-bn needs --dataset: each camera's statistics come from its training split"
        )
    summary = extract_to_file(
        checkpoint_file(args),
        args.out,
        dataset=args.dataset,
        data_root=args.data_root,
        images=args.images,
        camera_bn=args.camera_bn,
        **extraction_options(args),
    )
    if summary is not None:  # rank 0 writes and reports
        print(summary)
    return 0
