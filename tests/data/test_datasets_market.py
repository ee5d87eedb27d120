"""Market-1501 parser (``data/datasets/market1501.py``) on the full-size replica and small trees."""

from __future__ import annotations

import pytest

from crossreid.data import build_dataset
from crossreid.errors import DatasetError

OFFICIAL = {
    "train": {"ids": 751, "images": 12936, "cameras": 6},
    "query": {"ids": 750, "images": 3368, "cameras": 6},
    "gallery": {"ids": 751, "images": 15913, "cameras": 6},
}


@pytest.fixture(scope="module")
def market(market_replica_parent):
    return build_dataset("market1501", market_replica_parent)


def test_full_replica_gives_the_official_statistics(market):
    assert market.statistics() == OFFICIAL


def test_full_replica_relabels_train_and_keeps_test_pids(market):
    assert sorted({r.pid for r in market.train}) == list(range(751))
    gallery_pids = {r.pid for r in market.gallery}
    assert -1 not in gallery_pids  # 3,819 junk images dropped
    assert 0 in gallery_pids  # distractors kept
    assert sum(r.pid == 0 for r in market.gallery) == 2798
    assert {r.pid for r in market.query} <= gallery_pids
    assert max(gallery_pids) == 1501
    assert {r.camid for r in market.query} == set(range(6))


def test_dataset_folder_itself_and_alias_give_the_same_result(market, market_replica_parent):
    direct = build_dataset("Market", market_replica_parent / "Market-1501-v15.09.15")
    assert direct.statistics() == OFFICIAL
    assert direct.query == market.query


SMALL = [
    "bounding_box_train/0002_c1s1_000451_03.jpg",
    "bounding_box_train/0002_c2s1_000301_01.jpg",
    "bounding_box_train/0007_c3s1_000101_01.jpg",
    "bounding_box_train/Thumbs.db",  # ships with the real dataset; not an image
    "query/0002_c4s1_000451_03.jpg",
    "bounding_box_test/0002_c5s1_000451_03.jpg",
    "bounding_box_test/0000_c1s1_000001_01.jpg",
    "bounding_box_test/-1_c1s1_000002_01.jpg",
]


def test_small_tree_counts_and_records(tmp_path, make_tree):
    make_tree(tmp_path / "market1501", SMALL)
    ds = build_dataset("market", tmp_path)
    assert ds.statistics() == {
        "train": {"ids": 2, "images": 3, "cameras": 3},
        "query": {"ids": 1, "images": 1, "cameras": 1},
        "gallery": {"ids": 2, "images": 2, "cameras": 2},
    }
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 1), (1, 2)]
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(0, 0), (2, 4)]
    assert ds.query[0].path == str(tmp_path / "market1501" / SMALL[4])


def test_missing_split_folder_is_named(tmp_path, make_tree):
    make_tree(tmp_path / "Market", [n for n in SMALL if not n.startswith("query/")])
    with pytest.raises(
        DatasetError, match=f"split folder {tmp_path / 'Market' / 'query'} is missing"
    ):
        build_dataset("market1501", tmp_path)


def test_unparsable_name_is_named_with_the_expected_pattern(tmp_path, make_tree):
    make_tree(tmp_path, [*SMALL, "query/person2_cam4.jpg"])
    with pytest.raises(DatasetError, match=r"person2_cam4\.jpg.*expected PID_cCAM"):
        build_dataset("market1501", tmp_path)


def test_empty_split_is_named(tmp_path, make_tree):
    make_tree(tmp_path, [n for n in SMALL if not n.startswith("query/")])
    (tmp_path / "query").mkdir()
    with pytest.raises(DatasetError, match=f"query split under {tmp_path} is empty"):
        build_dataset("market1501", tmp_path)


def test_split_of_only_junk_is_empty(tmp_path, make_tree):
    make_tree(tmp_path, [n for n in SMALL if not n.startswith("query/")] + ["query/-1_c1s1_01.jpg"])
    with pytest.raises(DatasetError, match="query split .* is empty"):
        build_dataset("market1501", tmp_path)
