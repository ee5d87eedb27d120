"""Atomic writes (the destination is either the old file or the complete new one) and the
one-line errors for a full disk, a missing permission or a read-only file system."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from crossreid.errors import CrossReIDError, StorageError
from crossreid.utils.io import (
    append_guard,
    append_line,
    atomic_path,
    atomic_write,
    format_size,
    make_folder,
    write_text_atomic,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path) -> None:
    out = tmp_path / "sub" / "data.bin"
    with atomic_write(out) as stream:
        stream.write(b"first")
    with atomic_write(out) as stream:
        stream.write(b"second")
    assert out.read_bytes() == b"second"
    assert [p.name for p in out.parent.iterdir()] == ["data.bin"]


def test_atomic_write_text_mode_writes_utf8(tmp_path) -> None:
    out = tmp_path / "notes.txt"
    with atomic_write(out, "w") as stream:
        stream.write("caf\u00e9\n")
    assert out.read_bytes() == "caf\u00e9\n".encode()


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path) -> None:
    out = tmp_path / "data.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(out) as stream:
        stream.write(b"half of the new")
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_atomic_write_refuses_a_mode_that_does_not_truncate(tmp_path) -> None:
    with pytest.raises(ValueError, match="write mode"), atomic_write(tmp_path / "x", "ab"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_names_a_hidden_sibling_with_the_destination_suffix(tmp_path) -> None:
    out = tmp_path / "model.onnx"
    with atomic_path(out) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".model.onnx.")
        assert temp.suffix == ".onnx" and temp != out and not out.exists()
        temp.write_bytes(b"model")
    assert out.read_bytes() == b"model" and not temp.exists()
    with atomic_path(out, suffix=".tmp") as temp:
        assert temp.suffix == ".tmp"
        temp.write_bytes(b"again")
    assert out.read_bytes() == b"again"


def test_atomic_path_error_removes_the_temporary_and_leaves_no_destination(tmp_path) -> None:
    out = tmp_path / "model.pt"
    with pytest.raises(KeyboardInterrupt), atomic_path(out) as temp:
        temp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- storage errors


def _fail(code: int):
    def raiser(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return raiser


def _free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=free))


def _assert_kept(folder: Path, contents: dict[str, bytes]) -> None:
    """Only these files, byte for byte: the old file untouched, no temporary left."""
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == contents


def test_format_size() -> None:
    sizes = [0, 999, 1000, 4100, 9949, 12_000_000, 222_000_000, 999_999_999, 4.1e12]
    assert [format_size(n) for n in sizes] == [
        "0 bytes",
        "999 bytes",
        "1.0 kB",
        "4.1 kB",
        "9.9 kB",
        "12 MB",
        "222 MB",
        "1.0 GB",
        "4.1 TB",
    ]


def test_disk_full_gives_one_line_with_size_needed_and_free(tmp_path, monkeypatch) -> None:
    out = tmp_path / "last.pt"
    out.write_bytes(b"old complete file")
    _free(monkeypatch, 12_000_000)
    with pytest.raises(StorageError) as info, atomic_write(out, expected_size=222_000_000) as f:
        f.write(b"the first part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    device = tmp_path.stat().st_dev
    mount = next(p for p in reversed([tmp_path, *tmp_path.parents]) if p.stat().st_dev == device)
    assert str(info.value) == (
        f"cannot write {out}: no space left on device (needs about 222 MB, 12 MB free on {mount})"
    )
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, CrossReIDError) and isinstance(info.value, OSError)
    _assert_kept(tmp_path, {"last.pt": b"old complete file"})


def test_without_a_size_the_bytes_written_so_far_are_shown(tmp_path) -> None:
    out = tmp_path / "features.npz"
    with pytest.raises(StorageError, match=r"\(needs more than 5\.0 kB, "), atomic_write(out) as f:
        f.write(b"x" * 5000)
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_a_relative_path_is_named_as_given(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _free(monkeypatch, 12_000_000)
    with pytest.raises(StorageError) as info, atomic_write("checkpoints/last.pt") as f:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name)  # as a real write says
    assert str(info.value).startswith(
        "cannot write checkpoints/last.pt: no space left on device (12 MB free on /"
    )
    assert list((tmp_path / "checkpoints").iterdir()) == []


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.EROFS, r"read-only file system on /\S*"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
        (errno.EDQUOT, r"disk quota exceeded \(needs about 17 bytes\)"),
    ],
)
def test_a_folder_that_refuses_new_files_gives_one_line(
    tmp_path, monkeypatch, code, reason
) -> None:
    # As root (the tests' user) chmod does not stop writes; a refusing os.open of the
    # temporary is what a read-only or write-protected folder looks like to the code.
    out = tmp_path / "config.yaml"
    out.write_bytes(b"old")
    monkeypatch.setattr(os, "open", _fail(code))
    with pytest.raises(StorageError, match=rf"^cannot write {re.escape(str(out))}: {reason}$"):
        write_text_atomic(out, "new: 12345678901\n")
    _assert_kept(tmp_path, {"config.yaml": b"old"})


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temporary(
    tmp_path, monkeypatch
) -> None:
    out = tmp_path / "index.npz"
    out.write_bytes(b"old")
    monkeypatch.setattr(os, "replace", _fail(errno.EACCES))
    with pytest.raises(StorageError, match="permission denied"), atomic_write(out) as f:
        f.write(b"new")
    _assert_kept(tmp_path, {"index.npz": b"old"})


_PROTECTED_FOLDER_SCRIPT = """
import os, sys
from crossreid.errors import StorageError
from crossreid.utils.io import write_text_atomic
if os.geteuid() == 0:  # root writes anywhere: drop to nobody (after the imports it needs)
    os.setgid(65534)
    os.setuid(65534)
