"""``crossreid search``: top-k gallery matches of query images, with faiss."""

from __future__ import annotations

import argparse
import json
import logging

from crossreid.cli._common import add_extraction_arguments, extraction_device

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
    parser.add_argument(
        "--checkpoint", metavar="C", help="checkpoint embedding the queries (as the gallery)"
    )
    parser.add_argument("--topk", type=int, default=10, metavar="K", help="matches per query")
    parser.add_argument(
        "--metric",
        default=None,
        choices=["cosine", "correlation", "L2", "L1"],
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


def _gallery_from_extract(path, data) -> tuple:
    """``(features, paths, pids, camids)`` of an extract output (dataset or --images)."""
    from crossreid.errors import ConfigError

    if "gf" in data.files:
        keys = ("gf", "g_paths", "g_pids", "g_camids")
    elif "features" in data.files:
        keys = ("features", "paths", "pids", "camids")
    else:
        raise ConfigError(
            f"{path} is neither a crossreid index nor an extract output "
            f"(no 'faiss_index', 'gf' or 'features' entry; it has {', '.join(data.files)})"
        )
    features = data[keys[0]]
    paths = [str(p) for p in data[keys[1]]] if keys[1] in data.files else None
    pids = data[keys[2]] if keys[2] in data.files else None
    camids = data[keys[3]] if keys[3] in data.files else None
    return features, paths, pids, camids


def open_index(args: argparse.Namespace):
    """The :class:`FeatureIndex` named by ``--index`` (loaded, or built from features)."""
    from pathlib import Path

    import numpy as np

    from crossreid.errors import ConfigError
    from crossreid.retrieval.index import INDEX_FORMAT, build_index, load_index

    path = Path(args.index)
    if not path.is_file():
        raise ConfigError(f"index file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" in data.files and str(data["format"]) == INDEX_FORMAT:
                saved = True
            else:
                saved = False
                features, paths, pids, camids = _gallery_from_extract(path, data)
    except (ConfigError, FileNotFoundError):
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read {path} as a .npz file: {exc}") from None
    if saved:
        index = load_index(path, metric=args.metric)
        if args.approx and index.kind != "ivf":
            log.warning("--approx ignored: %s is a saved exact index", path)
        if args.nprobe is not None and index.kind == "ivf":
            index.nprobe = args.nprobe
        return index
    return build_index(
        features,
        args.metric or "cosine",
        approx=args.approx,
        nlist=args.nlist,
        nprobe=args.nprobe,
        paths=paths,
        pids=pids,
        camids=camids,
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crossreid.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be a positive integer, got {args.topk}")
    if not args.query and not args.save_index:
        raise ConfigError("give --query IMG [IMG ...] (and --checkpoint), or --save-index FILE")
    if args.query and not args.checkpoint:
        raise ConfigError("--query needs --checkpoint (the model that embedded the gallery)")

    index = open_index(args)
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

    from crossreid.evaluation.extraction import extract_features, records_from_paths
    from crossreid.models.checkpoint import load_checkpoint
    from crossreid.retrieval.visualize import RankedRow, match_status, render_ranked_rows

    model = load_checkpoint(args.checkpoint, map_location="cpu")
    feature_dim = int(getattr(model, "feature_dim", index.dim))
    if feature_dim != index.dim:
        raise ConfigError(
            f"index {args.index} holds {index.dim}-d features, but checkpoint "
            f"{args.checkpoint} gives {feature_dim}-d features: extract the gallery with it"
        )
    records = records_from_paths(args.query)
    device = extraction_device(args.device)
    queries = extract_features(
        model,
        records,
        batch_size=args.batch_size,
        device=device,
        flip=args.flip,
        workers=0 if args.workers is None else args.workers,
        progress=False,
        desc="query",
    )
    topk = args.topk
    if topk > index.ntotal:
        log.warning(
            "--topk %d is larger than the gallery (%d images): showing all %d",
            topk,
            index.ntotal,
            index.ntotal,
        )
        topk = index.ntotal
    distances, ranked = index.search(queries.features, topk)

    def describe(j: int) -> dict:
        return {
            "index": j,
            "path": index.paths[j] if index.paths is not None else None,
            "pid": int(index.pids[j]) if index.pids is not None else None,
            "camid": int(index.camids[j]) if index.camids is not None else None,
        }

    results = []
    rows = []
    for qi, qpath in enumerate(queries.paths):
        qpid, qcam = int(queries.pids[qi]), int(queries.camids[qi])
        matches = []
        for rank, (j, d) in enumerate(zip(ranked[qi], distances[qi], strict=True), start=1):
            if j < 0:
                continue
            entry = {"rank": rank, **describe(int(j)), "distance": float(d)}
            if entry["pid"] is not None and entry["camid"] is not None:
                entry["status"] = match_status(qpid, qcam, entry["pid"], entry["camid"])
            else:
                entry["status"] = "unknown"
            matches.append(entry)
        results.append({"query": qpath, "pid": qpid, "camid": qcam, "matches": matches})
        if args.out:
            if index.paths is None:
                raise ConfigError(f"index {args.index} stores no gallery paths to draw")
            rows.append(
                RankedRow(
                    qpath,
                    [(m["path"], m["status"]) for m in matches],
                    Path(qpath).name,
                    [m["distance"] for m in matches],
                )
            )
    if args.out:
        picture = render_ranked_rows(rows, args.out, title=f"top-{topk} by {index.metric} distance")
        log.info("wrote %s", picture)
    if args.json:
        print(
            json.dumps(
                {"metric": index.metric, "kind": index.kind, "topk": topk, "queries": results}
            )
        )
        return 0
    for result in results:
        print(f"query {result['query']}")
        for m in result["matches"]:
            label = m["path"] if m["path"] is not None else f"#{m['index']}"
            print(
                f"  {m['rank']:>3}  {m['distance']:.4f}  {label}  pid={m['pid']} cam={m['camid']}"
            )
    return 0
