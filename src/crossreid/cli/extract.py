"""``crossreid extract``: features of a dataset's query/gallery, or of a folder of crops."""

from __future__ import annotations

import argparse
import logging

from crossreid.cli._common import (
    add_camera_bn_argument,
    add_extraction_arguments,
    extraction_device,
    extraction_options,
)

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
    parser.add_argument("--checkpoint", required=True, metavar="C", help="a crossreid checkpoint")
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
    import numpy as np

    from crossreid.evaluation.extraction import (
        extract_features_distributed,
        extract_query_gallery,
        records_from_folder,
    )
    from crossreid.models.checkpoint import load_checkpoint
    from crossreid.retrieval.index import save_npz_atomic
    from crossreid.training.distributed import cleanup_distributed, setup_distributed

    device = extraction_device(args.device)
    # Read inputs before joining a process group, so bad input fails fast on every rank.
    if args.camera_bn and args.dataset is None:
        from crossreid.errors import ConfigError

        raise ConfigError(
            "--camera-bn needs --dataset: each camera's statistics come from its training split"
        )
    model = load_checkpoint(args.checkpoint, map_location="cpu")
    if args.dataset is not None:
        from crossreid.data.specs import resolve_dataset

        dataset = resolve_dataset(args.dataset, args.data_root)
        records = None
    else:
        dataset = None
        records = records_from_folder(args.images)
    info = setup_distributed(device.type)
    try:
        options = extraction_options(args, device)
        if dataset is not None:
            camera_bn = dataset.train if args.camera_bn else None
            arrays = extract_query_gallery(
                model, dataset.query, dataset.gallery, camera_bn=camera_bn, **options
            )
        else:
            result = extract_features_distributed(model, records, desc="images", **options)
            arrays = None
            if result is not None:
                arrays = {
                    "features": result.features,
                    "paths": np.asarray(result.paths, dtype=str),
                    "pids": result.pids,
                    "camids": result.camids,
                }
        if arrays is None:  # not rank 0: rank 0 writes the merged file
            return 0
        path = save_npz_atomic(args.out, arrays)
    finally:
        cleanup_distributed(info)
    if dataset is not None:
        print(
            f"wrote {path}: query {arrays['qf'].shape[0]} x {arrays['qf'].shape[1]}, "
            f"gallery {arrays['gf'].shape[0]} x {arrays['gf'].shape[1]} "
            f"({dataset.name}, {info.world_size} process(es))"
        )
    else:
        skipped = len(records) - len(arrays["paths"])
        note = f", {skipped} unreadable skipped" if skipped else ""
        print(
            f"wrote {path}: {arrays['features'].shape[0]} x {arrays['features'].shape[1]} "
            f"features from {args.images}{note} ({info.world_size} process(es))"
        )
    return 0
