"""Dataset specs: the one way the command line names a dataset.

Three forms, shared by ``train``, ``evaluate``, ``extract`` and ``demo``:

* ``NAME[?option=value&...]`` — a standard dataset (``market1501``, ``Duke``, ``cuhk03``,
  ``MSMT17_V2``, ...) found under the data root, e.g. ``cuhk03?subset=labeled&protocol=new``;
* ``folder:PATH`` — any Market-layout folder or ``path,pid,camid,split`` CSV;
* ``synthetic:DOMAIN[?ids=N&images=K&cameras=C&seed=S&size=HxW]`` — a synthetic domain,
  generated on first use into a cache folder and reused afterwards.

Example::

    >>> ds = resolve_dataset("synthetic:B?ids=60&size=64x32")      # doctest: +SKIP
    >>> ds = resolve_dataset("Duke", data_root="datasets/")         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from crossreid.data.base import ReIDDataset
from crossreid.data.datasets import DATASET_ALIASES, DATASET_NAMES, build_dataset
from crossreid.data.synthetic import (
    DOMAINS,
    SyntheticConfig,
    generate_domain,
    parse_size,
    read_meta,
)
from crossreid.data.synthetic.generator import TEMP_SUFFIX
from crossreid.errors import ConfigError
from crossreid.utils.locks import file_lock

log = logging.getLogger(__name__)

# A temporary generation folder untouched for this long belongs to a killed process.
_STALE_AFTER_S = 600.0

#: Option name in a ``synthetic:`` spec -> SyntheticConfig field.
SYNTHETIC_OPTIONS = {
    "ids": "num_ids",
    "images": "images_per_id",
    "cameras": "num_cameras",
    "seed": "seed",
    "size": "size",
    "train_ids": "train_ids",
}


def accepted_forms() -> str:
    """One line listing the spec forms (used in error messages and help texts)."""
    return (
        f"expected a dataset name ({', '.join(DATASET_NAMES)}, or an alias such as Market, "
        "Duke, MSMT17_V2) optionally followed by ?option=value&..., folder:PATH, or "
        f"synthetic:DOMAIN[?ids=N&images=K&cameras=C&seed=S&size=HxW] with DOMAIN one of "
        f"{', '.join(DOMAINS)}"
    )


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec: ``kind`` is ``"name"``, ``"folder"`` or ``"synthetic"``."""

    text: str
    kind: str
    value: str  # the dataset name, the folder path or the synthetic domain
    options: dict = field(default_factory=dict)
    synthetic: SyntheticConfig | None = None


