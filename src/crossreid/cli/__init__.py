"""The ``crossreid`` command line.

A thin layer: each subcommand lives in its own module of this package and defines

* ``HELP`` — one-line summary shown by ``crossreid --help``;
* ``add_arguments(parser)`` — registers its options;
* ``run(args) -> int`` — parses nothing itself, calls library functions, returns an exit code.

Errors derived from :class:`crossreid.errors.CrossReIDError` are printed as a single line
(``crossreid <command>: error: ...``) and give exit code 2, never a traceback.

The parser is built from every command module for any invocation, so a command module
imports the library it calls (torch, faiss, onnx ...) inside ``run``: ``crossreid --help``
and a mistyped flag answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from crossreid import __version__
from crossreid.errors import CrossReIDError, TrainingInterrupted

# Order in which subcommands are listed by ``crossreid --help``; modules of this package
# not named here are listed after these, alphabetically.
_ORDER = ["synth", "datasets", "train", "soup", "evaluate", "extract", "search", "export", "demo"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where it says nothing: on/off flags, whose
    default only restates that they are off (``--no-progress ... (default: True)`` read as
    the opposite), options without a value by default (``(default: None)``), and help
    texts that already name their default in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if action.nargs == 0 or action.default is None or "default" in help_text:
            return action.help
        return super()._get_help_string(action)


def _command_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    ordered = [name for name in _ORDER if name in found]
    return ordered + sorted(found - set(ordered))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossreid",
        description="Cross-domain person re-identification: train on a labelled source "
        "camera network, adapt to an unlabelled target, evaluate and search.",
    )
    parser.add_argument("--version", action="version", version=f"crossreid {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print debug messages from the library"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _command_modules():
        module = importlib.import_module(f"{__name__}.{name}")
        cmd = sub.add_parser(
            name.replace("_", "-"),
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=_HelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as err:  # preempted: saved, and says how to resume
        print(f"crossreid {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except CrossReIDError as err:
        print(f"crossreid {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crossreid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
