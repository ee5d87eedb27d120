"""CUHK03 parser (``data/datasets/cuhk03.py``): CUHK03-NP folders and the raw ``cuhk-03.mat``.

The raw-release tests write a small ``cuhk-03.mat`` with the real structure: an HDF5 file
(MATLAB v7.3, 512-byte user block) whose ``detected``/``labeled`` are cell arrays of
camera-pair references, each a ``[num_pids x 10]`` cell matrix (stored transposed) of
references to ``H x W x 3`` uint8 images (stored transposed), empty cells being 2-element
arrays; ``testsets`` holds the classic splits as ``[k x 2]`` ``(pair, pid)`` arrays. The
new-protocol configs are MATLAB v5 files written with ``scipy.io.savemat``.
"""

from __future__ import annotations

import itertools
import os

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from crossreid.data import build_dataset
from crossreid.errors import ConfigError, DatasetError

# ---------------------------------------------------------------- CUHK03-NP folders

NP_DETECTED = [
    "bounding_box_train/0001_c1_1.png",
    "bounding_box_train/0001_c2_2.png",
    "bounding_box_train/0003_c1_1.png",
    "query/0002_c1_1.png",
    "query/0002_c2_2.png",
    "bounding_box_test/0002_c1_3.png",
    "bounding_box_test/0002_c2_4.png",
    "bounding_box_test/0004_c2_1.png",
]
NP_LABELED = [
    "bounding_box_train/0001_c1_1.png",
    "query/0002_c1_1.png",
    "bounding_box_test/0002_c2_4.png",
]


@pytest.fixture
def cuhk03_np(tmp_path, make_tree):
    make_tree(tmp_path / "cuhk03-np" / "detected", NP_DETECTED)
    make_tree(tmp_path / "cuhk03-np" / "labeled", NP_LABELED)
    return tmp_path


def test_np_detected_hand_counted(cuhk03_np):
    ds = build_dataset("CUHK03", cuhk03_np)
    assert ds.statistics() == {
        "train": {"ids": 2, "images": 3, "cameras": 2},
        "query": {"ids": 1, "images": 2, "cameras": 2},
        "gallery": {"ids": 2, "images": 3, "cameras": 2},
    }
    assert ds.extra["subset"] == "detected"
    assert [r.pid for r in ds.train] == [0, 0, 1]


def test_np_labeled_subset(cuhk03_np):
    ds = build_dataset("cuhk03", cuhk03_np, subset="labeled")
    assert {s: v["images"] for s, v in ds.statistics().items()} == {
        "train": 1,
        "query": 1,
        "gallery": 1,
    }
    assert ds.root == cuhk03_np / "cuhk03-np" / "labeled"


def test_np_root_may_be_the_subset_folder(cuhk03_np):
    ds = build_dataset("cuhk03", cuhk03_np / "cuhk03-np" / "detected")
    assert len(ds.train) == 3
    with pytest.raises(ConfigError, match="labeled"):
        build_dataset("cuhk03", cuhk03_np / "cuhk03-np" / "detected", subset="labeled")


def test_np_classic_protocol_needs_the_raw_mat(cuhk03_np):
    with pytest.raises(DatasetError, match=r"classic protocol needs the raw release.*cuhk-03\.mat"):
        build_dataset("cuhk03", cuhk03_np, protocol="classic")


def test_np_missing_subset_folder_is_named(tmp_path, make_tree):
    make_tree(tmp_path / "cuhk03-np" / "detected", NP_DETECTED)
    with pytest.raises(DatasetError, match=str(tmp_path / "cuhk03-np" / "labeled")):
        build_dataset("cuhk03", tmp_path, subset="labeled")


def test_np_missing_split_folder_is_named(tmp_path, make_tree):
    make_tree(tmp_path / "cuhk03-np" / "detected", [n for n in NP_DETECTED if "query" not in n])
    with pytest.raises(DatasetError, match=str(tmp_path / "cuhk03-np" / "detected" / "query")):
        build_dataset("cuhk03", tmp_path)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"subset": "both"}, "subset"),
        ({"protocol": "old"}, "protocol"),
        ({"labeled": True}, "labeled"),
    ],
)
def test_bad_options(cuhk03_np, options, error):
    with pytest.raises(ConfigError, match=error):
        build_dataset("cuhk03", cuhk03_np, **options)


# ---------------------------------------------------------------- raw release


def _image(seed: int) -> np.ndarray:
    """A distinct 6x4 RGB image (H x W x 3, uint8)."""
    return np.random.default_rng(seed).integers(0, 256, size=(6, 4, 3), dtype=np.uint8)


