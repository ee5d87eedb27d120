"""``crossreid search``: top-k gallery matches of query images, with faiss."""

from __future__ import annotations

import argparse
import json
import logging

from crossreid.cli._checkpoint import add_checkpoint_option, checkpoint_file
from crossreid.cli._common import add_extraction_arguments, extraction_options
from crossreid.errors import ConfigError
from crossreid.evaluation.distance import METRICS

HELP = "find the top-k gallery matches of query images (faiss exact or IVF search)"
DESCRIPTION = (
    "Embed query images with a checkpoint and search a gallery. --index is either a file "
    "written by 'crossreid extract' (its gallery, or its features for --images) from which "
    "an exact faiss index is built (IVF with --approx), or an index saved with --save-index "
    "(it remembers its metric and dimension). Prints the ranked matches, or JSON with --json; "
    "--out draws them (green: same person, other camera; red: another person; grey: same "
    "person and camera; blue-grey: unlabelled query)."
)

log = logging.getLogger("crossreid.search")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index", required=True, metavar="FILE.npz", help="extract output or saved index"
    )
    parser.add_argument("--query", nargs="+", metavar="IMG", help="query image file(s)")
    add_checkpoint_option(parser, role="embedding the queries (as it did the gallery)")
    parser.add_argument("--topk", type=int, default=10, metavar="K", help="matches per query")
    parser.add_argument(
        "--metric",
        default=None,
        choices=METRICS,
        help="distance (default: the saved index's, else cosine)",
    )
    parser.add_argument(
        "--approx", action="store_true", help="approximate IVF index instead of exact search"
    )
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default ~4 sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query")
    parser.add_argument(
        "--save-index", metavar="FILE.npz", help="save the built index (reuse it with --index)"
    )
    parser.add_argument("--out", metavar="PNG", help="draw the ranked results to this picture")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_extraction_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs (see crossreid.cli): faiss and torch.
    from crossreid.models.checkpoint import load_checkpoint
    from crossreid.retrieval.index import open_index
    from crossreid.retrieval.search import draw_search_results, search_images

    if args.topk < 1:
        raise ConfigError(f"--topk must be a positive integer, got {args.topk}")
    if not args.query and not args.save_index:
        raise ConfigError("give --query IMG [IMG ...] (and --checkpoint), or --save-index FILE")
    if args.query and not args.checkpoint:
        raise ConfigError("--query needs --checkpoint (the model that embedded the gallery)")
    checkpoint = checkpoint_file(args)

    index = open_index(
        args.index, metric=args.metric, approx=args.approx, nlist=args.nlist, nprobe=args.nprobe
    )
    if args.save_index:
        saved = index.save(args.save_index)
        log.info(
            "saved %s index (%s, %d x %d) to %s",
            index.kind,
            index.metric,
            index.ntotal,
            index.dim,
            saved,
        )
    if not args.query:
        return 0

    model = load_checkpoint(checkpoint, map_location="cpu")
    options = extraction_options(args)
    options.update(progress=False, workers=0 if args.workers is None else args.workers)
    results = search_images(
        model,
        index,
        args.query,
        args.topk,
        names=(f"index {args.index}", f"checkpoint {checkpoint}"),
        **options,
    )
    topk = min(args.topk, index.ntotal)
    if args.out:
        picture = draw_search_results(
            results, args.out, title=f"top-{topk} by {index.metric} distance"
        )
        log.info("wrote %s", picture)
    if args.json:
        report = {"metric": index.metric, "kind": index.kind, "topk": topk, "queries": results}
        print(json.dumps(report))
        return 0
    for result in results:
        print(f"query {result['query']}")
        for m in result["matches"]:
            label = m["path"] if m["path"] is not None else f"#{m['index']}"
            print(
                f"  {m['rank']:>3}  {m['distance']:.4f}  {label}  pid={m['pid']} cam={m['camid']}"
            )
    return 0
