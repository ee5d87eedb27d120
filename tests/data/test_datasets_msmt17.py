"""MSMT17 parser (``data/datasets/msmt17.py``), V1 and V2 layouts, on small replicas."""

from __future__ import annotations

import pytest

from crossreid.data import build_dataset
from crossreid.errors import DatasetError

LISTS = {
    "list_train.txt": [
        ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
        ("0000/0000_001_02_0303morning_0020_0.jpg", 0),
        ("0001/0001_000_03_0303noon_0100_1.jpg", 1),
    ],
    "list_val.txt": [("0002/0002_000_01_0303afternoon_0001_0.jpg", 2)],
    "list_query.txt": [
        ("0000/0000_000_04_0303morning_0001_0.jpg", 0),
        ("0001/0001_000_05_0303noon_0002_0.jpg", 1),
    ],
    "list_gallery.txt": [
        ("0000/0000_001_06_0303morning_0003_0.jpg", 0),
        ("0000/0000_002_15_0303morning_0004_0.jpg", 0),
        ("0001/0001_001_04_0303noon_0005_0.jpg", 1),
        ("0002/0002_000_04_0303noon_0006_0.jpg", 2),
    ],
}
EXPECTED = {
    "train": {"ids": 3, "images": 4, "cameras": 3},  # list_train + list_val
    "query": {"ids": 2, "images": 2, "cameras": 2},
    "gallery": {"ids": 3, "images": 4, "cameras": 3},
}
DIRS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}


def make_msmt17(folder, make_tree, version="V1", lists=LISTS):
    train_dir, test_dir = DIRS[version]
    for list_name, entries in lists.items():
        image_dir = train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir
        make_tree(folder / image_dir, [path for path, _ in entries])
        (folder / list_name).write_text("".join(f"{path} {pid}\n" for path, pid in entries))
    return folder


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_small_replica_hand_counted(tmp_path, make_tree, version):
    folder = make_msmt17(tmp_path / f"MSMT17_{version}", make_tree, version)
    ds = build_dataset("msmt17", tmp_path)
    assert ds.statistics() == EXPECTED
    assert ds.extra["version"] == version
    assert ds.root == folder
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 1), (1, 2), (2, 0)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(0, 5), (0, 14), (1, 3), (2, 3)]
    assert ds.query[1].path == str(folder / DIRS[version][1] / LISTS["list_query.txt"][1][0])


def test_alias_picks_the_version_when_both_are_present(tmp_path, make_tree):
    make_msmt17(tmp_path / "msmt17" / "MSMT17_V1", make_tree, "V1")
    make_msmt17(tmp_path / "msmt17" / "MSMT17_V2", make_tree, "V2")
    assert build_dataset("MSMT17_V2", tmp_path).extra["version"] == "V2"
    assert build_dataset("MSMT17_V1", tmp_path).extra["version"] == "V1"
    assert build_dataset("msmt17", tmp_path / "msmt17").extra["version"] == "V1"


def test_v2_folder_names_are_matched_case_insensitively(tmp_path, make_tree):
    folder = make_msmt17(tmp_path / "MSMT17_V2", make_tree, "V2")
    (folder / "mask_train_v2").rename(folder / "mask_train_V2")
    (folder / "mask_test_v2").rename(folder / "mask_test_V2")
    assert build_dataset("msmt17", folder).statistics() == EXPECTED


def test_missing_list_file_is_named(tmp_path, make_tree):
    folder = make_msmt17(tmp_path / "MSMT17_V1", make_tree)
    (folder / "list_val.txt").unlink()
    with pytest.raises(DatasetError, match=f"list file {folder / 'list_val.txt'} is missing"):
        build_dataset("msmt17", tmp_path)


def test_missing_image_folder_is_named(tmp_path, make_tree):
    folder = make_msmt17(tmp_path / "MSMT17_V1", make_tree)
    (folder / "test").rename(folder / "testing")
    with pytest.raises(
        DatasetError, match=f"image folders missing in {folder}: expected train/ and test/"
    ):
        build_dataset("MSMT17_V1", tmp_path)


def test_malformed_list_line_names_file_and_line(tmp_path, make_tree):
    folder = make_msmt17(tmp_path / "MSMT17_V1", make_tree)
    with open(folder / "list_query.txt", "a") as handle:
        handle.write("0003/0003_000_01_0303noon_0001_0.jpg three\n")
    with pytest.raises(
        DatasetError, match=f"{folder / 'list_query.txt'}:3: expected 'relative/path.jpg PID'"
    ):
        build_dataset("msmt17", tmp_path)


def test_unparsable_camera_names_the_image_and_pattern(tmp_path, make_tree):
    lists = {**LISTS, "list_gallery.txt": [*LISTS["list_gallery.txt"], ("0003/0003_c1_x.jpg", 3)]}
    make_msmt17(tmp_path / "MSMT17_V1", make_tree, lists=lists)
    with pytest.raises(DatasetError, match=r"0003_c1_x\.jpg.*expected PID_INDEX_CAM_"):
        build_dataset("msmt17", tmp_path)


def test_listed_image_that_does_not_exist_is_named(tmp_path, make_tree):
    folder = make_msmt17(tmp_path / "MSMT17_V1", make_tree)
    missing = folder / "train" / LISTS["list_train.txt"][2][0]
    missing.unlink()
    with pytest.raises(DatasetError, match=f"1 image.*do not exist, first {missing}"):
        build_dataset("msmt17", tmp_path)
