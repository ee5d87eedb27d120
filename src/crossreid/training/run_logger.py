"""What a training run writes besides checkpoints: TensorBoard events and ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per evaluation::

    {"step": 1000, "rank1": 0.61, "rank5": 0.79, "rank10": 0.84, "rank20": 0.89,
     "mAP": 0.35, "mINP": 0.08}

(fractions in [0, 1]). TensorBoard gets ``loss/<name>``, ``lr/<group>``, ``eval/<metric>`` and
image grids ``images/input``, ``images/pose_input``, ``images/reconstruction``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torchvision.utils import make_grid

from crossreid.evaluation.rank import RANK_METRICS
from crossreid.utils.io import append_line, make_folder, write_text_atomic

__all__ = ["METRIC_KEYS", "RunLogger", "read_metrics"]

#: The keys of one ``metrics.jsonl`` line besides ``step``.
METRIC_KEYS = RANK_METRICS


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """The evaluation records of a ``metrics.jsonl`` file, in order (``[]`` if it is absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            records.append(json.loads(line))
    return records


class RunLogger:
    """TensorBoard and ``metrics.jsonl`` writer of one run (inactive on ranks other than 0).

    ``resume_step``: when continuing a run, TensorBoard events and metric lines written after
    that step by the interrupted run are discarded, so curves do not double back.
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        *,
        enabled: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.output = Path(output)
        self.enabled = enabled
        self.metrics_path = self.output / "metrics.jsonl"
        self._writer = None
        self._evaluated: set[int] = set()
        if not enabled:
            return
        make_folder(self.output)
        if resume_step is not None:
            kept = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= resume_step]
            write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
            # A run resumed after its last step evaluates that step again: log it once.
            self._evaluated = {r["step"] for r in kept if "kind" not in r}
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        # tensorboard's writer pulls in the tensorboard package (protobuf ...): only for rank 0.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(
            log_dir=str(self.output / "tensorboard"),
            purge_step=resume_step + 1 if resume_step is not None else None,
        )

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        """Write scalars ``<prefix><name>`` at ``step`` (non-finite values are skipped)."""
        if self._writer is None:
            return
        for name, value in values.items():
            value = float(value)
            if math.isfinite(value):
                self._writer.add_scalar(prefix + name, value, step)

    def images(self, step: int, grids: Mapping[str, torch.Tensor], nrow: int = 8) -> None:
        """Write image grids; each value is ``[B, 3, H, W]`` with values in [0, 1]."""
        if self._writer is None:
            return
        for name, batch in grids.items():
            grid = make_grid(batch.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2)
            self._writer.add_image(f"images/{name}", grid, step)

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> dict:
        """Append one ``metrics.jsonl`` line and write ``eval/<metric>`` scalars; returns it."""
        record = {"step": int(step), **{k: float(metrics[k]) for k in METRIC_KEYS}}
        if self._writer is None or record["step"] in self._evaluated:
            return record
        self._evaluated.add(record["step"])
        append_line(self.metrics_path, json.dumps(record))
        self.scalars(step, {k: record[k] for k in METRIC_KEYS}, prefix="eval/")
        self._writer.flush()
        return record

    def record(self, step: int, kind: str, values: Mapping[str, float]) -> dict:
        """Append one ``metrics.jsonl`` line of another kind (e.g. ``"cluster"``: clusters,
        outliers and eps of a pseudo-label epoch); evaluation lines have no ``kind``."""
        line = {"step": int(step), "kind": kind, **{k: float(v) for k, v in values.items()}}
        if self._writer is not None:
            append_line(self.metrics_path, json.dumps(line))
        return line

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
