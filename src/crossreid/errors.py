"""User-facing error types.

Everything a user can cause (bad paths, malformed files, inconsistent arrays, bad
options) raises a subclass of :class:`CrossReIDError` with a one-line message that names
the offending path or value. The command line prints that line and exits with code 2;
library callers can catch the specific subclass.
"""

from __future__ import annotations


class CrossReIDError(Exception):
    """Base class of errors caused by user input (exit code 2 from the CLI)."""


class DatasetError(CrossReIDError, ValueError):
    """A dataset folder, file name, CSV or split is missing or malformed."""


class EvaluationError(CrossReIDError, ValueError):
    """Inconsistent or invalid inputs to distance computation or ranking metrics."""


class ClusteringError(CrossReIDError, ValueError):
    """Invalid inputs to the clustering distance or pseudo-labelling, or a clustering that
    gives no usable pseudo-labels (every sample an outlier, fewer than two clusters)."""


class ConfigError(CrossReIDError, ValueError):
    """An invalid option, option combination or configuration file."""


class CheckpointError(CrossReIDError):
    """A checkpoint is missing, unreadable or belongs to another architecture."""


class TrainingError(CrossReIDError, RuntimeError):
    """Training cannot continue (for example the loss became NaN)."""


class StorageError(CrossReIDError, OSError):
    """A file or folder cannot be written: no space left, no permission, read-only file
    system, quota or file size limit. ``errno`` holds the underlying error number."""


class TrainingInterrupted(CrossReIDError):
    """Training stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after saving ``last.pt``.

    ``exit_code`` is the shell's convention for a process ended by that signal (128 + its
    number: 143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1), so job schedulers see the run
    as preempted rather than failed; the message says how to resume.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
