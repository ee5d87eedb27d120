"""The features file (``.npz``): its keys, and the one reader and writer of it.

``crossreid extract --dataset`` writes a *query/gallery* file (:data:`QUERY_GALLERY_KEYS`:
``qf, gf`` float32 ``[Q, D]`` / ``[G, D]``, ``q_pids, g_pids, q_camids, g_camids`` int64,
``q_paths, g_paths`` str); ``crossreid extract --images`` writes an *images* file
(:data:`IMAGES_KEYS`: ``features, paths, pids, camids``). ``crossreid evaluate --features``
reads the first kind, ``crossreid search --index`` either (the gallery of the first).

Example::

    >>> save_features_file("feats.npz", arrays)                  # doctest: +SKIP
    >>> arrays = load_features_file("feats.npz")                 # doctest: +SKIP
    >>> arrays["qf"].shape                                       # doctest: +SKIP
    (3368, 2048)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crossreid.errors import ConfigError, EvaluationError
from crossreid.utils.io import atomic_write

__all__ = [
    "EVALUATION_KEYS",
    "IMAGES_KEYS",
    "QUERY_GALLERY_KEYS",
    "gallery_arrays",
    "images_arrays",
    "load_features_file",
    "query_gallery_arrays",
    "save_features_file",
    "save_npz_atomic",
]

#: What evaluation needs: features, identities and cameras of query and gallery.
EVALUATION_KEYS = ("qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids")
#: A query/gallery features file: :data:`EVALUATION_KEYS` plus the image paths.
QUERY_GALLERY_KEYS = (*EVALUATION_KEYS, "q_paths", "g_paths")
#: An images features file (``crossreid extract --images``).
IMAGES_KEYS = ("features", "paths", "pids", "camids")


def _arrays(features, pids, camids, paths) -> tuple[np.ndarray, ...]:
    return (
        np.ascontiguousarray(features, dtype=np.float32),
        np.asarray(pids, dtype=np.int64),
        np.asarray(camids, dtype=np.int64),
        np.asarray(paths, dtype=str),
    )


def query_gallery_arrays(query, gallery) -> dict[str, np.ndarray]:
    """The :data:`QUERY_GALLERY_KEYS` arrays of two extraction results (``features, pids,
    camids, paths`` each, e.g. :class:`~crossreid.inference.ExtractedFeatures`)."""
    arrays: dict[str, np.ndarray] = {}
    for prefix, result in (("q", query), ("g", gallery)):
        features, pids, camids, paths = _arrays(
            result.features, result.pids, result.camids, result.paths
        )
        arrays.update(
            {
                f"{prefix}f": features,
                f"{prefix}_pids": pids,
                f"{prefix}_camids": camids,
                f"{prefix}_paths": paths,
            }
        )
    return arrays


def images_arrays(result) -> dict[str, np.ndarray]:
    """The :data:`IMAGES_KEYS` arrays of one extraction result."""
    features, pids, camids, paths = _arrays(
        result.features, result.pids, result.camids, result.paths
    )
    return {"features": features, "paths": paths, "pids": pids, "camids": camids}


def save_npz_atomic(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """``np.savez`` to a temporary file beside ``path``, then rename it over ``path``, so an
    existing file is never left half-written; a full disk, missing permission or read-only
    file system is a one-line :class:`~crossreid.errors.StorageError`."""
    path = Path(path)
    size = sum(np.asarray(array).nbytes for array in arrays.values())
    with atomic_write(path, "wb", suffix=".npz", expected_size=size) as stream:
        np.savez(stream, **arrays)
    return path


def save_features_file(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a features file atomically; ``arrays`` must be one of the two kinds.

    Raises:
        EvaluationError: the arrays are neither a query/gallery nor an images set.
    """
    keys = set(arrays)
    if not (keys >= set(QUERY_GALLERY_KEYS) or keys >= set(IMAGES_KEYS)):
        raise EvaluationError(
            f"features to save must hold {', '.join(QUERY_GALLERY_KEYS)} or "
            f"{', '.join(IMAGES_KEYS)}; got {', '.join(sorted(keys))}"
        )
    return save_npz_atomic(path, arrays)


def _open(path: Path):
    if not path.is_file():
        raise EvaluationError(f"features file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile/format errors from np.load
        raise EvaluationError(f"cannot read {path} as a .npz features file: {err}") from None


def load_features_file(
    path: str | os.PathLike[str], *, keys: tuple[str, ...] = EVALUATION_KEYS, paths: bool = False
) -> dict[str, np.ndarray]:
    """The ``keys`` arrays of a query/gallery features file (plus ``q_paths, g_paths`` when
    ``paths`` and they are present).

    Raises:
        EvaluationError: the file is missing, unreadable, or lacks one of ``keys``.
    """
    path = Path(path)
    with _open(path) as data:
        missing = [key for key in keys if key not in data.files]
        if missing:
            raise EvaluationError(
                f"{path} lacks {', '.join(missing)}; expected arrays {', '.join(keys)}"
            )
        wanted = list(keys)
        if paths:
            wanted += [key for key in ("q_paths", "g_paths") if key in data.files]
        try:
            return {key: data[key] for key in wanted}
        except Exception as err:  # a corrupt member, or an object array
            raise EvaluationError(f"cannot read {path} as a .npz features file: {err}") from None


def gallery_arrays(
    path: str | os.PathLike[str], data: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, list[str] | None, np.ndarray | None, np.ndarray | None]:
    """``(features, paths, pids, camids)`` of the gallery of an open features file: ``gf``…
    of a query/gallery file, or ``features``… of an images file (missing columns: ``None``).

    Raises:
        ConfigError: the file is neither kind.
    """
    files = list(getattr(data, "files", data))
    if "gf" in files:
        keys = ("gf", "g_paths", "g_pids", "g_camids")
    elif "features" in files:
        keys = IMAGES_KEYS
    else:
        raise ConfigError(
            f"{path} is neither a crossreid index nor an extract output "
            f"(no 'faiss_index', 'gf' or 'features' entry; it has {', '.join(files)})"
        )
    features = data[keys[0]]
    paths = [str(p) for p in data[keys[1]]] if keys[1] in files else None
    pids = data[keys[2]] if keys[2] in files else None
    camids = data[keys[3]] if keys[3] in files else None
    return features, paths, pids, camids
