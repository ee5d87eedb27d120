"""Tests of ``crossreid synth``."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from crossreid.cli import main
from crossreid.data.synthetic import read_meta

TINY = ["--ids", "6", "--images-per-id", "4", "--cameras", "2", "--size", "32x16"]


def test_synth_writes_a_dataset_a_preview_and_a_summary(tmp_path: Path, capsys) -> None:
    out, png = tmp_path / "B", tmp_path / "b.png"
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--domain",
            "b",
            *TINY,
            "--seed",
            "4",
            "--preview",
            str(png),
            "--no-progress",
        ]
    )
    assert code == 0
    meta = read_meta(out)
    assert meta["domain"] == "B" and meta["seed"] == 4 and meta["num_cameras"] == 2
    stdout = capsys.readouterr().out
    train = meta["counts"]["train"]
    assert f"domain B (seed 4, 32x16) -> {out}" in stdout
    assert f"train {train['ids']} ids/{train['images']} images" in stdout
    assert f"preview written to {png}" in stdout
    with Image.open(png) as sheet:
        assert sheet.size[0] == 34 + 2 * (64 + 2)


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--out", str(tmp_path / "A"), *TINY]) == 0
    captured = capsys.readouterr()
    assert "synth A" in captured.err and "synth A" not in captured.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "64by32"], "image size '64by32' is not HEIGHTxWIDTH"),
        (["--domain", "Z"], "unknown synthetic domain 'Z': expected one of A, B"),
        (["--cameras", "1"], "number of cameras 1 out of range"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys, args, message) -> None:
    assert main(["synth", "--out", str(tmp_path / "x"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crossreid synth: error: ") and message in err
    assert "\n" not in err and not (tmp_path / "x").exists()


def test_refuses_a_folder_holding_other_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["synth", "--out", str(tmp_path), *TINY, "--no-progress"]) == 2
    assert "refusing to write synthetic data into" in capsys.readouterr().err
