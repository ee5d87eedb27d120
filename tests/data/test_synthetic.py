"""Tests of crossreid.data.synthetic: determinism, layout, split structure, safe writing
(concurrent processes, full disks), the ``synthetic:`` cache, domains."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from crossreid.data import build_dataset
from crossreid.data.specs import synthetic_root
from crossreid.data.synthetic import (
    DOMAINS,
    GENERATOR_VERSION,
    DomainRenderer,
    SyntheticConfig,
    generate_domain,
    parse_size,
    plan_split,
    read_meta,
    render_preview,
)
from crossreid.data.synthetic.generator import TEMP_SUFFIX
from crossreid.data.synthetic.styles import sample_camera_style
from crossreid.errors import ConfigError, DatasetError, StorageError
from crossreid.utils.io import format_size

TINY = dict(num_ids=6, images_per_id=4, num_cameras=2, size=(32, 16))
NAME = re.compile(r"^(\d{4})_c(\d+)s1_(\d{6})_00\.jpg$")
SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def split_files(root: Path) -> dict[str, list[tuple[int, int]]]:
    """(pid, 1-based camera) of every file, per split, parsed from the names."""
    out = {}
    for split, folder in SPLITS.items():
        out[split] = []
        for path in sorted((root / folder).iterdir()):
            match = NAME.match(path.name)
            assert match, f"not a Market name: {path.name}"
            out[split].append((int(match.group(1)), int(match.group(2))))
    return out


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "B"
    meta = generate_domain(SyntheticConfig(domain="B", **TINY), root, progress=False)
    return root, meta


# ---------------------------------------------------------------- config


def test_parse_size() -> None:
    assert parse_size("128x64") == (128, 64)
    assert parse_size(" 64X32 ") == (64, 32)
    for bad in ("128", "x64", "128x", "12.5x8", "ax b"):
        with pytest.raises(ConfigError, match="HEIGHTxWIDTH"):
            parse_size(bad)


def test_config_normalises_and_validates() -> None:
    config = SyntheticConfig(domain="b", size="64x32")  # type: ignore[arg-type]
    assert config.domain == "B" and config.size == (64, 32)
    with pytest.raises(ConfigError, match="unknown synthetic domain 'Q'"):
        SyntheticConfig(domain="Q")
    for bad in (dict(num_ids=1), dict(images_per_id=1), dict(num_cameras=1), dict(size=(8, 8))):
        with pytest.raises(ConfigError, match="out of range"):
            SyntheticConfig(**bad)


def test_cache_key_names_every_field() -> None:
    base = SyntheticConfig(**TINY)
    assert base.cache_key() == f"A-ids6-img4-cam2-seed0-32x16-v{GENERATOR_VERSION}"
    variants = [
        SyntheticConfig(**{**TINY, "num_ids": 7}),
        SyntheticConfig(**{**TINY, "images_per_id": 5}),
        SyntheticConfig(**{**TINY, "num_cameras": 3}),
        SyntheticConfig(**{**TINY, "size": (32, 24)}),
        SyntheticConfig(**TINY, seed=1),
        SyntheticConfig(**TINY, domain="B"),
    ]
    keys = {v.cache_key() for v in variants}
    assert len(keys) == len(variants) and base.cache_key() not in keys


# ---------------------------------------------------------------- determinism


def test_same_arguments_give_byte_identical_trees(tmp_path: Path, tiny_b) -> None:
    root, _ = tiny_b
    again = tmp_path / "again"
    generate_domain(SyntheticConfig(domain="B", **TINY), again, progress=False)
    first, second = tree_bytes(root), tree_bytes(again)
    assert list(first) == list(second)
    assert first == second


def test_other_seed_or_domain_changes_the_images(tmp_path: Path, tiny_b) -> None:
    root, _ = tiny_b
    reference = tree_bytes(root)
    for name, config in (
        ("seed", SyntheticConfig(domain="B", seed=1, **TINY)),
        ("domain", SyntheticConfig(domain="A", **TINY)),
    ):
        generate_domain(config, tmp_path / name, progress=False)
        other = tree_bytes(tmp_path / name)
        images = {v for k, v in other.items() if k.endswith(".jpg")}
        assert images.isdisjoint(v for k, v in reference.items() if k.endswith(".jpg")), name


def test_identity_attributes_persist_and_depend_on_domain() -> None:
    a1 = DomainRenderer(SyntheticConfig(domain="A", **TINY))
    a2 = DomainRenderer(SyntheticConfig(domain="A", **{**TINY, "num_ids": 50}))
    b = DomainRenderer(SyntheticConfig(domain="B", **TINY))
    assert a1.identity(3) == a2.identity(3)
    assert a1.identity(3) != a1.identity(4)
    assert a1.identity(3).upper != b.identity(3).upper


# ---------------------------------------------------------------- layout and split


def test_counts_match_meta_and_the_market_loader(tiny_b) -> None:
    root, meta = tiny_b
    assert json.loads((root / "meta.json").read_text()) == meta == read_meta(root)
    files = split_files(root)
    for split in SPLITS:
        assert meta["counts"][split]["images"] == len(files[split])
        assert meta["counts"][split]["ids"] == len({p for p, _ in files[split]})
    assert build_dataset("custom", root).statistics() == meta["counts"]
    assert meta["domain"] == "B" and meta["seed"] == 0 and meta["size"] == [32, 16]
    assert [c["camera"] for c in meta["cameras"]] == [1, 2]
    assert sum(c["images"] for c in meta["counts"].values()) == 6 * 4 + meta["distractors"]


def test_names_pids_cameras_and_image_size(tiny_b) -> None:
    root, meta = tiny_b
    files = split_files(root)
    train_pids = {p for p, _ in files["train"]}
    test_pids = {p for p, _ in files["query"] + files["gallery"]} - {0}
    assert train_pids == set(meta["train_pids"]) and test_pids == set(meta["test_pids"])
    assert train_pids.isdisjoint(test_pids) and train_pids | test_pids == set(range(1, 7))
    assert len(train_pids) == 3
    cams = {c for split in files.values() for _, c in split}
    assert cams <= {1, 2}
    with Image.open(next((root / "query").iterdir())) as im:
        assert im.size == (16, 32) and im.mode == "RGB"


def test_every_query_has_a_cross_camera_gallery_match(tiny_b) -> None:
    root, _ = tiny_b
    files = split_files(root)
    gallery_cams = defaultdict(set)
    for pid, cam in files["gallery"]:
        gallery_cams[pid].add(cam)
    assert len(files["query"]) == len(set(files["query"]))  # one query per (id, camera)
    assert files["query"]
    for pid, cam in files["query"]:
        assert pid > 0
        assert gallery_cams[pid] - {cam}, f"query {pid} c{cam} has no match in another camera"
    assert 0 in gallery_cams  # distractors live in the gallery only


@settings(max_examples=40, deadline=None)
@given(
    num_ids=st.integers(2, 30),
    images=st.integers(2, 12),
    cameras=st.integers(2, 8),
    seed=st.integers(0, 2**32),
)
def test_split_plan_is_valid_for_any_size(
    num_ids: int, images: int, cameras: int, seed: int
) -> None:
    config = SyntheticConfig(
        num_ids=num_ids, images_per_id=images, num_cameras=cameras, seed=seed, size=(32, 16)
    )
    plan = plan_split(config)
    assert len(plan.train_pids) == (num_ids + 1) // 2
    per_id = defaultdict(list)
    for job in plan.jobs:
        per_id[job.pid].append(job)
        assert 1 <= job.camera <= cameras
    assert len({j.filename for j in plan.jobs if j.split == "gallery"}) == len(
        [j for j in plan.jobs if j.split == "gallery"]
    )
    for pid in range(1, num_ids + 1):
        jobs = per_id[pid]
        assert len(jobs) == images and len({j.camera for j in jobs}) >= 2
        if pid in plan.train_pids:
            assert {j.split for j in jobs} == {"train"}
            continue
        queries = [j.camera for j in jobs if j.split == "query"]
        gallery = {j.camera for j in jobs if j.split == "gallery"}
        assert queries and len(queries) == len(set(queries))
        assert all(gallery - {q} for q in queries)
    assert all(j.split == "gallery" for j in per_id[0]) and per_id[0]


def test_training_identities_can_be_fewer_than_half():
    config = SyntheticConfig(num_ids=20, train_ids=5, images_per_id=4, size=(32, 16))
    plan = plan_split(config)
    assert len(plan.train_pids) == 5 and len(plan.test_pids) == 15
    assert {j.pid for j in plan.jobs if j.split == "train"} == set(plan.train_pids)
    # A different split is a different dataset: its own cache folder.
    assert (
        config.cache_key()
        != SyntheticConfig(num_ids=20, images_per_id=4, size=(32, 16)).cache_key()
    )
    with pytest.raises(ConfigError, match="training identities 20 out of range: expected 1..19"):
        SyntheticConfig(num_ids=20, train_ids=20)


# ---------------------------------------------------------------- writing


def test_no_temporary_folders_are_left_behind(tiny_b) -> None:
    root, _ = tiny_b
    assert sorted(p.name for p in root.parent.iterdir()) == ["B"]


def test_keep_existing_dataset_without_overwrite(tiny_b) -> None:
    root, meta = tiny_b
    stamp = (root / "meta.json").stat().st_mtime_ns
    other = SyntheticConfig(domain="B", seed=5, **TINY)
    assert generate_domain(other, root, progress=False, overwrite=False) == meta
    assert (root / "meta.json").stat().st_mtime_ns == stamp


def test_overwrite_replaces_a_generated_dataset(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate_domain(SyntheticConfig(**TINY), out, progress=False)
    meta = generate_domain(SyntheticConfig(seed=3, **TINY), out, progress=False)
    assert read_meta(out)["seed"] == 3 == meta["seed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_refuses_to_write_into_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing to write synthetic data into"):
        generate_domain(SyntheticConfig(**TINY), tmp_path, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_loser_of_a_race_keeps_the_winners_dataset(tmp_path: Path, monkeypatch) -> None:
    import crossreid.data.synthetic.generator as gen

    out = tmp_path / "race"
    config = SyntheticConfig(**TINY)
    real_write = gen._write_tree
    winner: dict = {}

    def write_while_another_process_finishes(cfg, root, progress):
        result = real_write(cfg, root, progress)
        if not winner:  # the other process renames its complete dataset in first
            monkeypatch.setattr(gen, "_write_tree", real_write)
            winner["meta"] = gen.generate_domain(cfg, out, progress=False, overwrite=False)
            winner["stamp"] = (out / "meta.json").stat().st_mtime_ns
        return result

    monkeypatch.setattr(gen, "_write_tree", write_while_another_process_finishes)
    meta = gen.generate_domain(config, out, progress=False, overwrite=False)
    assert meta == winner["meta"]
    assert (out / "meta.json").stat().st_mtime_ns == winner["stamp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"]


def _generate_after_barrier(barrier, config: SyntheticConfig, out: str) -> None:
    barrier.wait(timeout=120)
    generate_domain(config, out, progress=False, overwrite=False)


def _resolve_after_barrier(barrier, config: SyntheticConfig, cache: str, markers: str) -> None:
    import crossreid.data.specs as specs

    real_generate = specs.generate_domain

    def generate_and_mark(*args, **kwargs):
        (Path(markers) / str(os.getpid())).touch()
        return real_generate(*args, **kwargs)

    specs.generate_domain = generate_and_mark
    barrier.wait(timeout=120)
    specs.synthetic_root(config, cache, progress=False)


def _run_two(target, *args) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)  # both start generating at the same moment
    workers = [context.Process(target=target, args=(barrier, *args)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]


def test_two_processes_generating_one_folder_leave_one_valid_copy(tmp_path: Path, tiny_b) -> None:
    root, _ = tiny_b
    out = tmp_path / "B"
    _run_two(_generate_after_barrier, SyntheticConfig(domain="B", **TINY), str(out))
    assert tree_bytes(out) == tree_bytes(root)
    assert [p.name for p in tmp_path.iterdir()] == ["B"]  # the loser's copy is gone


def test_two_processes_asking_for_one_cached_domain_generate_it_once(
    tmp_path: Path, tiny_b
) -> None:
    root, _ = tiny_b
    config = SyntheticConfig(domain="B", **TINY)
    cache, markers = tmp_path / "cache", tmp_path / "markers"
    markers.mkdir()
    _run_two(_resolve_after_barrier, config, str(cache), str(markers))
    assert len(list(markers.iterdir())) == 1  # the other waited on the lock, then reused it
    assert tree_bytes(cache / "synthetic" / config.cache_key()) == tree_bytes(root)
    assert [p.name for p in (cache / "synthetic").iterdir()] == [config.cache_key()]


def test_stale_temporary_folders_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    config = SyntheticConfig(**TINY)
    parent = tmp_path / "synthetic"
    stale = parent / f".{config.cache_key()}.dead{TEMP_SUFFIX}"
    live = parent / f".{config.cache_key()}.busy{TEMP_SUFFIX}"
    for folder in (stale, live):
        (folder / "query").mkdir(parents=True)
        (folder / "query" / "0001_c1s1_000000_00.jpg").write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    for folder in (stale / "query", stale):
        os.utime(folder, (an_hour_ago, an_hour_ago))
    synthetic_root(config, tmp_path, progress=False)
    assert sorted(p.name for p in parent.iterdir()) == sorted([config.cache_key(), live.name])


def test_disk_full_while_generating_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "B"
    config = SyntheticConfig(domain="B", **TINY)
    real_write = Path.write_bytes
    written: list[int] = []

    def fill_up_after_five(self, data):
        if len(written) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(len(data))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", fill_up_after_five)
    with pytest.raises(StorageError) as info:
        generate_domain(config, out, progress=False)
    needed = sum(written) * len(plan_split(config).jobs) // len(written)
    assert re.fullmatch(
        rf"cannot write {re.escape(str(out))}: no space left on device \(needs about "
        rf"{re.escape(format_size(needed))}, [\d.]+ [kMGTP]?B free on /\S*\)",
        str(info.value),
    )
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_cache_is_one_line(tmp_path: Path, monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(StorageError, match=r"^cannot create folder \S+/B: read-only file system"):
        generate_domain(SyntheticConfig(**TINY), tmp_path / "B", progress=False)


# ---------------------------------------------------------------- domains and previews


def test_domain_camera_styles_are_separated() -> None:
    """B's cameras are darker, lower-contrast, blurrier and noisier than any of A's."""
    a = [sample_camera_style(np.random.default_rng(i), "A", 1) for i in range(200)]
    b = [sample_camera_style(np.random.default_rng(i), "B", 1) for i in range(200)]
    assert max(s.gain for s in b) < min(s.gain for s in a)
    assert max(s.contrast for s in b) < min(s.contrast for s in a)
    assert min(s.blur for s in b) > max(s.blur for s in a)
    assert min(s.noise for s in b) > max(s.noise for s in a)
    assert max(max(abs(c - 1) for c in s.cast) for s in a) <= 0.06
    assert min(max(abs(c - 1) for c in s.cast) for s in b) >= 0.08
    assert set(DOMAINS["A"].backgrounds).isdisjoint(DOMAINS["B"].backgrounds)


def test_rendered_b_images_are_darker_and_flatter_than_a() -> None:
    stats = {}
    for domain in "AB":
        config = SyntheticConfig(domain=domain, num_ids=4, num_cameras=3, size=(64, 32))
        renderer = DomainRenderer(config)
        pixels = np.stack(
            [
                np.asarray(renderer.render(pid, cam, np.random.default_rng([pid, cam])), float)
                for pid in range(1, 5)
                for cam in range(1, 4)
            ]
        )
        stats[domain] = (pixels.mean(), pixels.std())
    assert stats["B"][0] < 0.7 * stats["A"][0]
    assert stats["B"][1] < stats["A"][1]


def test_preview_from_config_and_from_folder(tmp_path: Path, tiny_b) -> None:
    png = render_preview(SyntheticConfig(domain="A", **TINY), tmp_path / "a.png", num_ids=3)
    with Image.open(png) as sheet:  # 3 rows x 2 cameras of 128x64 cells (32x16 scaled x4)
        assert sheet.size == (34 + 2 * (64 + 2), 16 + 3 * (128 + 2))
    root, _ = tiny_b
    png = render_preview(root, tmp_path / "b.png", num_ids=4, cell_height=32)
    with Image.open(png) as sheet:
        assert sheet.size == (34 + 2 * (16 + 2), 16 + 4 * (32 + 2))
    with pytest.raises(DatasetError, match="no Market-named images"):
        render_preview(tmp_path, tmp_path / "c.png")
