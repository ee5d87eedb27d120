"""CUHK03 (Li et al., CVPR 2014), detected or labeled boxes, new or classic protocol.

Two layouts are read:

* **CUHK03-NP** (Zhong et al., CVPR 2017): ``cuhk03-np/detected/`` and ``.../labeled/``, each
  with ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` in Market naming
  (``0001_c1_1.png``). New protocol only.
* **The raw release**: ``cuhk03_release/cuhk-03.mat`` (MATLAB v7.3, i.e. HDF5) holding
  ``detected`` and ``labeled`` (5 camera pairs, each a ``[num_pids x 10]`` cell matrix of
  images; columns 1-5 are the first camera of the pair, 6-10 the second; empty cells where
  a person has fewer images) and ``testsets`` (the 20 classic splits, each ``[100 x 2]``
  rows of ``(pair, pid)``). The new protocol also needs
  ``cuhk03_new_protocol_config_{detected,labeled}.mat`` (``train_idx``, ``query_idx``,
  ``gallery_idx``, ``labels``, ``filelist``; 1-based indices), looked for beside the
  ``.mat`` and one folder up. The images are extracted once to PNG files in
  ``images_{detected,labeled}/`` beside ``cuhk-03.mat``, named
  ``{pair}_{pid:03d}_{view}_{index:02d}.png`` (all 1-based) as in the configs' file lists.

Camera ids are the view within a camera pair (0 or 1), as in the CUHK03 protocols.
Person ids of the raw release are global: identities are numbered from 1 in the order of
the camera pairs, matching the configs' ``labels``.

Classic protocol, split ``k``: the 100 identities of ``testsets{k}`` are the test set —
their first-view images form the query, their second-view images the gallery — and every
other identity is training data.

Official new-protocol statistics (ids/images): detected train 767/7365, query 700/1400,
gallery 700/5332; labeled 767/7368, 700/1400, 700/5328.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from crossreid.data.base import ImageRecord, ReIDDataset, relabel
from crossreid.data.datasets._common import (
    build_market_layout,
    child_dirs,
    has_market_layout,
    resolve_root,
)
from crossreid.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

NAME = "cuhk03"
FOLDER_NAMES = ("cuhk03-np", "CUHK03-NP", "CUHK03", "cuhk03", "cuhk03_release")
SUBSETS = ("detected", "labeled")
PROTOCOLS = ("new", "classic")
RAW_MAT = "cuhk-03.mat"
RELEASE_DIR = "cuhk03_release"
CONFIG_KEYS = ("train_idx", "query_idx", "gallery_idx", "labels", "filelist")
EXPECTED = (
    "CUHK03-NP folders detected/ or labeled/ with bounding_box_train/, query/, "
    f"bounding_box_test/, or {RELEASE_DIR}/{RAW_MAT}"
)
_DONE_MARKER = ".extracted"


def _raw_mat(folder: Path) -> Path | None:
    """``cuhk-03.mat`` in ``folder`` or in its ``cuhk03_release/`` sub-folder."""
    if (folder / RAW_MAT).is_file():
        return folder / RAW_MAT
    release = child_dirs(folder).get(RELEASE_DIR)
    if release is not None and (release / RAW_MAT).is_file():
        return release / RAW_MAT
    return None


def _looks_like(folder: Path) -> bool:
    children = child_dirs(folder)
    np_subsets = any(s in children and has_market_layout(children[s]) for s in SUBSETS)
    return np_subsets or has_market_layout(folder) or _raw_mat(folder) is not None


def build(
    root: str | os.PathLike,
    *,
    subset: str = "detected",
    protocol: str = "new",
    split: int = 0,
) -> ReIDDataset:
    """CUHK03 found at ``root``.

    Args:
        root: the CUHK03 folder (``cuhk03-np/``, ``cuhk03/``, ``cuhk03_release/``) or a parent.
        subset: ``"detected"`` (detector boxes) or ``"labeled"`` (hand-drawn boxes).
        protocol: ``"new"`` (767/700 identities) or ``"classic"`` (20 random splits of
            100 test identities; needs the raw ``cuhk-03.mat``).
        split: which classic split, 0..19.
    """
    subset, protocol = str(subset).lower(), str(protocol).lower()
    if subset not in SUBSETS:
        raise ConfigError(f"{NAME}: unknown subset {subset!r}, expected detected or labeled")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{NAME}: unknown protocol {protocol!r}, expected new or classic")
    folder = resolve_root(root, FOLDER_NAMES, _looks_like, NAME, EXPECTED)
    extra = {"subset": subset, "protocol": protocol}

    if protocol == "new":
        np_dir = child_dirs(folder).get(subset)
        if np_dir is not None and has_market_layout(np_dir):
            return build_market_layout(NAME, np_dir, **extra, source="cuhk03-np")
        if has_market_layout(folder):  # root points at cuhk03-np/<subset> itself
            if folder.name.lower() in SUBSETS and folder.name.lower() != subset:
                raise ConfigError(
                    f"{NAME}: {folder} holds the {folder.name.lower()} images but subset "
                    f"{subset!r} was asked for"
                )
            return build_market_layout(NAME, folder, **extra, source="cuhk03-np")
        mat_path = _raw_mat(folder)
        if mat_path is None:
            raise DatasetError(
                f"{NAME}: neither the CUHK03-NP folder {folder / subset} nor the raw "
                f"{folder / RELEASE_DIR / RAW_MAT} exists"
            )
        return _new_protocol_from_mat(mat_path, subset, extra)

    mat_path = _raw_mat(folder)
    if mat_path is None:
        raise DatasetError(
            f"{NAME}: the classic protocol needs the raw release; neither {folder / RAW_MAT} "
            f"nor {folder / RELEASE_DIR / RAW_MAT} exists"
        )
    return _classic_from_mat(mat_path, subset, int(split), extra)


# --------------------------------------------------------------------------- raw release


def _open_mat(mat_path: Path):
    import h5py  # only for the raw .mat release (HDF5)

    try:
        return h5py.File(mat_path, "r")
    except OSError as err:
        raise DatasetError(
            f"{NAME}: cannot read {mat_path} as a MATLAB v7.3 (HDF5) file: {err}"
        ) from None


def _is_image(dataset) -> bool:
    """MATLAB stores an empty cell as a 2-element array; a real image is 3-D."""
    return dataset.ndim == 3 and dataset.size > 0


def image_name(pair: int, pid: int, index: int) -> str:
    """File name of image ``index`` (0..9) of person ``pid`` (0-based) in ``pair`` (0-based)."""
    view = 1 if index < 5 else 2
    return f"{pair + 1}_{pid + 1:03d}_{view}_{index + 1:02d}.png"


def extract_images(mat_path: Path, subset: str) -> tuple[Path, list[tuple[int, int, list[str]]]]:
    """Write the ``subset`` images of ``cuhk-03.mat`` as PNGs (once) and describe them.

    Returns:
        ``(image_dir, identities)`` where ``identities`` lists ``(pair, pid, names)`` with
        1-based ``pair`` and ``pid`` (within the pair), in the order of the file.
    """
    image_dir = mat_path.parent / f"images_{subset}"
    done = (image_dir / _DONE_MARKER).is_file()
    identities: list[tuple[int, int, list[str]]] = []
    with _open_mat(mat_path) as mat:
        if subset not in mat:
            raise DatasetError(f"{NAME}: {mat_path} has no {subset!r} cell array")
        pending = []
        for pair, pair_ref in enumerate(mat[subset][()].ravel()):
            cells = mat[pair_ref]  # HDF5 shape (10, num_pids): MATLAB's [num_pids x 10]
            refs = cells[()].T
            for pid in range(refs.shape[0]):
                names = []
                for index, img_ref in enumerate(refs[pid]):
                    if not _is_image(mat[img_ref]):
                        continue
                    names.append(image_name(pair, pid, index))
                    if not done:
                        pending.append((img_ref, names[-1]))
                if names:
                    identities.append((pair + 1, pid + 1, names))
        if not done:
            logger.info(
                "extracting %d %s images from %s to %s (once)",
                len(pending),
                subset,
                mat_path,
                image_dir,
            )
            _write_pngs(mat, pending, image_dir)
    return image_dir, identities


def _write_pngs(mat, pending, image_dir: Path) -> None:
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
        for img_ref, name in pending:
            # HDF5 holds MATLAB's H x W x 3 array transposed, as 3 x W x H.
            pixels = mat[img_ref][()].T
            Image.fromarray(pixels.astype("uint8")).save(image_dir / name)
        (image_dir / _DONE_MARKER).write_text("ok\n")
    except OSError as err:
        raise DatasetError(f"{NAME}: cannot write extracted images to {image_dir}: {err}") from None


def _camid(name: str) -> int:
    return int(name.split("_")[2]) - 1


def _global_pids(identities) -> dict[tuple[int, int], int]:
    """``(pair, pid) -> global pid`` numbered from 1 in file order (the configs' labels)."""
    return {(pair, pid): i + 1 for i, (pair, pid, _) in enumerate(identities)}


def _classic_from_mat(mat_path: Path, subset: str, split: int, extra: dict) -> ReIDDataset:
    image_dir, identities = extract_images(mat_path, subset)
    with _open_mat(mat_path) as mat:
        if "testsets" not in mat:
            raise DatasetError(f"{NAME}: {mat_path} has no 'testsets' cell array")
        split_refs = mat["testsets"][()].ravel()
        if not 0 <= split < len(split_refs):
            raise ConfigError(
                f"{NAME}: classic split {split} out of range, {mat_path} has splits "
                f"0..{len(split_refs) - 1}"
            )
        rows = mat[split_refs[split]][()].T  # [100 x 2] rows of (pair, pid), 1-based
    test_ids = {(int(pair), int(pid)) for pair, pid in rows.reshape(-1, 2)}
    global_pid = _global_pids(identities)
    train, query, gallery = [], [], []
    for pair, pid, names in identities:
        for name in names:
            record = ImageRecord(str(image_dir / name), global_pid[pair, pid], _camid(name))
            if (pair, pid) not in test_ids:
                train.append(record)
            elif record.camid == 0:
                query.append(record)
            else:
                gallery.append(record)
    return ReIDDataset(
        name=NAME,
        root=mat_path.parent,
        train=relabel(train),
        query=query,
        gallery=gallery,
        extra={**extra, "split": split, "source": "cuhk-03.mat"},
    )


def _find_config(mat_path: Path, subset: str) -> Path:
    name = f"cuhk03_new_protocol_config_{subset}.mat"
    candidates = [mat_path.parent / name, mat_path.parent.parent / name]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(
        f"{NAME}: the new protocol needs {name}; searched " + ", ".join(str(p) for p in candidates)
    )


def load_new_protocol_config(path: Path) -> dict:
    """The new-protocol config as ``{key: flat array}`` with 0-based indices.

    ``filelist`` becomes a list of str; ``train_idx``/``query_idx``/``gallery_idx`` are
    converted to 0-based int arrays; ``labels`` is an int array of global pids.
    """
    from scipy.io import loadmat  # scipy.io: only for the raw .mat release

    try:
        raw = loadmat(path)
    except (NotImplementedError, ValueError, OSError) as err:
        raise DatasetError(f"{NAME}: cannot read new-protocol config {path}: {err}") from None
    missing = [k for k in CONFIG_KEYS if k not in raw]
    if missing:
        raise DatasetError(
            f"{NAME}: new-protocol config {path} lacks {', '.join(missing)}; "
            f"expected keys {', '.join(CONFIG_KEYS)}"
        )
    # loadmat turns a MATLAB cell of strings into an object array of 1-element str arrays.
    filelist = [str(np.asarray(item).ravel()[0]) for item in raw["filelist"].ravel()]
    config = {"filelist": filelist, "labels": raw["labels"].ravel().astype(np.int64)}
    for key in ("train_idx", "query_idx", "gallery_idx"):
        idx = raw[key].ravel().astype(np.int64) - 1
        if idx.size and (idx.min() < 0 or idx.max() >= len(filelist)):
            raise DatasetError(f"{NAME}: {key} in {path} holds indices outside 1..{len(filelist)}")
        config[key] = idx
    if len(config["labels"]) != len(filelist):
        raise DatasetError(
            f"{NAME}: {path} has {len(config['labels'])} labels for {len(filelist)} files"
        )
    return config


def _new_protocol_from_mat(mat_path: Path, subset: str, extra: dict) -> ReIDDataset:
    config_path = _find_config(mat_path, subset)
    config = load_new_protocol_config(config_path)
    image_dir, identities = extract_images(mat_path, subset)
    extracted = {name for _, _, names in identities for name in names}
    filelist, labels = config["filelist"], config["labels"]

    def records(key: str) -> list[ImageRecord]:
        out = []
        for i in config[key]:
            name = filelist[i]
            if name not in extracted:
                raise DatasetError(
                    f"{NAME}: {config_path} lists {name}, which is not an image of "
                    f"{mat_path} ({subset})"
                )
            out.append(ImageRecord(str(image_dir / name), int(labels[i]), _camid(name)))
        return out

    return ReIDDataset(
        name=NAME,
        root=mat_path.parent,
        train=relabel(records("train_idx")),
        query=records("query_idx"),
        gallery=records("gallery_idx"),
        extra={**extra, "source": "cuhk-03.mat"},
    )
