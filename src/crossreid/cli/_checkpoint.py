"""``--checkpoint`` and ``--best``, taken the same way by every command that reads a
checkpoint (``evaluate``, ``extract``, ``search``, ``export``): a checkpoint file, or a run
folder whose ``checkpoints/last.pt`` (``best.pt`` with ``--best``) is read.

The leading underscore keeps the dispatcher from listing this module as a subcommand.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from crossreid.errors import CheckpointError, ConfigError

log = logging.getLogger("crossreid.checkpoint")


def add_checkpoint_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    required: bool = False,
    role: str = "",
) -> None:
    """``--checkpoint C`` (``role`` ends its help, e.g. "embedding the queries") and ``--best``."""
    parser.add_argument(
        "--checkpoint",
        required=required,
        metavar="C",
        help=f"a crossreid checkpoint file or run folder{' ' + role if role else ''} (a run "
        "folder: its checkpoints/last.pt)",
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="with a run folder as --checkpoint, read its best.pt (best target mAP) instead "
        "of last.pt",
    )


def checkpoint_file(args: argparse.Namespace) -> Path | None:
    """The checkpoint file that ``--checkpoint`` and ``--best`` name (``None`` without
    ``--checkpoint``).

    Raises:
        ConfigError: ``--best`` without a run folder.
        CheckpointError: the file or folder does not exist, or the folder holds no
            checkpoint (no ``best.pt`` with ``--best``).
    """
    from crossreid.models.checkpoint import find_checkpoint  # torch: loaded when a command runs

    if args.checkpoint is None:
        if args.best:
            raise ConfigError("--best needs --checkpoint RUN_FOLDER")
        return None
    given = Path(args.checkpoint)
    if args.best and given.is_file():
        raise ConfigError(
            f"--best reads best.pt of a run folder, but {given} is a checkpoint file; give the "
            "run folder, or drop --best"
        )
    found = find_checkpoint(given, prefer_best=args.best)
    if args.best and found.name != "best.pt":
        raise CheckpointError(
            f"{given} holds no best.pt yet (it is written at the first evaluation); drop "
            f"--best to read {found}"
        )
    if found != given:
        log.info("reading checkpoint %s", found)
    return found
