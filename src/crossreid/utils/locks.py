"""An exclusive lock between processes, held on a lock file (POSIX ``flock``).

Used where several processes may build the same thing at once (a synthetic domain in the
shared cache): the first builds it, the others wait and then find it done. The lock is
only there to save the duplicate work; what it guards must still be published atomically
(a rename), because another writer may not take the lock.

Example::

    >>> with file_lock(cache / ".B-ids60.lock"):      # doctest: +SKIP
    ...     if not done():
    ...         build()
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from crossreid.utils.io import make_folder, storage_error

try:
    import fcntl
except ImportError:  # Windows: no flock; the atomic rename alone keeps results whole
    fcntl = None  # type: ignore[assignment]

__all__ = ["file_lock"]


def _open_locked(path: Path, on_wait: Callable[[], None] | None) -> int | None:
    """A descriptor of ``path`` holding its lock, or None if ``path`` was replaced meanwhile."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        # The previous holder removes the file before unlocking it: a lock on that old
        # file guards nothing, so a file no longer at ``path`` means "try again".
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
    except BaseException:
        os.close(fd)
        raise
    if current is not None and os.path.samestat(current, os.fstat(fd)):
        return fd
    os.close(fd)
    return None


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike[str], on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder, removed on release).

    Blocks while another process holds it, calling ``on_wait()`` once first (e.g. to log
    that it waits). The lock dies with its process, so a crash never leaves it stuck.
    Without ``flock`` (Windows) it does nothing.

    Raises:
        StorageError: the lock file cannot be created (permission, read-only, no space).
    """
    if fcntl is None:
        yield
        return
    path = Path(path)
    make_folder(path.parent)
    fd = None
    while fd is None:
        fd = _open_locked(path, on_wait)
        on_wait = None
    try:
        yield
    finally:
        # Removed while still locked, so a waiter can tell its file is stale (see above).
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