try:
    write_text_atomic(sys.argv[1], "new")
except StorageError as exc:
    print(exc)
"""


def test_a_write_protected_folder_gives_one_line() -> None:
    # Not under tmp_path: its parents are private to root, and the writer may be nobody.
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        folder = base / "protected"
        folder.mkdir()
        (folder / "a.txt").write_bytes(b"old")
        folder.chmod(0o555)
        result = subprocess.run(
            [sys.executable, "-c", _PROTECTED_FOLDER_SCRIPT, str(folder / "a.txt")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            check=True,
            timeout=60,
        )
        assert result.stdout.strip() == f"cannot write {folder / 'a.txt'}: permission denied"
        _assert_kept(folder, {"a.txt": b"old"})
    finally:
        for path in base.iterdir():
            path.chmod(0o755)
        shutil.rmtree(base)


def test_other_errors_inside_the_block_pass_through(tmp_path) -> None:
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "out.bin"):
        open(tmp_path / "missing-input.bin", "rb")  # noqa: SIM115 - the error is the point
    with pytest.raises(PermissionError), atomic_write(tmp_path / "out.bin"):
        raise PermissionError(errno.EACCES, "denied", str(tmp_path / "some-input"))
    assert list(tmp_path.iterdir()) == []


def test_a_short_write_inside_torch_save_is_judged_by_the_free_space(tmp_path, monkeypatch) -> None:
    def torch_short_write() -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    _free(monkeypatch, 2**20)
    with pytest.raises(StorageError, match="no space left on device"):
        with atomic_path(tmp_path / "a.pt"):
            torch_short_write()
    _free(monkeypatch, 2**40)  # plenty of space: not a full disk, so not said to be one
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic_path(tmp_path / "a.pt"):
        torch_short_write()
    assert list(tmp_path.iterdir()) == []


def test_make_folder_errors_are_one_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(StorageError, match=r"^cannot create folder \S+taken: a file of that"):
        make_folder(tmp_path / "taken")
    in_the_way = r"^cannot create folder \S+taken/sub: a file is in the way of one of its folders$"
    with pytest.raises(StorageError, match=in_the_way):
        with atomic_write(tmp_path / "taken" / "sub" / "x.bin"):
            pass
    monkeypatch.setattr(Path, "mkdir", _fail(errno.EROFS))
    with pytest.raises(StorageError, match=r"^cannot create folder \S+run: read-only file system"):
        make_folder(tmp_path / "run")


def test_write_text_atomic(tmp_path) -> None:
    out = write_text_atomic(tmp_path / "run" / "config.yaml", "lr: 0.01\nname: caf\u00e9\n")
    assert out.read_text(encoding="utf-8") == "lr: 0.01\nname: caf\u00e9\n"


def test_append_line_adds_whole_lines(tmp_path) -> None:
    log = tmp_path / "run" / "metrics.jsonl"
    append_line(log, '{"step": 1}')
    append_line(log, '{"step": 2}\n')
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_failed_append_is_cut_back_to_whole_lines(tmp_path, monkeypatch) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"step": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(StorageError, match=r"^cannot write \S+metrics\.jsonl: no space left"):
        append_line(log, '{"step": 2, "loss": 0.5}')
    monkeypatch.undo()
    _assert_kept(tmp_path, {"metrics.jsonl": b'{"step": 1}\n'})


def test_append_guard_converts_storage_errors_only(tmp_path) -> None:
    with pytest.raises(StorageError, match=r"^cannot write log\.txt: disk quota exceeded$"):
        with append_guard("log.txt"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    with pytest.raises(ValueError), append_guard("log.txt"):
        raise ValueError("not about storage")


_FILE_SIZE_LIMIT_SCRIPT = """
import resource, sys
from crossreid.errors import StorageError
from crossreid.utils.io import append_line, atomic_write
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    with atomic_write(sys.argv[1]) as stream:
        stream.write(b"x" * 200_000)
