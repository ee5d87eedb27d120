"""``crossreid datasets``: validate a dataset and print its statistics."""

from __future__ import annotations

import argparse
import json

HELP = "validate a dataset and print its statistics (ids/images/cameras per split)"
DESCRIPTION = (
    "Parse a dataset, check its folders and file names, and print the number of identities, "
    "images and cameras of its train, query and gallery splits. DATASET is a name "
    "(market1501, dukemtmcreid, cuhk03, msmt17, custom, or an alias such as Market, Duke, "
    "MSMT17_V1) looked up under --root, or a spec folder:PATH or synthetic:DOMAIN."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", required=True, metavar="DATASET", help="dataset name, alias or spec"
    )
    parser.add_argument(
        "--root",
        "--data-root",
        dest="root",
        default=".",
        metavar="DIR",
        help="the dataset folder or a folder holding it (custom: a folder or a CSV file)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object and nothing else on stdout"
    )
    parser.add_argument(
        "--subset", choices=["detected", "labeled"], default=None, help="CUHK03 box type"
    )
    parser.add_argument(
        "--protocol", choices=["new", "classic"], default=None, help="CUHK03 protocol"
    )
    parser.add_argument(
        "--split", type=int, default=None, metavar="K", help="CUHK03 classic split, 0..19"
    )


def _load(args: argparse.Namespace):
    """The dataset ``args.dataset`` names: a plain name, or a spec (``folder:``, ``?opt=``...)."""
    from crossreid.data import build_dataset
    from crossreid.errors import ConfigError

    options = {"subset": args.subset, "protocol": args.protocol, "split": args.split}
    spec = args.dataset
    if ":" not in spec and "?" not in spec:
        return build_dataset(spec, args.root, **options)
    try:
        from crossreid.data.specs import resolve_dataset
    except ModuleNotFoundError as err:  # specs arrive with the synthetic data; names still work
        if err.name != "crossreid.data.specs":
            raise
        kind, _, value = spec.partition(":")
        if kind == "folder":
            return build_dataset("custom", value)
        raise ConfigError(f"dataset spec {spec!r} is not supported by this installation") from None
    if any(v is not None for v in options.values()):
        raise ConfigError(
            f"--subset/--protocol/--split apply to a plain dataset name, not to spec {spec!r}; "
            "write options into the spec instead (e.g. cuhk03?subset=labeled)"
        )
    return resolve_dataset(spec, args.root)


def format_table(name: str, root: object, stats: dict[str, dict[str, int]]) -> str:
    """Statistics as an aligned text table."""
    lines = [f"{name} at {root}", f"  {'split':<8} {'ids':>7} {'images':>8} {'cameras':>8}"]
    for split, row in stats.items():
        lines.append(f"  {split:<8} {row['ids']:>7} {row['images']:>8} {row['cameras']:>8}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    dataset = _load(args)
    stats = dataset.statistics()
    if args.json:
        print(json.dumps(stats))
    else:
        print(format_table(dataset.name, dataset.root, stats))
    return 0
