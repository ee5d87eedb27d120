"""Market-style name parsing and dataset-root resolution (``data/datasets/_common.py``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossreid.data import parse_market_name
from crossreid.data.datasets._common import has_market_layout, resolve_root
from crossreid.errors import DatasetError

NAMES = ("Market-1501-v15.09.15", "market1501", "Market-1501", "Market")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0002_c1s1_000451_03.jpg", (2, 0)),  # Market
        ("bounding_box_test/1501_c6s4_001877_01.jpg", (1501, 5)),  # a path, last camera
        ("-1_c3s2_000001_00.jpg", (-1, 2)),  # Market junk
        ("0000_c5s3_066437_03.jpg", (0, 4)),  # Market distractor
        ("0001_c2_f0046182.jpg", (1, 1)),  # DukeMTMC-reID
        ("7140_c8_f0186218.jpg", (7140, 7)),
        ("1467_c2_5.png", (1467, 1)),  # CUHK03-NP
    ],
)
def test_parse_market_name_reads_pid_and_zero_based_camera(name, expected):
    assert parse_market_name(name) == expected


# What follows the camera number never starts with a digit (it would extend the number).
@given(
    pid=st.integers(0, 99999),
    cam=st.integers(1, 15),
    rest=st.from_regex(r"([s_][0-9s_]{0,10})?", fullmatch=True),
)
def test_parse_market_name_round_trips(pid, cam, rest):
    assert parse_market_name(f"{pid:04d}_c{cam}{rest}.jpg") == (pid, cam - 1)


@pytest.mark.parametrize(
    "name", ["img_0001.jpg", "0001c1s1.jpg", "c1_0001.jpg", "0001_c0s1_01.jpg", "x.jpg"]
)
def test_parse_market_name_rejects_other_names_naming_the_file(name):
    with pytest.raises(DatasetError, match=r"cannot parse.*" + name.replace(".", r"\.")) as info:
        parse_market_name(name)
    assert "PID_cCAM" in str(info.value)
    assert "\n" not in str(info.value)


def _dataset_folder(path):
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (path / split).mkdir(parents=True)
    return path


def test_resolve_root_accepts_the_folder_itself(tmp_path):
    folder = _dataset_folder(tmp_path / "anything")
    assert resolve_root(folder, NAMES, has_market_layout, "market1501", "x") == folder


def test_resolve_root_finds_usual_names_case_insensitively(tmp_path):
    folder = _dataset_folder(tmp_path / "MARKET1501")
    assert resolve_root(tmp_path, NAMES, has_market_layout, "market1501", "x") == folder


def test_resolve_root_finds_archive_folder_nested_in_a_usual_name(tmp_path):
    folder = _dataset_folder(tmp_path / "market1501" / "Market-1501-v15.09.15")
    assert resolve_root(tmp_path, NAMES, has_market_layout, "market1501", "x") == folder


def test_resolve_root_returns_an_empty_named_folder_so_the_split_error_is_precise(tmp_path):
    (tmp_path / "Market").mkdir()
    assert (
        resolve_root(tmp_path, NAMES, has_market_layout, "market1501", "x") == tmp_path / "Market"
    )


def test_resolve_root_missing_root_names_it(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist"):
        resolve_root(tmp_path / "nope", NAMES, has_market_layout, "market1501", "x")


def test_resolve_root_not_found_lists_every_path_searched(tmp_path):
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(DatasetError) as info:
        resolve_root(tmp_path, NAMES, has_market_layout, "market1501", "a Market folder")
    message = str(info.value)
    for searched in [tmp_path, *(tmp_path / n for n in NAMES)]:
        assert str(searched) in message
    assert "a Market folder" in message
    assert "\n" not in message
