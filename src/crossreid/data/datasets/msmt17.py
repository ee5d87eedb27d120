"""MSMT17 (Wei et al., CVPR 2018), versions V1 and V2.

Layout (V1): ``MSMT17_V1/`` with ``train/``, ``test/`` and the lists ``list_train.txt``,
``list_val.txt``, ``list_query.txt``, ``list_gallery.txt``. V2 (faces blurred) is the same
with the image folders named ``mask_train_v2/`` and ``mask_test_v2/``. Each list line is
``relative/path.jpg PID`` (path relative to the train or test folder); the camera is the
third field of the file name, 1-based: ``0000_000_01_0303morning_0015_0.jpg`` is camera 1.

The training set is ``list_train`` + ``list_val`` (the official 1041 ids / 32621 images),
relabelled together; query and gallery keep the pids of their lists.

Official statistics (ids/images): train 1041/32621, query 3060/11659, gallery 3060/82161;
15 cameras.
"""

from __future__ import annotations

import os
from pathlib import Path

from crossreid.data.base import ImageRecord, ReIDDataset, relabel
from crossreid.data.datasets._common import child_dirs, resolve_root
from crossreid.errors import ConfigError, DatasetError

NAME = "msmt17"
FOLDER_NAMES = ("MSMT17_V1", "MSMT17_V2", "msmt17", "MSMT17")
#: version -> (train image folder, test image folder)
VERSION_DIRS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
LIST_FILES = {
    "train": "list_train.txt",
    "val": "list_val.txt",
    "query": "list_query.txt",
    "gallery": "list_gallery.txt",
}
NAME_PATTERN = "PID_INDEX_CAM_..., e.g. 0000_000_01_0303morning_0015_0.jpg"
EXPECTED = (
    "a folder holding train/ and test/ (V1) or mask_train_v2/ and mask_test_v2/ (V2) "
    "with list_train.txt, list_val.txt, list_query.txt, list_gallery.txt"
)


def _looks_like(folder: Path) -> bool:
    if any((folder / f).is_file() for f in LIST_FILES.values()):
        return True
    children = child_dirs(folder)
    return any(all(d in children for d in dirs) for dirs in VERSION_DIRS.values())


def _image_dirs(folder: Path, version: str | None) -> tuple[str, Path, Path]:
    """(version, train folder, test folder) of the dataset folder, found case-insensitively."""
    children = child_dirs(folder)
    versions = [version] if version else list(VERSION_DIRS)
    for v in versions:
        train_name, test_name = VERSION_DIRS[v]
        if train_name in children and test_name in children:
            return v, children[train_name], children[test_name]
    wanted = " or ".join(f"{VERSION_DIRS[v][0]}/ and {VERSION_DIRS[v][1]}/" for v in versions)
    raise DatasetError(f"{NAME}: image folders missing in {folder}: expected {wanted}")


def read_list(list_path: Path, image_dir: Path) -> list[ImageRecord]:
    """Records of one MSMT17 list file; paths are joined to ``image_dir``.

    Raises:
        DatasetError: the list is missing, a line is malformed, a file name cannot be
            parsed, or a listed image does not exist.
    """
    if not list_path.is_file():
        raise DatasetError(f"{NAME}: list file {list_path} is missing")
    records = []
    with open(list_path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DatasetError(
                    f"{NAME}: {list_path}:{lineno}: expected 'relative/path.jpg PID', "
                    f"got {line.strip()!r}"
                )
            relative, pid = fields[0], int(fields[1])
            name_fields = os.path.basename(relative).split("_")
            if len(name_fields) < 3 or not name_fields[2].isdigit() or int(name_fields[2]) < 1:
                raise DatasetError(
                    f"{NAME}: {list_path}:{lineno}: cannot parse the camera from image name "
                    f"{relative!r}: expected {NAME_PATTERN}"
                )
            records.append(ImageRecord(str(image_dir / relative), pid, int(name_fields[2]) - 1))
    missing = [r.path for r in records if not os.path.isfile(r.path)]
    if missing:
        raise DatasetError(
            f"{NAME}: {len(missing)} image(s) listed in {list_path} do not exist, "
            f"first {missing[0]}"
        )
    return records


def build(root: str | os.PathLike, *, version: str | None = None) -> ReIDDataset:
    """MSMT17 found at ``root``.

    Args:
        root: the ``MSMT17_V1``/``MSMT17_V2`` folder or a parent of it.
        version: ``"V1"``, ``"V2"`` or ``None`` to detect it from the folder names.
    """
    if version is not None:
        version = version.upper()
        if version not in VERSION_DIRS:
            raise ConfigError(f"{NAME}: unknown version {version!r}, expected V1 or V2")
    names = FOLDER_NAMES
    if version == "V2":  # prefer MSMT17_V2 when a parent holds both versions
        names = ("MSMT17_V2", "MSMT17_V1", "msmt17", "MSMT17")
    folder = resolve_root(root, names, _looks_like, NAME, EXPECTED)
    version, train_dir, test_dir = _image_dirs(folder, version)
    train = read_list(folder / LIST_FILES["train"], train_dir)
    train += read_list(folder / LIST_FILES["val"], train_dir)
    return ReIDDataset(
        name=NAME,
        root=folder,
        train=relabel(train),
        query=read_list(folder / LIST_FILES["query"], test_dir),
        gallery=read_list(folder / LIST_FILES["gallery"], test_dir),
        extra={"version": version},
    )
