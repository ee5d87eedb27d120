"""Stopping training cleanly on a signal: preemption on clusters, Ctrl-C at a terminal.

Schedulers send SIGTERM (Slurm can send SIGUSR1 first, ``--signal=USR1@60``) a while before
they kill a job. :func:`stop_requests` catches SIGTERM, SIGINT and SIGUSR1 for the duration of
the loop and only records them; the loop finishes the step it is in, writes ``last.pt``
atomically and raises :class:`~crossreid.errors.TrainingInterrupted`, whose exit code is
128 + the signal's number. ``--resume`` then continues exactly where the run stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch

from crossreid.utils.distributed import DistInfo

__all__ = ["STOP_SIGNALS", "StopRequest", "stop_requests"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """The first stop signal received (``None`` while none has come)."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)

    def agreed(self, dist: DistInfo, device: torch.device) -> bool:
        """Whether any rank was asked to stop (every rank must stop at the same step)."""
        asked = self.signal is not None
        if not dist.is_distributed or not torch.distributed.is_initialized():
            return asked
        flag = torch.tensor([float(asked)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0 and self.signal is None:
            self.signal = signal.SIGTERM  # another rank's request
        return bool(flag.item() > 0)


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Record stop signals instead of dying on them; the previous handlers come back after.

    Outside the main thread (where Python cannot install handlers) nothing is caught.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request._handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