def _parse_options(text: str, spec: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in filter(None, text.split("&")):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key or not value.strip():
            raise ConfigError(f"dataset spec {spec!r}: option {part!r} is not key=value")
        if key in options:
            raise ConfigError(f"dataset spec {spec!r}: option {key!r} given twice")
        options[key] = value.strip()
    return options


def _int_option(spec: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"dataset spec {spec!r}: {key}={value!r} is not an integer") from None


def parse_spec(spec: str) -> DatasetSpec:
    """Parse and validate a dataset spec without touching the file system.

    Raises:
        ConfigError: the spec has none of the accepted forms, names an unknown dataset or
            domain, or has a malformed or unknown option.
    """
    text = str(spec).strip()
    head, colon, rest = text.partition(":")
    kind = head.strip().lower() if colon else ""
    if kind == "folder":
        if not rest.strip():
            raise ConfigError(f"dataset spec {spec!r} names no folder: expected folder:PATH")
        return DatasetSpec(text, "folder", rest.strip())
    if kind == "synthetic":
        domain, _, query = rest.partition("?")
        options = _parse_options(query, text)
        unknown = sorted(set(options) - set(SYNTHETIC_OPTIONS))
        if unknown:
            raise ConfigError(
                f"dataset spec {spec!r}: unknown option(s) {', '.join(unknown)} "
                f"(synthetic takes {', '.join(SYNTHETIC_OPTIONS)})"
            )
        if not domain.strip():
            raise ConfigError(
                f"dataset spec {spec!r} names no domain: expected synthetic:DOMAIN with "
                f"DOMAIN one of {', '.join(DOMAINS)}"
            )
        kwargs: dict = {"domain": domain.strip()}
        for key, value in options.items():
            field_name = SYNTHETIC_OPTIONS[key]
            kwargs[field_name] = (
                parse_size(value) if key == "size" else _int_option(text, key, value)
            )
        config = SyntheticConfig(**kwargs)
        return DatasetSpec(text, "synthetic", config.domain, options, config)
    if colon:
        raise ConfigError(f"unknown dataset spec {spec!r}: {accepted_forms()}")

    name, _, query = text.partition("?")
    name = name.strip()
    if name.lower() not in DATASET_ALIASES:
        hint = " (to read a folder, write folder:PATH)" if os.sep in name or "." in name else ""
        raise ConfigError(f"unknown dataset spec {spec!r}{hint}: {accepted_forms()}")
    options = {
        k: (_int_option(text, k, v) if v.lstrip("-").isdigit() else v)
        for k, v in _parse_options(query, text).items()
    }
    return DatasetSpec(text, "name", name, options)


def describe_spec(spec: str | DatasetSpec) -> str:
    """A short human description of a spec, for logs."""
    parsed = spec if isinstance(spec, DatasetSpec) else parse_spec(spec)
    if parsed.kind == "folder":
        return f"folder {parsed.value}"
    if parsed.kind == "synthetic":
        c = parsed.synthetic
        assert c is not None
        return (
            f"synthetic domain {c.domain} ({c.num_ids} ids x {c.images_per_id} images, "
            f"{c.num_train_ids} of them for training, {c.num_cameras} cameras, seed {c.seed}, "
            f"{c.size[0]}x{c.size[1]})"
        )
    opts = ", ".join(f"{k}={v}" for k, v in parsed.options.items())
    return f"dataset {parsed.value}" + (f" ({opts})" if opts else "")


def default_cache_dir() -> Path:
    """``$CROSSREID_CACHE``, else ``$XDG_CACHE_HOME/crossreid``, else ``~/.cache/crossreid``."""
    if os.environ.get("CROSSREID_CACHE"):
        return Path(os.environ["CROSSREID_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "crossreid"


def synthetic_root(
    config: SyntheticConfig, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """The cache folder holding ``config``'s dataset, generating it when missing.

    Safe when several processes ask at once: the first takes a lock file and generates
    (into a temporary folder renamed into place, so a half-written dataset never appears
    under the cache name); the others wait for it and reuse its result.

    Raises:
        StorageError: the cache cannot be written (no space, permission, read-only).
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / "synthetic" / config.cache_key()
    if _is_complete(folder, config):
        return folder

    def log_wait() -> None:
        log.info("waiting for another process generating synthetic domain %s", config.domain)

    with file_lock(folder.with_name(f".{folder.name}.lock"), on_wait=log_wait):
        if _is_complete(folder, config):  # the process we waited for made it
            return folder
        _remove_leftovers(folder)
        log.info("generating synthetic domain %s into %s", config.domain, folder)
        generate_domain(config, folder, progress=progress, overwrite=False)
    return folder


def _is_complete(folder: Path, config: SyntheticConfig) -> bool:
    meta = read_meta(folder)  # written last, and the folder appears by an atomic rename
    return meta is not None and meta.get("cache_key") == config.cache_key()


def _last_change(folder: Path) -> float:
    """Newest mtime of ``folder`` and its subfolders (each new file updates its folder's)."""
    times = [folder.stat().st_mtime]
    times += [p.stat().st_mtime for p in folder.iterdir() if p.is_dir()]
    return max(times)


def _remove_leftovers(folder: Path) -> None:
    """Remove what no live generator is using (the caller holds the folder's lock): an
    incomplete folder under the cache name, and temporary folders of killed processes."""
    if folder.exists():  # not a complete dataset of ours (e.g. edited by hand): rebuild it
        log.warning("replacing incomplete synthetic cache folder %s", folder)
        shutil.rmtree(folder, ignore_errors=True)
    for temp in folder.parent.glob(f".{glob.escape(folder.name)}.*{TEMP_SUFFIX}"):
        # A generator that takes no lock (an older crossreid, a direct generate_domain
        # call) may still be filling it: only folders idle for a while are stale.
        with contextlib.suppress(OSError):
            if time.time() - _last_change(temp) > _STALE_AFTER_S:
                shutil.rmtree(temp, ignore_errors=True)


def resolve_dataset(
    spec: str,
    data_root: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> ReIDDataset:
    """Load the dataset a spec names (see the module docstring for the forms).

    Args:
        spec: ``NAME[?opt=val&...]``, ``folder:PATH`` or ``synthetic:DOMAIN[?...]``.
        data_root: where ``NAME`` datasets are looked for (the dataset folder or a parent).
        cache_dir: root of the synthetic cache (default :func:`default_cache_dir`).
        progress: show a progress bar when a synthetic domain has to be generated.

    Returns:
        A :class:`ReIDDataset` named after the spec; for a synthetic spec its ``extra``
        holds ``"synthetic"``: the generator's meta (without per-identity attributes).

    Raises:
        ConfigError: a malformed spec, or ``NAME`` without a data root.
        DatasetError: the dataset's folders or files are missing or malformed.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "name":
        if data_root is None:
            raise ConfigError(
                f"dataset {parsed.value!r} is looked for under a data root: pass --data-root "
                "DIR (the folder holding it), or use folder:PATH"
            )
        return build_dataset(parsed.value, data_root, **parsed.options)
    if parsed.kind == "folder":
        return build_dataset("custom", Path(parsed.value).expanduser())
    assert parsed.synthetic is not None
    folder = synthetic_root(parsed.synthetic, cache_dir, progress)
    dataset = build_dataset("custom", folder)
    meta = read_meta(folder) or {}
    dataset.name = f"synthetic:{parsed.synthetic.domain}"
    dataset.extra["synthetic"] = {k: v for k, v in meta.items() if k != "identities"}
    return dataset