# pair -> per-identity list of the cell indices (0..9) holding an image; 0-4 = view 1.
DETECTED_CELLS = [
    [[0, 1, 5], [0, 5, 6], [0, 1, 2]],  # pair 1: global pids 1, 2, 3 (pid 3 has no view 2)
    [[0, 5], [0, 1, 5, 6, 7]],  # pair 2: global pids 4, 5
]
LABELED_CELLS = [[[0, 5], [0, 5], [0, 5]], [[0, 5], [0, 5]]]
TESTSETS = [[(1, 2), (2, 2)], [(1, 1), (1, 3)]]  # classic splits as (pair, pid), 1-based


def _images(cells):
    seeds = itertools.count(1)
    return [[{i: _image(next(seeds)) for i in person} for person in pair] for pair in cells]


def write_cuhk03_mat(path, subsets: dict, testsets) -> None:
    """Write ``subsets[name][pair][pid] = {cell index: HxWx3 image}`` as MATLAB v7.3 does."""
    with h5py.File(path, "w", userblock_size=512) as mat:
        store = mat.create_group("#refs#")
        names = (f"r{i}" for i in itertools.count())

        def ref(data, matlab_class, empty=False):
            dataset = store.create_dataset(next(names), data=data)
            dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            if empty:
                dataset.attrs["MATLAB_empty"] = np.uint8(1)
            return dataset.ref

        def cell_row(refs):  # a MATLAB [n x 1] cell is stored with HDF5 shape (1, n)
            row = np.empty((1, len(refs)), dtype=h5py.ref_dtype)
            row[0, :] = refs
            return row

        for subset, pairs in subsets.items():
            pair_refs = []
            for people in pairs:
                grid = np.empty((10, len(people)), dtype=h5py.ref_dtype)
                for pid, images in enumerate(people):
                    for index in range(10):
                        if index in images:
                            grid[index, pid] = ref(images[index].T, "uint8")  # HxWx3 -> 3xWxH
                        else:
                            grid[index, pid] = ref(
                                np.zeros(2, dtype=np.uint64), "double", empty=True
                            )
                pair_refs.append(ref(grid, "cell"))
            mat.create_dataset(subset, data=cell_row(pair_refs)).attrs["MATLAB_class"] = b"cell"
        split_refs = [ref(np.asarray(rows, dtype=np.float64).T, "double") for rows in testsets]
        mat.create_dataset("testsets", data=cell_row(split_refs)).attrs["MATLAB_class"] = b"cell"
    with open(path, "r+b") as handle:  # what MATLAB writes in the user block
        handle.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


def _names(cells):
    return [
        (pair + 1, pid + 1, f"{pair + 1}_{pid + 1:03d}_{1 if i < 5 else 2}_{i + 1:02d}.png")
        for pair, people in enumerate(cells)
        for pid, person in enumerate(people)
        for i in person
    ]


def write_new_protocol_config(path, cells, train_pids, query_names) -> None:
    """A config in the real key layout: 1-based index columns, a cell column of file names."""
    entries = _names(cells)
    global_pid = {key: i + 1 for i, key in enumerate(dict.fromkeys((p, q) for p, q, _ in entries))}
    labels = [global_pid[p, q] for p, q, _ in entries]
    filelist = np.empty((len(entries), 1), dtype=object)
    filelist[:, 0] = [name for _, _, name in entries]
    train = [i + 1 for i, pid in enumerate(labels) if pid in train_pids]
    query = [i + 1 for i, (_, _, name) in enumerate(entries) if name in query_names]
    gallery = [i + 1 for i in range(len(entries)) if i + 1 not in train and i + 1 not in query]
    savemat(
        path,
        {
            "filelist": filelist,
            "labels": np.asarray(labels, dtype=np.float64)[:, None],
            "camId": np.asarray([int(n.split("_")[2]) for _, _, n in entries], dtype=np.float64)[
                :, None
            ],
            "train_idx": np.asarray(train, dtype=np.float64)[:, None],
            "query_idx": np.asarray(query, dtype=np.float64)[:, None],
            "gallery_idx": np.asarray(gallery, dtype=np.float64)[:, None],
        },
    )


@pytest.fixture(scope="module")
def detected_images():
    return _images(DETECTED_CELLS)


@pytest.fixture
def raw_release(tmp_path, detected_images):
    """torchreid's layout: cuhk03/cuhk03_release/cuhk-03.mat, configs in cuhk03/."""
    release = tmp_path / "cuhk03" / "cuhk03_release"
    release.mkdir(parents=True)
    write_cuhk03_mat(
        release / "cuhk-03.mat",
        {"detected": detected_images, "labeled": _images(LABELED_CELLS)},
        TESTSETS,
    )
    write_new_protocol_config(
        tmp_path / "cuhk03" / "cuhk03_new_protocol_config_detected.mat",
        DETECTED_CELLS,
        train_pids={1, 3, 4},
        query_names={"1_002_1_01.png", "1_002_2_06.png", "2_002_1_01.png", "2_002_2_06.png"},
    )
    return tmp_path


