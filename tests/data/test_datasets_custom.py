"""The ``custom`` dataset (``data/datasets/custom.py``): Market-named folder or CSV."""

from __future__ import annotations

import pytest

from crossreid.data import build_dataset
from crossreid.data.datasets.custom import read_records_csv
from crossreid.errors import DatasetError

IMAGES = ["imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg", "imgs/d.jpg", "imgs/e.jpg", "imgs/f.jpg"]
CSV = """path,pid,camid,split
imgs/a.jpg,10,0,train
imgs/b.jpg,10,1,train
imgs/c.jpg,42,2,train
imgs/d.jpg,7,0,query
imgs/e.jpg,7,1,gallery
imgs/f.jpg,-1,1,gallery
"""


@pytest.fixture
def csv_dataset(tmp_path, make_tree):
    make_tree(tmp_path, IMAGES)
    (tmp_path / "list.csv").write_text(CSV)
    return tmp_path / "list.csv"


def test_csv_hand_counted(csv_dataset):
    ds = build_dataset("custom", csv_dataset)
    assert ds.statistics() == {
        "train": {"ids": 2, "images": 3, "cameras": 3},
        "query": {"ids": 1, "images": 1, "cameras": 1},
        "gallery": {"ids": 1, "images": 1, "cameras": 1},  # the pid -1 row is junk
    }
    assert [r.pid for r in ds.train] == [0, 0, 1]
    assert ds.query[0] == (str(csv_dataset.parent / "imgs" / "d.jpg"), 7, 0)


def test_folder_holding_one_csv(csv_dataset):
    assert len(build_dataset("custom", csv_dataset.parent).train) == 3


def test_csv_column_order_extra_columns_and_absolute_paths(tmp_path, make_tree):
    make_tree(tmp_path, IMAGES)
    absolute = tmp_path / "imgs" / "a.jpg"
    (tmp_path / "other.csv").write_text(
        f"Split,CamID,note,PID,Path\ntrain,0,x,5,{absolute}\nquery,1,y,5,imgs/b.jpg\n"
        "gallery,2,z,5,imgs/c.jpg\n\n"
    )
    ds = build_dataset("custom", tmp_path / "other.csv")
    assert ds.train[0].path == str(absolute)
    assert [(r.pid, r.camid) for r in ds.query + ds.gallery] == [(5, 1), (5, 2)]


def test_csv_without_split_column(tmp_path, make_tree):
    make_tree(tmp_path, IMAGES[:2])
    (tmp_path / "train.csv").write_text("path,pid,camid\nimgs/a.jpg,3,0\nimgs/b.jpg,4,1\n")
    grouped = read_records_csv(tmp_path / "train.csv")
    assert [r.pid for r in grouped["train"]] == [3, 4] and grouped["query"] == []
    with pytest.raises(DatasetError, match=f"CSV {tmp_path / 'train.csv'} has no split column"):
        build_dataset("custom", tmp_path / "train.csv")


def test_market_named_folder(tmp_path, make_tree):
    make_tree(
        tmp_path,
        [
            "bounding_box_train/0003_c1_x.jpg",
            "query/0004_c2_x.jpg",
            "bounding_box_test/0004_c3_y.jpg",
        ],
    )
    ds = build_dataset("custom", tmp_path)
    assert [(r.pid, r.camid) for r in ds.train + ds.query + ds.gallery] == [(0, 0), (4, 1), (4, 2)]


@pytest.mark.parametrize(
    ("header", "missing"),
    [("path,pid,split", "camid"), ("file,pid,cam,split", "path, camid"), ("", "path, pid, camid")],
)
def test_csv_missing_columns_names_the_csv_and_expected_header(tmp_path, header, missing):
    (tmp_path / "bad.csv").write_text(f"{header}\n" if header else "")
    with pytest.raises(DatasetError) as info:
        build_dataset("custom", tmp_path / "bad.csv")
    message = str(info.value)
    assert f"CSV {tmp_path / 'bad.csv'} lacks column(s) {missing}" in message
    assert "path,pid,camid[,split]" in message


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("imgs/a.jpg,ten,0,train", "pid and camid must be integers"),
        ("imgs/a.jpg,1,-2,train", "camid must be 0-based"),
        ("imgs/a.jpg,1,0,validation", "split must be train, query or gallery, got 'validation'"),
        ("imgs/a.jpg,1", "expected 4 fields"),
        (",1,0,train", "empty path"),
    ],
)
def test_csv_malformed_rows_name_file_and_line(tmp_path, make_tree, row, error):
    make_tree(tmp_path, IMAGES)
    (tmp_path / "bad.csv").write_text(CSV + row + "\n")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'bad.csv'}:8: {error}"):
        build_dataset("custom", tmp_path / "bad.csv")


def test_csv_missing_image_is_named(tmp_path, make_tree):
    make_tree(tmp_path, IMAGES[1:])
    (tmp_path / "list.csv").write_text(CSV)
    with pytest.raises(DatasetError, match=f"do not exist, first {tmp_path / 'imgs' / 'a.jpg'}"):
        build_dataset("custom", tmp_path / "list.csv")


def test_csv_with_empty_query_is_named(tmp_path, make_tree):
    make_tree(tmp_path, IMAGES)
    (tmp_path / "list.csv").write_text(CSV.replace(",query", ",train"))
    with pytest.raises(DatasetError, match=f"query split under {tmp_path / 'list.csv'} is empty"):
        build_dataset("custom", tmp_path / "list.csv")


def test_folder_with_neither_layout_nor_csv(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path} holds neither bounding_box_train/"):
        build_dataset("custom", tmp_path)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match=f"root {tmp_path / 'gone.csv'} does not exist"):
        build_dataset("custom", tmp_path / "gone.csv")
