"""``crossreid train``: train (or resume) the cross-domain network.

Every :class:`~crossreid.training.TrainConfig` field is a flag (``max_steps`` →
``--max-steps``), generated from the dataclass so the two never drift apart. Precedence:
defaults < the run being resumed (``--resume``) < ``--config FILE.yaml`` < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any

from crossreid.training.config import TrainConfig, config_fields
from crossreid.training.terms import LOSS_TERMS

HELP = "train the identity/pose network on a labelled source, adapting to an unlabelled target"
DESCRIPTION = (
    "Train the cross-domain re-ID network: PK batches from the labelled --source, unlabelled "
    "batches from --target (reconstruction + MMD), periodic evaluation on the target's "
    "query/gallery. Writes TensorBoard logs, metrics.jsonl and checkpoints/{last,best}.pt "
    "under --output. Example: crossreid train --source synthetic:A --target synthetic:B "
    "--backbone resnet18 --pretrained none --image-size 128x64 --max-steps 2000 --output runs/ab"
)

#: Extra spellings accepted for some fields (the seed's names among them).
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    term.weight_field: (f"w_loss_{term.name}",) for term in LOSS_TERMS
}

_METAVARS = {
    "image_size": "HxW",
    "decoder_widths": "W1,W2,...",
    "milestones": "S1,S2,...",
    "mmd_bandwidths": "B1,B2,...",
    "source": "SPEC",
    "num_instances": "K",
    "device": "auto|cpu|cuda[:N]",
    "target": "SPEC",
    "data_root": "DIR",
    "output": "DIR",
    "resume": "DIR_OR_FILE",
    "init_from": "DIR_OR_FILE",
    "pretrained": "imagenet|none|PATH",
}

_GROUP_TITLES = {
    "data": "data and run folder",
    "model": "model",
    "sampling": "batches and loading",
    "optimisation": "optimisation",
    "losses": "losses",
    "cluster": "pseudo-label stage (--method cluster)",
    "logging": "evaluation and logging",
    "runtime": "device, seed, resume",
}


def _format_default(value: Any) -> str:
    if isinstance(value, bool):  # --x / --no-x: "(default: False)" reads like a value to pass
        return "on" if value else "off"
    if isinstance(value, tuple):
        if not value:
            return "none"
        return "x".join(map(str, value)) if len(value) == 2 else ",".join(map(str, value))
    return "none" if value is None else str(value)


def add_config_arguments(
    parser: argparse.ArgumentParser,
    *,
    separator: str = "-",
    exclude: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
    aliases_first: bool = False,
) -> None:
    """Add one flag per :class:`TrainConfig` field (``separator`` joins words: ``-`` or ``_``).

    ``aliases`` adds other spellings (``aliases_first``: show them in the usage line).
    Flags default to "not given" (``argparse.SUPPRESS``) so that only the flags a user typed
    override the config file; values are kept as strings and coerced (with one-line
    :class:`~crossreid.errors.ConfigError` messages) by :func:`build_config`.
    """
    aliases = FLAG_ALIASES if aliases is None else aliases
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints = typing.get_type_hints(TrainConfig)
    for f in config_fields():
        if f.name in exclude:
            continue
        group_name = f.metadata.get("group", "other")
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(
                _GROUP_TITLES.get(group_name, group_name)
            )
        group = groups[group_name]
        names = [f"--{f.name.replace('_', separator)}"]
        extra = [f"--{a.replace('_', separator)}" for a in aliases.get(f.name, ())]
        names = extra + names if aliases_first else names + extra
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {_format_default(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if hints[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kind = typing.get_args(hints[f.name]) or (hints[f.name],)
            generic = "N" if int in kind else "X" if float in kind else "VALUE"
            kwargs["metavar"] = _METAVARS.get(f.name, "W" if f.name.startswith("w_") else generic)
            if f.metadata.get("choices"):
                kwargs["choices"] = list(f.metadata["choices"])
                kwargs.pop("metavar")
        group.add_argument(*names, **kwargs)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields present in a parsed namespace (i.e. typed by the user)."""
    names = {f.name for f in config_fields()}
    return {key: value for key, value in vars(args).items() if key in names}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="YAML file of options (keys as the flags below)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (e.g. for log files)"
    )
    add_config_arguments(parser)


def print_summary(result: Any, stream: Any = None) -> None:
    """The end-of-run lines: final and best metrics, files written."""
    stream = stream or sys.stdout

    def line(metrics: dict[str, float]) -> str:
        return (
            f"rank-1 {metrics['rank1']:.1%}  rank-5 {metrics['rank5']:.1%}  "
            f"rank-10 {metrics['rank10']:.1%}  rank-20 {metrics['rank20']:.1%}  "
            f"mAP {metrics['mAP']:.1%}  mINP {metrics['mINP']:.1%}"
        )

    if result.final_metrics:
        print(f"final (step {result.steps}): {line(result.final_metrics)}", file=stream)
    if result.best_metrics:
        print(f"best  (step {result.best_step}): {line(result.best_metrics)}", file=stream)
    print(f"run folder: {result.output}  ({result.seconds:.0f} s)", file=stream)
    print(f"checkpoints: {result.last_checkpoint}, {result.best_checkpoint}", file=stream)


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs (see crossreid.cli): torch.
    from crossreid.training.trainer import run_config, train
    from crossreid.utils.distributed import distributed_env

    config = run_config(given_options(args), args.config)
    result = train(config, progress=not args.no_progress)
    if distributed_env().is_main:  # under torchrun, one summary
        print_summary(result)
    return 0
