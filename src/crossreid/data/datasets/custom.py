"""Your own data: a folder in Market-1501 layout, or a CSV file.

* **Folder**: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with Market-style
  names ``PID_cCAM...`` (``0007_c2_anything.jpg``; camera 1-based in the name).
* **CSV**: a header row ``path,pid,camid[,split]`` (column order free, extra columns
  ignored), then one image per row. ``path`` is relative to the CSV's folder (absolute paths
  are kept), ``pid`` an integer (``-1`` marks junk and is dropped), ``camid`` a 0-based
  integer camera id, ``split`` one of ``train``, ``query``, ``gallery``.

  The ``split`` column is optional in the file format — :func:`read_records_csv` puts every
  row of a CSV without it into ``train``, which is what an unlabelled or source-only image
  list needs — but :func:`build` requires it, because a dataset must have query and
  gallery images and guessing a split would silently change evaluation results.

``root`` may be the folder, the CSV file, or a folder holding exactly one ``.csv`` file.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from crossreid.data.base import ImageRecord, ReIDDataset, relabel
from crossreid.data.datasets._common import build_market_layout, has_market_layout
from crossreid.errors import DatasetError

NAME = "custom"
SPLITS = ("train", "query", "gallery")
CSV_HEADER = "path,pid,camid[,split]"


def read_records_csv(
    csv_path: str | os.PathLike, *, require_split: bool = False
) -> dict[str, list[ImageRecord]]:
    """Records of a ``path,pid,camid[,split]`` CSV grouped by split (pids as written).

    Without a ``split`` column every row goes to ``"train"``, unless ``require_split``.

    Raises:
        DatasetError: the file is unreadable, columns are missing, a row is malformed, or
            a listed image does not exist (the message names the CSV and the line).
    """
    csv_path = Path(csv_path).expanduser().resolve()
    base = csv_path.parent
    grouped: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    try:
        handle = open(csv_path, newline="", encoding="utf-8")
    except OSError as err:
        raise DatasetError(f"{NAME}: cannot read CSV {csv_path}: {err.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ("path", "pid", "camid") if c not in header]
        if missing:
            found = ",".join(header) if header else "an empty file"
            raise DatasetError(
                f"{NAME}: CSV {csv_path} lacks column(s) {', '.join(missing)}: expected the "
                f"header {CSV_HEADER}, found {found}"
            )
        if require_split and "split" not in header:
            raise DatasetError(
                f"{NAME}: CSV {csv_path} has no split column, so it defines no query and "
                "gallery: expected the header path,pid,camid,split with split train, query "
                "or gallery"
            )
        col = {n: header.index(n) for n in ("path", "pid", "camid", "split") if n in header}
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            where = f"{csv_path}:{reader.line_num}"
            if len(row) < len(header):
                raise DatasetError(
                    f"{NAME}: {where}: expected {len(header)} fields ({','.join(header)}), "
                    f"got {len(row)}"
                )
            try:
                pid, camid = int(row[col["pid"]]), int(row[col["camid"]])
            except ValueError:
                raise DatasetError(
                    f"{NAME}: {where}: pid and camid must be integers, got "
                    f"{row[col['pid']]!r} and {row[col['camid']]!r}"
                ) from None
            if camid < 0:
                raise DatasetError(f"{NAME}: {where}: camid must be 0-based (>= 0), got {camid}")
            split = row[col["split"]].strip().lower() if "split" in col else "train"
            if split not in SPLITS:
                raise DatasetError(
                    f"{NAME}: {where}: split must be train, query or gallery, got {split!r}"
                )
            path = row[col["path"]].strip()
            if not path:
                raise DatasetError(f"{NAME}: {where}: empty path")
            if pid == -1:
                continue
            grouped[split].append(ImageRecord(str(base / path), pid, camid))
    missing_files = [r.path for rs in grouped.values() for r in rs if not os.path.isfile(r.path)]
    if missing_files:
        raise DatasetError(
            f"{NAME}: {len(missing_files)} image(s) listed in {csv_path} do not exist, "
            f"first {missing_files[0]}"
        )
    return grouped


def _csv_dataset(csv_path: Path) -> ReIDDataset:
    grouped = read_records_csv(csv_path, require_split=True)
    return ReIDDataset(
        name=NAME,
        root=csv_path,
        train=relabel(grouped["train"]),
        query=grouped["query"],
        gallery=grouped["gallery"],
        extra={"source": "csv"},
    )


def build(root: str | os.PathLike) -> ReIDDataset:
    """A dataset from a Market-layout folder or a ``path,pid,camid,split`` CSV at ``root``."""
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"{NAME}: dataset root {root} does not exist")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(
                f"{NAME}: {root} is a file but not a .csv; expected a Market-layout folder "
                f"or a CSV with header {CSV_HEADER}"
            )
        return _csv_dataset(root)
    if has_market_layout(root):
        return build_market_layout(NAME, root, source="folder")
    csvs = sorted(p for p in root.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    if len(csvs) == 1:
        return _csv_dataset(csvs[0])
    if len(csvs) > 1:
        raise DatasetError(
            f"{NAME}: {root} holds several CSV files ({', '.join(p.name for p in csvs)}); "
            "pass the one to use"
        )
    raise DatasetError(
        f"{NAME}: {root} holds neither bounding_box_train/, query/, bounding_box_test/ "
        f"nor a CSV file with header {CSV_HEADER}"
    )
