"""``crossreid datasets`` (``cli/datasets.py``): statistics, JSON output, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossreid.cli import main
from crossreid.data.datasets.replica import read_filelist, tiny_jpeg, write_replica

REPO = Path(__file__).resolve().parents[2]
FILELIST_CANDIDATES = [
    REPO / ".." / "shared" / "data" / "market1501_filelist.txt.gz",
    REPO / "shared" / "data" / "market1501_filelist.txt.gz",
]
OFFICIAL = {
    "train": {"ids": 751, "images": 12936, "cameras": 6},
    "query": {"ids": 750, "images": 3368, "cameras": 6},
    "gallery": {"ids": 751, "images": 15913, "cameras": 6},
}
SMALL = [
    "bounding_box_train/0001_c1s1_01.jpg",
    "query/0002_c1s1_01.jpg",
    "bounding_box_test/0002_c2s1_01.jpg",
]


def replica_base(factory: pytest.TempPathFactory) -> Path:
    """Temp folder shared by every xdist worker of this run, so the replica is built once."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def market_replica(tmp_path_factory):
    """The full-size replica; shares the folder the data tests build (same worker, same path)."""
    filelist = next((p for p in FILELIST_CANDIDATES if p.is_file()), None)
    if filelist is None:
        pytest.skip(
            f"Market-1501 file list not found (searched {', '.join(map(str, FILELIST_CANDIDATES))})"
        )
    parent = replica_base(tmp_path_factory) / "market_replica"
    write_replica(read_filelist(filelist), parent / "Market-1501-v15.09.15")
    return parent


def make_tree(root: Path, names) -> Path:
    data = tiny_jpeg()
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_json_on_the_full_replica_prints_the_official_statistics(market_replica, capsys):
    assert (
        main(["datasets", "--dataset", "market1501", "--root", str(market_replica), "--json"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == OFFICIAL


def test_table_lists_each_split(market_replica, capsys):
    assert main(["datasets", "--dataset", "Market", "--data-root", str(market_replica)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"market1501 at {market_replica / 'Market-1501-v15.09.15'}"
    assert lines[2].split() == ["train", "751", "12936", "6"]
    assert lines[3].split() == ["query", "750", "3368", "6"]
    assert lines[4].split() == ["gallery", "751", "15913", "6"]


def test_folder_spec_reads_a_market_layout_folder(tmp_path, capsys):
    make_tree(tmp_path, SMALL)
    assert main(["datasets", "--dataset", f"folder:{tmp_path}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query"] == {"ids": 1, "images": 1, "cameras": 1}


def test_cuhk03_options_reach_the_parser(tmp_path, capsys):
    make_tree(tmp_path / "cuhk03-np" / "labeled", SMALL)
    make_tree(tmp_path / "cuhk03-np" / "detected", [*SMALL, "query/0003_c2_1.png"])
    argv = ["datasets", "--dataset", "cuhk03", "--root", str(tmp_path), "--json"]
    assert main([*argv, "--subset", "labeled"]) == 0
    assert json.loads(capsys.readouterr().out)["query"]["images"] == 1
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["query"]["images"] == 2


def test_spec_with_options_goes_through_the_spec_resolver(tmp_path, capsys):
    pytest.importorskip("crossreid.data.specs", reason="dataset specs not installed")
    make_tree(tmp_path / "cuhk03-np" / "labeled", SMALL)
    make_tree(tmp_path / "cuhk03-np" / "detected", [*SMALL, "query/0003_c2_1.png"])
    argv = ["datasets", "--dataset", "cuhk03?subset=labeled", "--root", str(tmp_path), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["query"]["images"] == 1
    assert main([*argv, "--subset", "detected"]) == 2
    assert "write options into the spec" in capsys.readouterr().err


def test_synthetic_spec_is_generated_and_counted(tmp_path, capsys, monkeypatch):
    pytest.importorskip("crossreid.data.specs", reason="dataset specs not installed")
    monkeypatch.setenv("CROSSREID_CACHE", str(tmp_path))
    spec = "synthetic:A?ids=6&images=4&cameras=2&size=32x16"
    assert main(["datasets", "--dataset", spec, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats) == {"train", "query", "gallery"}
    assert all(0 < s["ids"] <= 6 and 0 < s["cameras"] <= 2 for s in stats.values())


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, text the one-line error must contain)."""
    make_tree(tmp_path / "nosplit" / "Market", [n for n in SMALL if not n.startswith("query/")])
    make_tree(tmp_path / "badname", [*SMALL, "query/person2.jpg"])
    make_tree(tmp_path / "empty", [n for n in SMALL if not n.startswith("query/")])
    (tmp_path / "empty" / "query").mkdir()
    (tmp_path / "bad.csv").write_text("path,pid\nx.jpg,1\n")
    return {
        "missing root": (
            ["--dataset", "market1501", "--root", str(tmp_path / "nope")],
            str(tmp_path / "nope"),
        ),
        "not found": (
            ["--dataset", "duke", "--root", str(tmp_path)],
            str(tmp_path / "DukeMTMC-reID"),
        ),
        "missing split": (
            ["--dataset", "market1501", "--root", str(tmp_path / "nosplit")],
            str(tmp_path / "nosplit" / "Market" / "query"),
        ),
        "unparsable name": (
            ["--dataset", "market1501", "--root", str(tmp_path / "badname")],
            "person2.jpg",
        ),
        "empty split": (
            ["--dataset", "custom", "--root", str(tmp_path / "empty")],
            str(tmp_path / "empty"),
        ),
        "csv columns": (
            ["--dataset", "custom", "--root", str(tmp_path / "bad.csv")],
            "path,pid,camid[,split]",
        ),
        "unknown dataset": (["--dataset", "viper", "--root", str(tmp_path)], "viper"),
        "bad option": (
            ["--dataset", "market1501", "--root", str(tmp_path), "--subset", "labeled"],
            "subset",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing root",
        "not found",
        "missing split",
        "unparsable name",
        "empty split",
        "csv columns",
        "unknown dataset",
        "bad option",
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    argv, expected = _bad_inputs(tmp_path)[case]
    assert main(["datasets", *argv, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("crossreid datasets: error: ")
    assert captured.err.count("\n") == 1
    assert expected in captured.err
    assert "Traceback" not in captured.err


def test_console_process_prints_only_json_on_stdout_and_one_line_errors(tmp_path):
    make_tree(tmp_path, SMALL)
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "crossreid",
            "datasets",
            "--dataset",
            "custom",
            "--root",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["train"]["ids"] == 1
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "crossreid",
            "datasets",
            "--dataset",
            "market1501",
            "--root",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"crossreid datasets: error: market1501: dataset root {tmp_path / 'x'} does not exist"
    ]
