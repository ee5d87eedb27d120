"""``crossreid synth``: write a synthetic camera domain in Market-1501 layout."""

from __future__ import annotations

import argparse
import time

HELP = "generate a synthetic pedestrian domain (Market-1501 layout) for tests and demos"
DESCRIPTION = (
    "Generate a seeded synthetic re-ID domain: bounding_box_train/, query/, "
    "bounding_box_test/ and meta.json. Domains share one distribution of people and differ "
    "in camera style (A: daylight, neutral, sharp; B: dim indoor/night, strong colour "
    "casts, low contrast, blur and noise). The same arguments give byte-identical files."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from crossreid.data.synthetic import SyntheticConfig

    d = SyntheticConfig()
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--domain", default=d.domain, help="camera domain: A or B")
    parser.add_argument(
        "--ids", type=int, default=d.num_ids, metavar="N", help="number of identities"
    )
    parser.add_argument(
        "--train-ids",
        type=int,
        default=None,
        metavar="N",
        help="identities of the training split (default: half of --ids); the rest are "
        "query/gallery",
    )
    parser.add_argument(
        "--images-per-id",
        type=int,
        default=d.images_per_id,
        metavar="K",
        help="images of each identity",
    )
    parser.add_argument(
        "--cameras", type=int, default=d.num_cameras, metavar="C", help="number of cameras"
    )
    parser.add_argument("--seed", type=int, default=d.seed, metavar="S", help="random seed")
    parser.add_argument(
        "--size", default=f"{d.size[0]}x{d.size[1]}", metavar="HxW", help="image size"
    )
    parser.add_argument(
        "--preview", metavar="PNG", help="also write a contact sheet (rows = ids, cols = cameras)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from crossreid.data.synthetic import (
        SyntheticConfig,
        generate_domain,
        parse_size,
        render_preview,
    )

    config = SyntheticConfig(
        domain=args.domain,
        num_ids=args.ids,
        train_ids=args.train_ids,
        images_per_id=args.images_per_id,
        num_cameras=args.cameras,
        seed=args.seed,
        size=parse_size(args.size),
    )
    start = time.perf_counter()
    meta = generate_domain(config, args.out, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    counts = meta["counts"]
    total = sum(c["images"] for c in counts.values())
    parts = ", ".join(f"{s} {c['ids']} ids/{c['images']} images" for s, c in counts.items())
    print(
        f"synth: domain {config.domain} (seed {config.seed}, {config.size[0]}x{config.size[1]}) "
        f"-> {args.out}: {parts} ({meta['distractors']} distractors), {config.num_cameras} "
        f"cameras; {total} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} images/s)"
    )
    if args.preview:
        path = render_preview(args.out, args.preview)
        print(f"synth: preview written to {path}")
    return 0
