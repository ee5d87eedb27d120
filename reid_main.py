#!/usr/bin/env python3
"""The seed's entry point, kept for its users: ``python3 reid_main.py --use_gpu 0 ...``.

Accepts the seed's flags unchanged and maps them onto ``crossreid train``:

===========================  =================================================================
seed flag                    meaning here
===========================  =================================================================
``--use_gpu N``              CUDA device index; ``-1`` trains on the CPU (default: CUDA if
                             available, else CPU)
``--source_dataset NAME``    labelled source: ``CUHK03``, ``Duke``, ``Market``, ``MSMT17_V1``
                             (any ``crossreid`` dataset spec works too), under ``--data_root``
``--target_dataset NAME``    unlabelled target, same names
``--rank K``                 the rank-k accuracy printed at the end, next to mAP (the CMC is
                             computed to ``--max_rank``, 50 by default)
``--learning_rate LR``       ``--lr``
``--dist_metric M``          ``L1``, ``L2``, ``cosine`` or ``correlation``
``--model_dir/--model_name`` the run is written to ``MODEL_DIR/MODEL_NAME/``
``--w_loss_rec/dif/mmd/ctr`` the loss weights
``--batch_size B``           source images per step
``--pretrain_model_name P``  ``--init-from P`` (a run folder or checkpoint; the classifier is
                             skipped when the class count differs). When ``P`` is this run's
                             own folder and holds no checkpoint yet, as in the seed's example
                             command, training starts from scratch with a warning.
``--total_epochs E``         passes over the source train set (sets the number of steps)
===========================  =================================================================

Every ``crossreid train`` option is accepted too, in underscore spelling (``--max_steps``,
``--backbone``, ``--image_size 256x128``, ``--pretrained none`` ...), plus ``--data_root``.
Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from crossreid.cli.train import FLAG_ALIASES, add_config_arguments, given_options
from crossreid.errors import ConfigError, CrossReIDError, TrainingInterrupted

PROG = "reid_main.py"
SEED_DATASETS = ("CUHK03", "Duke", "Market", "MSMT17_V1")

#: The seed's names for TrainConfig fields (on top of crossreid's own aliases).
SEED_ALIASES = {
    **FLAG_ALIASES,
    "source": ("source_dataset",),
    "target": ("target_dataset",),
    "lr": ("learning_rate",),
    "init_from": ("pretrain_model_name",),
    "epochs": ("total_epochs",),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cross-domain person re-ID training with the seed's command-line flags "
        f"(datasets: {', '.join(SEED_DATASETS)} under --data_root). Same training as "
        "`crossreid train`.",
    )
    seed = parser.add_argument_group("the seed's flags")
    seed.add_argument(
        "--use_gpu", type=int, metavar="N", help="CUDA device index; -1 = CPU (default: auto)"
    )
    seed.add_argument(
        "--rank",
        type=int,
        default=1,
        metavar="K",
        help="rank-k accuracy printed at the end with mAP (default: 1)",
    )
    seed.add_argument("--model_dir", default="runs", help="parent folder of runs (default: runs)")
    seed.add_argument(
        "--model_name",
        default="reid_main",
        help="run name: MODEL_DIR/MODEL_NAME/ (default: reid_main)",
    )
    seed.add_argument("--config", metavar="FILE.yaml", help="YAML file of crossreid train options")
    seed.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_config_arguments(parser, separator="_", aliases=SEED_ALIASES, aliases_first=True)
    parser.error = _one_line_error  # type: ignore[method-assign]
    return parser


def _one_line_error(message: str) -> None:
    """argparse errors as one line (no usage block), exit status 2."""
    print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def _options(args: argparse.Namespace) -> dict:
    options = given_options(args)
    options.setdefault("source", "Duke")
    options.setdefault("target", "Market")
    if args.use_gpu is not None and "device" not in options:
        options["device"] = "cpu" if args.use_gpu < 0 else f"cuda:{args.use_gpu}"
    run_dir = Path(args.model_dir) / args.model_name
    options.setdefault("output", str(run_dir))
    init = options.get("init_from")
    if init is not None and Path(init).resolve() == Path(options["output"]).resolve():
        from crossreid.errors import CheckpointError
        from crossreid.models.checkpoint import find_checkpoint

        try:
            find_checkpoint(init, prefer_best=True)
        except CheckpointError:
            logging.getLogger(PROG).warning(
                "--pretrain_model_name %s holds no checkpoint yet; training from scratch", init
            )
            options.pop("init_from")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        if args.rank < 1:
            raise ConfigError(f"--rank must be >= 1, got {args.rank}")
        from crossreid.cli.train import print_summary
        from crossreid.training.trainer import run_config, train
        from crossreid.utils.distributed import distributed_env

        config = run_config(_options(args), args.config)
        if args.rank > config.max_rank:
            raise ConfigError(f"--rank {args.rank} is beyond --max_rank {config.max_rank}")
        result = train(config, progress=not args.no_progress)
    except TrainingInterrupted as err:  # preempted: saved, and says how to resume
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_code
    except CrossReIDError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if distributed_env().is_main and result.final_cmc:
        print(
            f"rank-{args.rank}: {result.final_cmc[args.rank - 1]:.1%}  "
            f"mAP: {result.final_metrics['mAP']:.1%}  (target {config.target}, step {result.steps})"
        )
        print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
