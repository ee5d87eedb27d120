"""Tests of crossreid.data.specs: parsing, description, resolution and the synthetic cache."""

from __future__ import annotations

from pathlib import Path

import pytest

import crossreid.data.specs as specs
from crossreid.data.specs import describe_spec, parse_spec, resolve_dataset
from crossreid.data.synthetic import SyntheticConfig, generate_domain
from crossreid.errors import ConfigError, DatasetError

TINY_SPEC = "synthetic:B?ids=6&images=4&cameras=2&size=32x16"
TINY = SyntheticConfig(domain="B", num_ids=6, images_per_id=4, num_cameras=2, size=(32, 16))


@pytest.fixture
def generation_counter(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    real = specs.generate_domain

    def counting(config, out_dir, **kwargs):
        calls.append(config)
        return real(config, out_dir, **kwargs)

    monkeypatch.setattr(specs, "generate_domain", counting)
    return calls


# ---------------------------------------------------------------- parsing


def test_parse_name_with_options() -> None:
    spec = parse_spec(" cuhk03?subset=labeled&split=3 ")
    assert (spec.kind, spec.value, spec.options) == (
        "name",
        "cuhk03",
        {"subset": "labeled", "split": 3},
    )
    assert parse_spec("Duke").kind == "name" and parse_spec("MSMT17_V2").value == "MSMT17_V2"


def test_parse_folder_keeps_the_path_verbatim() -> None:
    spec = parse_spec("folder:/data/my set?v=1")
    assert (spec.kind, spec.value) == ("folder", "/data/my set?v=1")


def test_parse_synthetic_options_into_a_config() -> None:
    spec = parse_spec("synthetic:b?ids=60&images=10&cameras=5&seed=1&size=64x32")
    assert spec.kind == "synthetic" and spec.value == "B"
    assert spec.synthetic == SyntheticConfig(
        domain="B", num_ids=60, images_per_id=10, num_cameras=5, seed=1, size=(64, 32)
    )
    assert parse_spec("synthetic:A").synthetic == SyntheticConfig(domain="A")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "unknown dataset spec ''"),
        ("imagenet", "unknown dataset spec 'imagenet'.*folder:PATH.*synthetic:DOMAIN"),
        ("data/market", "to read a folder, write folder:PATH"),
        ("http://example.com/x", "unknown dataset spec"),
        ("folder:", "names no folder"),
        ("synthetic:", "names no domain"),
        ("synthetic:Z", "unknown synthetic domain 'Z'"),
        ("synthetic:A?colour=red", "unknown option.*colour"),
        ("synthetic:A?ids=many", "ids='many' is not an integer"),
        ("synthetic:A?ids=1", "number of identities 1 out of range"),
        ("synthetic:A?size=64", "HEIGHTxWIDTH"),
        ("synthetic:A?ids", "'ids' is not key=value"),
        ("synthetic:A?ids=4&ids=5", "given twice"),
    ],
)
def test_bad_specs_raise_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec)


def test_describe_spec() -> None:
    assert describe_spec(TINY_SPEC) == (
        "synthetic domain B (6 ids x 4 images, 3 of them for training, 2 cameras, seed 0, 32x16)"
    )
    assert describe_spec("folder:/x") == "folder /x"
    assert describe_spec("cuhk03?subset=labeled") == "dataset cuhk03 (subset=labeled)"
    assert describe_spec("Market") == "dataset Market"


# ---------------------------------------------------------------- resolution


def test_synthetic_is_generated_once_then_reused(tmp_path: Path, generation_counter) -> None:
    first = resolve_dataset(TINY_SPEC, cache_dir=tmp_path, progress=False)
    folder = tmp_path / "synthetic" / TINY.cache_key()
    stamp = (folder / "meta.json").stat().st_mtime_ns
    second = resolve_dataset(TINY_SPEC, cache_dir=tmp_path, progress=False)
    assert len(generation_counter) == 1
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    assert first.statistics() == second.statistics() == first.extra["synthetic"]["counts"]
    assert first.name == "synthetic:B" and first.extra["synthetic"]["domain"] == "B"
    assert "identities" not in first.extra["synthetic"]
    assert {Path(r.path).parent.parent for r in first.train} == {folder}
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == [TINY.cache_key()]


def test_other_synthetic_parameters_get_their_own_cache_folder(
    tmp_path: Path, generation_counter
) -> None:
    resolve_dataset(TINY_SPEC, cache_dir=tmp_path, progress=False)
    other = resolve_dataset(TINY_SPEC + "&seed=2", cache_dir=tmp_path, progress=False)
    assert len(generation_counter) == 2
    assert other.extra["synthetic"]["seed"] == 2
    assert len(list((tmp_path / "synthetic").iterdir())) == 2


def test_cache_dir_defaults_to_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CROSSREID_CACHE", str(tmp_path / "env-cache"))
    resolve_dataset(TINY_SPEC, progress=False)
    assert (tmp_path / "env-cache" / "synthetic" / TINY.cache_key() / "meta.json").is_file()


def test_incomplete_cache_folder_is_rebuilt(tmp_path: Path, generation_counter) -> None:
    folder = tmp_path / "synthetic" / TINY.cache_key()
    (folder / "query").mkdir(parents=True)
    (folder / "query" / "half-written.jpg").write_bytes(b"")
    dataset = resolve_dataset(TINY_SPEC, cache_dir=tmp_path, progress=False)
    assert len(generation_counter) == 1 and dataset.statistics()["train"]["images"] == 12
    assert not (folder / "query" / "half-written.jpg").exists()


def test_name_spec_needs_a_data_root() -> None:
    with pytest.raises(ConfigError, match="--data-root"):
        resolve_dataset("market1501")


def test_name_and_folder_specs_read_market_layout(tmp_path: Path) -> None:
    market = tmp_path / "Market-1501-v15.09.15"
    meta = generate_domain(TINY, market, progress=False)
    by_name = resolve_dataset("Market", data_root=tmp_path)
    by_folder = resolve_dataset(f"folder:{market}")
    assert by_name.statistics() == by_folder.statistics() == meta["counts"]
    assert by_name.name == "market1501"


def test_missing_folder_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        resolve_dataset(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(DatasetError):
        resolve_dataset("dukemtmcreid", data_root=tmp_path)