def test_raw_classic_split_0_hand_counted(raw_release):
    ds = build_dataset("cuhk03", raw_release, protocol="classic", split=0)
    # test ids (1,2)->2 and (2,2)->5; train ids 1, 3, 4 with 3 + 3 + 2 images
    assert ds.statistics() == {
        "train": {"ids": 3, "images": 8, "cameras": 2},
        "query": {"ids": 2, "images": 3, "cameras": 1},
        "gallery": {"ids": 2, "images": 5, "cameras": 1},
    }
    assert {r.pid for r in ds.query} == {2, 5}
    assert {r.camid for r in ds.query} == {0} and {r.camid for r in ds.gallery} == {1}
    assert sorted({r.pid for r in ds.train}) == [0, 1, 2]


def test_raw_classic_split_1_and_labeled(raw_release):
    ds = build_dataset("cuhk03", raw_release, protocol="classic", split=1)
    assert {s: (v["ids"], v["images"]) for s, v in ds.statistics().items()} == {
        "train": (3, 10),
        "query": (2, 5),
        "gallery": (1, 1),  # identity (1,3) has no second-view image
    }
    labeled = build_dataset("cuhk03", raw_release, subset="labeled", protocol="classic", split=0)
    assert {s: v["images"] for s, v in labeled.statistics().items()} == {
        "train": 6,
        "query": 2,
        "gallery": 2,
    }


def test_raw_extraction_writes_each_image_once_untransposed(raw_release, detected_images):
    image_dir = raw_release / "cuhk03" / "cuhk03_release" / "images_detected"
    build_dataset("cuhk03", raw_release, protocol="classic")
    pngs = sorted(p.name for p in image_dir.glob("*.png"))
    assert pngs == sorted(name for _, _, name in _names(DETECTED_CELLS))
    np.testing.assert_array_equal(
        np.asarray(Image.open(image_dir / "2_002_2_07.png")), detected_images[1][1][6]
    )
    stamp = os.stat(image_dir / "1_001_1_01.png").st_mtime_ns
    os.utime(image_dir / "1_001_1_01.png", ns=(stamp - 10**9, stamp - 10**9))
    build_dataset("cuhk03", raw_release, protocol="classic", split=1)
    assert os.stat(image_dir / "1_001_1_01.png").st_mtime_ns == stamp - 10**9


def test_raw_new_protocol_from_config(raw_release):
    ds = build_dataset("cuhk03", raw_release / "cuhk03")
    assert ds.statistics() == {
        "train": {"ids": 3, "images": 8, "cameras": 2},
        "query": {"ids": 2, "images": 4, "cameras": 2},
        "gallery": {"ids": 2, "images": 4, "cameras": 2},
    }
    assert {r.pid for r in ds.gallery} == {2, 5}  # labels from the config, not relabelled
    assert all(os.path.isfile(r.path) for r in ds.query)


def test_raw_classic_split_out_of_range(raw_release):
    with pytest.raises(ConfigError, match=r"split 2 out of range.*0\.\.1"):
        build_dataset("cuhk03", raw_release, protocol="classic", split=2)


def test_raw_new_protocol_without_config_names_the_paths_searched(raw_release):
    with pytest.raises(
        DatasetError, match="cuhk03_new_protocol_config_labeled.mat; searched"
    ) as info:
        build_dataset("cuhk03", raw_release, subset="labeled")
    assert str(raw_release / "cuhk03" / "cuhk03_release") in str(info.value)


def test_raw_config_missing_keys_is_named(raw_release):
    config = raw_release / "cuhk03" / "cuhk03_new_protocol_config_detected.mat"
    savemat(config, {"labels": np.ones((3, 1))})
    with pytest.raises(
        DatasetError, match=f"{config} lacks train_idx, query_idx, gallery_idx, filelist"
    ):
        build_dataset("cuhk03", raw_release)


def test_raw_mat_that_is_not_hdf5_is_named(tmp_path):
    release = tmp_path / "cuhk03_release"
    release.mkdir()
    (release / "cuhk-03.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DatasetError, match=r"cannot read .*cuhk-03\.mat as a MATLAB v7\.3"):
        build_dataset("cuhk03", tmp_path, protocol="classic")


def test_nothing_found_lists_the_paths_searched(tmp_path):
    with pytest.raises(DatasetError, match=f"searched {tmp_path}, {tmp_path / 'cuhk03-np'}"):
        build_dataset("cuhk03", tmp_path)
