"""Atomic file writing: a crash mid-write leaves the old file or the new one, never half of one.

Both helpers write to a temporary file in the destination's folder (so the final
:func:`os.replace` is a rename within one file system), rename it over the destination
only when the block finishes without an exception, and remove it otherwise. The parent
folders are created.

Example::

    >>> with atomic_write("out/features.npz") as stream:   # doctest: +SKIP
    ...     np.savez(stream, qf=qf)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name; on a
    clean exit the file is renamed over ``path``, on an exception it is removed.

    Args:
        path: the destination.
        suffix: the temporary name's ending (default: that of ``path``, for writers that
            pick the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix
    )
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", suffix: str | None = None
) -> Iterator[IO[Any]]:
    """Yield an open stream (``mode``: ``"wb"``, or ``"w"`` for UTF-8 text) on a temporary file beside
    ``path``; on a clean exit it is flushed, synced to disk and renamed over ``path``, on
    an exception it is removed. ``suffix`` is as for :func:`atomic_path`."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write needs a write mode ('wb' or 'w'), got {mode!r}")
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path, suffix) as temp, open(temp, mode, encoding=encoding) as stream:
        yield stream
        stream.flush()
        os.fsync(stream.fileno())
