"""Atomic writes: the destination is either the old file or the complete new one."""

from __future__ import annotations

import pytest

from crossreid.utils.io import atomic_path, atomic_write


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
