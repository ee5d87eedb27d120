"""Learning-rate schedules: linear warm-up, then cosine (optionally restarted), step or constant.

The schedule is a pure function of the step (:class:`LRSchedule`), wrapped in a
:class:`torch.optim.lr_scheduler.LambdaLR`, so a resumed run continues with exactly the
learning rate an uninterrupted run would have used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["LRSchedule", "build_scheduler"]


@dataclass
class LRSchedule:
    """Multiplier of the base learning rate at a (0-based) step.

    - warm-up: linear from ``warmup_start`` to 1 over ``warmup_steps`` steps;
    - ``cosine``: half a cosine from 1 to ``final_factor`` between the end of warm-up and
      ``max_steps``; with ``restart_every`` N > 0, half a cosine from 1 to ``final_factor``
      over each N steps after the warm-up instead, restarting at 1 (SGDR, Loshchilov & Hutter,
      ICLR 2017);
    - ``step``: ``gamma ** (number of milestones <= step)`` (default milestones: 50% and 75%
      of ``max_steps``);
    - ``constant``: 1.

    Example::

        >>> f = LRSchedule(max_steps=100, warmup_steps=10, kind="cosine")
        >>> round(f(0), 3), f(10), round(f(100), 3)
        (0.01, 1.0, 0.0)
        >>> g = LRSchedule(max_steps=100, warmup_steps=10, restart_every=30)
        >>> g(10), g(25), g(40)
        (1.0, 0.5, 1.0)
    """

    max_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    warmup_start: float = 0.01
    final_factor: float = 0.0
    restart_every: int = 0

    def __post_init__(self) -> None:
        self.milestones = [int(m) for m in self.milestones] or [
            int(self.max_steps * 0.5),
            int(self.max_steps * 0.75),
        ]
        if self.kind not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {self.kind!r}")
        if self.restart_every < 0 or (self.restart_every and self.kind != "cosine"):
            raise ValueError(
                f"restart_every {self.restart_every}: a number of steps >= 0, for the cosine "
                "schedule only"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return float(self.gamma ** sum(step >= m for m in self.milestones))
        if self.restart_every:
            progress = (step - self.warmup_steps) % self.restart_every / self.restart_every
        else:
            span = max(1, self.max_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying ``schedule`` to every parameter group (call ``.step()`` per step).

    ``schedule`` is a dataclass instance, so the scheduler's state dict holds only plain data.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
