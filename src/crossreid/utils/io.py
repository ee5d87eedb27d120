"""Safe file writing: atomic replacement, and one-line errors when the disk says no.

:func:`atomic_write` and :func:`atomic_path` write to a temporary file in the destination's
folder (so the final :func:`os.replace` is a rename within one file system), rename it over
the destination only when the block finishes without an exception, and remove it
otherwise: a crash mid-write leaves the old file or the new one, never half of one.
A process killed mid-write (SIGKILL, the out-of-memory killer) cannot remove its temporary
file; the temporary's name carries its host and process id, and the next write of the same
destination on that host removes the leftovers of processes that are gone, so repeated
kills during checkpointing do not fill the disk. New files get the permissions of a plain
``open()`` (``0o666`` less the umask), not a temporary file's ``0o600``.

Every write helper here turns a full disk, a quota, a file size limit, a missing
permission or a read-only file system into a :class:`~crossreid.errors.StorageError` with
one line naming the file, e.g. ``cannot write checkpoints/last.pt: no space left on device
(needs about 222 MB, 12 MB free on /work)``. So does :func:`torch.save`'s
``RuntimeError: [enforce fail at inline_container.cc] . unexpected pos`` inside an atomic
write, when the free space or the file size limit explains it.

Example::

    >>> with atomic_write("out/features.npz", expected_size=qf.nbytes) as stream:  # doctest: +SKIP
    ...     np.savez(stream, qf=qf)
    >>> write_text_atomic("runs/a/config.yaml", text)                              # doctest: +SKIP
    >>> append_line("runs/a/metrics.jsonl", json.dumps(row))                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from crossreid.errors import StorageError

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

__all__ = [
    "append_guard",
    "append_line",
    "atomic_path",
    "atomic_write",
    "format_size",
    "make_folder",
    "storage_error",
    "write_text_atomic",
]

PathLike = str | os.PathLike[str]

# The errors a user fixes by freeing space, raising a limit, or writing elsewhere.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "a folder of that name is in the way",
}
_FOLDER_REASONS = {
    errno.EEXIST: "a file of that name is in the way",
    errno.ENOTDIR: "a file is in the way of one of its folders",
}
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# torch.save's writer reports a short write (full disk, file size limit) only as this.
_TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed writing")
# Free space under which a failed torch.save is taken to mean a full disk.
_NEARLY_FULL = 16 * 2**20


def format_size(num_bytes: int) -> str:
    """A size for messages, decimal units: ``512 bytes``, ``4.1 kB``, ``222 MB``."""
    if num_bytes < 1000:
        return f"{int(num_bytes)} bytes"
    value = float(num_bytes)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000.0
        if value < 999.5 or unit == "PB":
            break
    return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = _existing_ancestor(path)
    with contextlib.suppress(OSError):  # an unreadable parent: stop at what is known
        device = path.stat().st_dev
        while path != path.parent and path.parent.stat().st_dev == device:
            path = path.parent
    return path


def _file_size_limit() -> int | None:
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _space_details(code: int, path: Path, needed: int | None, written: int | None) -> str:
    details = []
    if needed:
        details.append(f"needs about {format_size(needed)}")
    elif written:
        details.append(f"needs more than {format_size(written)}")
    limit = _file_size_limit()
    if code == errno.EFBIG and limit is not None:
        details.append(f"ulimit -f allows {format_size(limit)}")
    elif code != errno.EDQUOT:  # the free space says nothing about a quota
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(_existing_ancestor(path.parent)).free
            details.append(f"{format_size(free)} free on {_mount_point(path.parent)}")
    return f" ({', '.join(details)})" if details else ""


def storage_error(
    exc: BaseException,
    path: PathLike,
    *,
    needed: int | None = None,
    written: int | None = None,
    folder: bool = False,
) -> StorageError | None:
    """The one-line :class:`StorageError` for ``exc`` raised while writing ``path``, or
    ``None`` when ``exc`` is not a storage failure (the caller re-raises it).

    Args:
        exc: the exception caught.
        path: the file (or, with ``folder``, the folder) being written, as the user named it.
        needed: bytes the complete file needs, where the writer knows them.
        written: bytes written before the failure (shown when ``needed`` is unknown).
        folder: ``path`` is a folder being created.
    """
    if isinstance(exc, StorageError):
        return exc
    if not isinstance(exc, OSError):
        return None
    reasons = {**_REASONS, **_FOLDER_REASONS} if folder else _REASONS
    if exc.errno not in reasons:
        return None
    path = Path(path)
    if exc.filename is not None and folder:
        path = Path(exc.filename)  # the folder that could not be made (maybe a parent)
    what = f"cannot create folder {path}" if folder else f"cannot write {path}"
    if exc.errno in _SPACE_ERRNOS:
        detail = _space_details(exc.errno, path, needed, written)
    elif exc.errno == errno.EROFS:
        detail = f" on {_mount_point(path.parent)}"
    else:
        detail = ""
    error = StorageError(f"{what}: {reasons[exc.errno]}{detail}")
    error.errno = exc.errno
    return error


def make_folder(path: PathLike) -> Path:
    """Create ``path`` and its parents if missing; :class:`StorageError` if they cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (storage_error(exc, path, folder=True) or exc) from None
    return path