except StorageError as exc:
    print(exc)
try:
    append_line(sys.argv[2], "x" * 200_000)
except StorageError as exc:
    print(exc)
"""


def test_a_file_size_limit_gives_one_line_and_keeps_the_files(tmp_path) -> None:
    data, log = tmp_path / "data.bin", tmp_path / "metrics.jsonl"
    data.write_bytes(b"old data")
    log.write_bytes(b"line 1\n")
    result = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_SCRIPT, str(data), str(log)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=True,
        timeout=60,
    )
    assert result.stdout.splitlines() == [
        f"cannot write {data}: file too large (needs more than 100 kB, ulimit -f allows 100 kB)",
        f"cannot write {log}: file too large (ulimit -f allows 100 kB)",
    ]
    _assert_kept(tmp_path, {"data.bin": b"old data", "metrics.jsonl": b"line 1\n"})


# ---------------------------------------------------------------- killed writers, permissions


def _gone_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path) -> None:
    from crossreid.utils.io import _host_tag

    out = tmp_path / "last.pt"
    host = _host_tag()
    dead = tmp_path / f".last.pt.{host}-{_gone_pid()}-0badf00d.tmp"  # SIGKILLed mid-write
    alive = tmp_path / f".last.pt.{host}-{os.getppid()}-0badf00d.tmp"  # still writing
    elsewhere = tmp_path / f".last.pt.{'0' * 8}-{_gone_pid()}-0badf00d.tmp"  # another host's
    other = tmp_path / f".best.pt.{host}-{_gone_pid()}-0badf00d.tmp"  # another file's
    for temp in (dead, alive, elsewhere, other):
        temp.write_bytes(b"partial")
    with atomic_write(out, suffix=".tmp") as stream:
        stream.write(b"new")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(p.name for p in (out, alive, elsewhere, other))


@pytest.mark.parametrize(
    ("umask", "mode"),
    [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
    ids=["umask-022", "umask-077", "umask-002"],
)
def test_new_files_get_the_permissions_of_a_plain_open(tmp_path, umask, mode) -> None:
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
        with atomic_path(tmp_path / "model.onnx") as temp:
            temp.write_bytes(b"model")
    finally:
        os.umask(previous)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == mode
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == mode
