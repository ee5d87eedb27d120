"""DukeMTMC-reID parser (``data/datasets/dukemtmcreid.py``) on a small replica."""

from __future__ import annotations

import pytest

from crossreid.data import build_dataset
from crossreid.errors import DatasetError

DUKE = [
    "bounding_box_train/0001_c1_f0046182.jpg",
    "bounding_box_train/0001_c2_f0046300.jpg",
    "bounding_box_train/0005_c3_f0046400.jpg",
    "bounding_box_train/0005_c3_f0046500.jpg",
    "bounding_box_train/0007_c8_f0100001.jpg",
    "query/0002_c2_f0010001.jpg",
    "query/0004_c1_f0010002.jpg",
    "bounding_box_test/0002_c5_f0020001.jpg",
    "bounding_box_test/0002_c6_f0020002.jpg",
    "bounding_box_test/0004_c7_f0020003.jpg",
    "bounding_box_test/0009_c7_f0020004.jpg",
]


@pytest.mark.parametrize("alias", ["dukemtmcreid", "Duke", "DUKE", "dukemtmc-reid"])
def test_small_replica_hand_counted(tmp_path, make_tree, alias):
    make_tree(tmp_path / "DukeMTMC-reID", DUKE)
    ds = build_dataset(alias, tmp_path)
    assert ds.name == "dukemtmcreid"
    assert ds.root == tmp_path / "DukeMTMC-reID"
    assert ds.statistics() == {
        "train": {"ids": 3, "images": 5, "cameras": 4},
        "query": {"ids": 2, "images": 2, "cameras": 2},
        "gallery": {"ids": 3, "images": 4, "cameras": 3},
    }
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 1), (1, 2), (1, 2), (2, 7)]
    assert [(r.pid, r.camid) for r in ds.query] == [(2, 1), (4, 0)]


def test_torchreid_style_nesting(tmp_path, make_tree):
    make_tree(tmp_path / "dukemtmc-reid" / "DukeMTMC-reID", DUKE)
    assert build_dataset("duke", tmp_path).num_train_pids == 3


def test_missing_gallery_folder_is_named(tmp_path, make_tree):
    make_tree(tmp_path / "Duke", [n for n in DUKE if "test" not in n])
    with pytest.raises(DatasetError, match=str(tmp_path / "Duke" / "bounding_box_test")):
        build_dataset("duke", tmp_path)