def _torch_short_write_errno(folder: Path, written: int, needed: int | None) -> int | None:
    """Why torch.save's writer stopped short, judged from the limits once its partial file
    of ``written`` bytes is removed; None if unexplained."""
    limit = _file_size_limit()
    if limit is not None and written >= limit:
        return errno.EFBIG
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free - written < _NEARLY_FULL or (needed is not None and free < needed):
        return errno.ENOSPC
    return None


def _as_storage_error(
    exc: BaseException, path: Path, temp: Path, written: int, needed: int | None
) -> StorageError | None:
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_SHORT_WRITE):
        code = _torch_short_write_errno(path.parent, written, needed)
        exc = OSError(code, os.strerror(code)) if code is not None else exc
    elif isinstance(exc, OSError) and isinstance(exc.filename, str):
        ours = {os.path.abspath(temp), os.path.abspath(path)}
        if os.path.abspath(exc.filename) not in ours:
            return None  # about another file the block was reading or writing
    return storage_error(exc, path, needed=needed, written=written)


def _host_tag() -> str:
    """A short, file-name-safe tag of this host (temporaries name their writer's host)."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    return False


def _remove_stale_temporaries(path: Path, suffix: str) -> None:
    """Remove temporaries of ``path`` left by killed processes of this host."""
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.([0-9a-f]{{8}})-(\d+)-[0-9a-f]+{re.escape(suffix)}"
    )
    host = _host_tag()
    with contextlib.suppress(OSError):  # an unreadable folder: the new write will say so
        for entry in os.scandir(path.parent):
            found = pattern.fullmatch(entry.name)
            if found and found.group(1) == host and _process_is_gone(int(found.group(2))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _create_temporary(path: Path, suffix: str) -> Path:
    """A new empty file beside ``path`` named ``.NAME.HOST-PID-RANDOM<suffix>``, with the
    permissions ``open()`` would give (``0o666`` less the umask)."""
    while True:
        temp = path.with_name(
            f".{path.name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        )
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # the same random name: draw again
            continue
        return temp


@contextlib.contextmanager
def atomic_path(
    path: PathLike, suffix: str | None = None, *, expected_size: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name; on a
    clean exit the file is renamed over ``path``, on an exception it is removed.

    Temporaries of ``path`` left on this host by processes that no longer run (killed
    mid-write) are removed first.

    Args:
        path: the destination.
        suffix: the temporary name's ending (default: that of ``path``, for writers that
            pick the format from it).
        expected_size: bytes the file will take, if known (shown when the disk is full).

    Raises:
        StorageError: no space, quota, file size limit, permission or read-only file
            system, in one line naming ``path``; the previous file is left as it was.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    make_folder(path.parent)
    _remove_stale_temporaries(path, suffix)
    try:
        temp = _create_temporary(path, suffix)
    except OSError as exc:
        raise (storage_error(exc, path, needed=expected_size) or exc) from None
    try:
        yield temp
        os.replace(temp, path)
    except BaseException as exc:
        written = 0
        with contextlib.suppress(OSError):
            written = temp.stat().st_size
        with contextlib.suppress(OSError):  # e.g. the file system went read-only
            temp.unlink(missing_ok=True)
        # Judged after the removal, so the free space shown is what the file could use.
        error = _as_storage_error(exc, path, temp, written, expected_size)
        if error is None:
            raise
        raise error from None


class _RecordingWriter(io.BufferedWriter):
    """A binary file that remembers the :class:`OSError` of its last failed write: torch.save's
    writer swallows it and raises ``RuntimeError: ... unexpected pos`` instead, which no
    longer says whether the disk was full or a quota exceeded."""

    error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            self.error = exc
            raise


@contextlib.contextmanager
def atomic_write(
    path: PathLike, mode: str = "wb", suffix: str | None = None, *, expected_size: int | None = None
) -> Iterator[IO[Any]]:
    """Yield an open stream (``mode``: ``"wb"``, or ``"w"`` for UTF-8 text) on a temporary
    file beside ``path``; on a clean exit it is flushed, synced to disk and renamed over
    ``path``, on an exception it is removed. ``suffix``, ``expected_size`` and the errors
    are as for :func:`atomic_path`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write needs a write mode ('wb' or 'w'), got {mode!r}")
    with atomic_path(path, suffix, expected_size=expected_size) as temp:
        binary = _RecordingWriter(io.FileIO(temp, "w"))
        stream = binary if mode == "wb" else io.TextIOWrapper(binary, encoding="utf-8")
        with stream:
            try:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            except RuntimeError as exc:
                if binary.error is None or not any(s in str(exc) for s in _TORCH_SHORT_WRITE):
                    raise
                raise binary.error from None  # the write's own reason (no space, quota ...)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path (e.g. config.yaml)."""
    data = text.encode("utf-8")
    with atomic_write(path, "wb", expected_size=len(data)) as stream:
        stream.write(data)
    return Path(path)


@contextlib.contextmanager
def append_guard(path: PathLike) -> Iterator[None]:
    """Turn a storage failure inside the block into a one-line :class:`StorageError`
    naming ``path``, for code that keeps a log file open (flush inside the block)."""
    try:
        yield
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from None


def append_line(path: PathLike, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (created with its folders if missing).

    A failed append is cut back off, so the file keeps only whole lines (what readers of
    ``metrics.jsonl`` parse); the error is a one-line :class:`StorageError`.
    """
    path = Path(path)
    data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
    make_folder(path.parent)
    with append_guard(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
