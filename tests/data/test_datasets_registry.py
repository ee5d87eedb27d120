"""``build_dataset``: names, aliases and options (``data/datasets/__init__.py``)."""

from __future__ import annotations

import pytest

from crossreid.data import DATASET_NAMES, build_dataset
from crossreid.data.datasets import DATASET_ALIASES, canonical_name
from crossreid.errors import ConfigError, DatasetError


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("Market", "market1501"),
        ("market", "market1501"),
        ("MARKET1501", "market1501"),
        ("Duke", "dukemtmcreid"),
        ("duke", "dukemtmcreid"),
        ("CUHK03", "cuhk03"),
        ("MSMT17_V1", "msmt17"),
        ("MSMT17_V2", "msmt17"),
        ("msmt17", "msmt17"),
        ("Custom", "custom"),
    ],
)
def test_aliases_are_case_insensitive(alias, name):
    assert canonical_name(alias) == name


def test_every_alias_maps_to_a_listed_name():
    assert {name for name, _ in DATASET_ALIASES.values()} == set(DATASET_NAMES)


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'viper': expected one of market1501"):
        build_dataset("viper", tmp_path)


def test_option_a_dataset_does_not_take(tmp_path):
    with pytest.raises(ConfigError, match="market1501 does not take option.*subset.*no options"):
        build_dataset("market1501", tmp_path, subset="labeled")


def test_none_options_mean_defaults(tmp_path, make_tree):
    make_tree(
        tmp_path,
        [
            "bounding_box_train/0001_c1_1.jpg",
            "query/0002_c1_1.jpg",
            "bounding_box_test/0002_c2_1.jpg",
        ],
    )
    ds = build_dataset("market1501", tmp_path, subset=None, protocol=None, split=None)
    assert ds.statistics()["train"] == {"ids": 1, "images": 1, "cameras": 1}
