"""Generate a synthetic re-ID domain in Market-1501 layout.

Everything is drawn from numpy Generators seeded by tuples such as
``(seed, domain, "image", pid, index)``, so an image depends only on those values, never on
generation order, dictionaries or time: the same :class:`SyntheticConfig` always writes
byte-identical files.

Split (Market-like): identities are shuffled and halved into train and test ids. Each
identity visits 2..C cameras (at least one image in each). For a test identity one image
per camera is taken as a query for all of its cameras but one (chosen at random), so
every query has a true match in another camera of the gallery; the rest goes to the gallery, together with a few distractor crops (pid 0000:
background or a badly cropped, unknown person).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from crossreid.data.synthetic.people import Identity, Pose, draw_person, ellipse, sample_identity
from crossreid.data.synthetic.styles import (
    DOMAINS,
    VIEWS,
    CameraStyle,
    render_background,
    sample_camera_style,
)
from crossreid.errors import ConfigError, DatasetError
from crossreid.utils.io import make_folder, storage_error

#: Bumped whenever the images a config produces change, so stale caches are not reused.
GENERATOR_VERSION = 3

META_FILE = "meta.json"
#: Ending of the folder a domain is generated into before it is renamed into place.
TEMP_SUFFIX = ".tmp"
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

# Seed streams: one per kind of random decision.
_IDENTITY, _CAMERA, _IMAGE, _SPLIT, _DISTRACTOR, _VISITS, _PREVIEW, _BACKGROUND, _NOISE = range(
    1, 10
)
_OCCLUSION_P = 0.15  # the same in every domain: occlusion is not a camera style
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_TONE_LEVELS = 4096


def parse_size(text: str) -> tuple[int, int]:
    """``"128x64"`` → ``(128, 64)`` (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if match is None:
        raise ConfigError(f"image size {text!r} is not HEIGHTxWIDTH, e.g. 128x64")
    return int(match.group(1)), int(match.group(2))


def _domain_code(domain: str) -> int:
    return zlib.crc32(domain.encode("utf-8"))


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. ``size`` is (height, width) in pixels.

    Example::

        >>> SyntheticConfig(domain="B", num_ids=60, images_per_id=10).cache_key()
        'B-ids60-img10-cam4-seed0-128x64-v3'
    """

    domain: str = "A"
    num_ids: int = 100
    images_per_id: int = 12
    num_cameras: int = 4
    seed: int = 0
    size: tuple[int, int] = (128, 64)
    #: Identities of the training split (default: half of ``num_ids``, rounded up); the
    #: others make the query/gallery, so a large test set can go with a small training set.
    train_ids: int | None = None

    def __post_init__(self) -> None:
        domain = str(self.domain).strip().upper()
        if domain not in DOMAINS:
            raise ConfigError(
                f"unknown synthetic domain {self.domain!r}: expected one of {', '.join(DOMAINS)}"
            )
        object.__setattr__(self, "domain", domain)
        size = parse_size(self.size) if isinstance(self.size, str) else tuple(self.size)
        if len(size) != 2:
            raise ConfigError(f"image size {self.size!r} is not (height, width)")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        checks = [
            ("number of identities", self.num_ids, 2, 9999),
            ("images per identity", self.images_per_id, 2, 999_999),
            ("number of cameras", self.num_cameras, 2, 99),
            ("image height", self.size[0], 16, 1024),
            ("image width", self.size[1], 8, 1024),
            ("seed", self.seed, 0, 2**63 - 1),
        ]
        if self.train_ids is not None:
            checks.append(("training identities", self.train_ids, 1, self.num_ids - 1))
        for what, value, low, high in checks:
            if not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise ConfigError(f"{what} {value!r} out of range: expected {low}..{high}")

    def cache_key(self) -> str:
        """A stable folder name for this config (includes the generator version)."""
        h, w = self.size
        return (
            f"{self.domain}-ids{self.num_ids}-img{self.images_per_id}-cam{self.num_cameras}"
            f"-seed{self.seed}-{h}x{w}"
            + (f"-train{self.train_ids}" if self.train_ids is not None else "")
            + f"-v{GENERATOR_VERSION}"
        )

    @property
    def num_train_ids(self) -> int:
        return self.train_ids if self.train_ids is not None else (self.num_ids + 1) // 2

    def to_json(self) -> dict:
        return {
            "domain": self.domain,
            "num_ids": self.num_ids,
            "images_per_id": self.images_per_id,
            "num_cameras": self.num_cameras,
            "seed": self.seed,
            "size": list(self.size),
            **({"train_ids": self.train_ids} if self.train_ids is not None else {}),
        }


@dataclass(frozen=True)
class ImageJob:
    """One file to write: its split, pid (0 = distractor), 1-based camera and index."""

    split: str
    pid: int
    camera: int
    index: int

    @property
    def filename(self) -> str:
        return f"{self.pid:04d}_c{self.camera}s1_{self.index:06d}_00.jpg"

    @property
    def relpath(self) -> str:
        return f"{SPLIT_DIRS[self.split]}/{self.filename}"


@dataclass
class SplitPlan:
    train_pids: list[int]
    test_pids: list[int]
    jobs: list[ImageJob] = field(default_factory=list)


def plan_split(config: SyntheticConfig) -> SplitPlan:
    """Decide every file of the dataset (no rendering)."""
    base = [config.seed, _domain_code(config.domain)]
    n, k, c = config.num_ids, config.images_per_id, config.num_cameras
    order = np.random.default_rng([*base, _SPLIT]).permutation(np.arange(1, n + 1))
    n_train = config.num_train_ids
    plan = SplitPlan(
        sorted(int(p) for p in order[:n_train]), sorted(int(p) for p in order[n_train:])
    )
    test = set(plan.test_pids)
    for pid in range(1, n + 1):
        rng = np.random.default_rng([*base, _VISITS, pid])
        n_cams = int(min(c, k, rng.integers(2, c + 1)))
        cams = np.sort(rng.choice(np.arange(1, c + 1), size=n_cams, replace=False))
        per_image = np.sort(np.concatenate([cams, rng.choice(cams, size=k - n_cams)]))
        query_cams: set[int] = set()
        if pid in test:  # one camera stays gallery-only: every query has a true match
            gallery_only = int(rng.choice(cams))
            query_cams = {int(q) for q in cams if q != gallery_only}
        for index, cam in enumerate(per_image.tolist()):
            if pid not in test:
                split = "train"
            elif cam in query_cams:
                split = "query"
                query_cams.discard(cam)  # the first image of that camera only
            else:
                split = "gallery"
            plan.jobs.append(ImageJob(split, pid, int(cam), index))
    num_distractors = max(1, len(plan.test_pids) // 5)
    for i in range(num_distractors):
        rng = np.random.default_rng([*base, _DISTRACTOR, i])
        plan.jobs.append(ImageJob("gallery", 0, int(rng.integers(1, c + 1)), i))
    return plan


class DomainRenderer:
    """Renders images of one config; caches identities, camera styles and backgrounds."""

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self._base = [config.seed, _domain_code(config.domain)]
        h, w = config.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.xx, self.yy = xx + 0.5, yy + 0.5  # pixel centres
        self._identities: dict[int, Identity] = {}
        self._cameras: dict[int, CameraStyle] = {}
        self._backgrounds: dict[int, np.ndarray] = {}
        self._light: dict[int, np.ndarray] = {}
        self._tone: dict[int, np.ndarray] = {}
        self._noise: np.ndarray | None = None

    def identity(self, pid: int) -> Identity:
        if pid not in self._identities:
            rng = np.random.default_rng([*self._base, _IDENTITY, pid])
            self._identities[pid] = sample_identity(rng, pid)
        return self._identities[pid]

    def camera(self, camera: int) -> CameraStyle:
        if camera not in self._cameras:
            rng = np.random.default_rng([*self._base, _CAMERA, camera])
            # Cameras take the domain's scene kinds in turn (from a seeded offset) so a
            # network shows several of them.
            offset = int(np.random.default_rng([*self._base, _CAMERA, 0]).integers(1000))
            self._cameras[camera] = sample_camera_style(
                rng, self.config.domain, camera, scene_index=offset + camera
            )
        return self._cameras[camera]

    def _background(self, camera: int) -> np.ndarray:
        if camera not in self._backgrounds:
            h, w = self.config.size
            rng = np.random.default_rng([*self._base, _BACKGROUND, camera])
            kind = self.camera(camera).background
            self._backgrounds[camera] = render_background(rng, kind, h + h // 4, 2 * w)
        return self._backgrounds[camera]

    def _illumination(self, camera: int) -> np.ndarray:
        """Per-pixel, per-channel gain of a camera: light level, gradient and cast, (H, W, 3)."""
        if camera not in self._light:
            style = self.camera(camera)
            h, w = self.config.size
            d = (self.xx - w / 2) * np.cos(style.light_angle) + (self.yy - h / 2) * np.sin(
                style.light_angle
            )
            grad = style.gain * (1.0 + 2.0 * style.light_gradient * d / max(h, w))
            cast = np.asarray(style.cast, np.float32)
            self._light[camera] = (grad[..., None] * cast).astype(np.float32)
        return self._light[camera]

    def _noise_bank(self) -> np.ndarray:
        """Unit-variance sensor noise, (2H, 2W, 3): a luminance part shared by the channels
        plus an independent chroma part."""
        if self._noise is None:
            h, w = self.config.size
            rng = np.random.default_rng([*self._base, _NOISE])
            n = rng.standard_normal((2 * h, 2 * w, 4), dtype=np.float32)
            self._noise = n[..., :1] * 0.8 + n[..., 1:] * 0.6
        return self._noise

    def _tone_curve(self, camera: int) -> np.ndarray:
        """The camera's gamma, contrast and black level as a lookup table.

        Maps ``round(v * (TONE_LEVELS - 1))`` for v in [0, 1] to 0..255 (float32).
        """
        if camera not in self._tone:
            style = self.camera(camera)
            v = np.linspace(0.0, 1.0, _TONE_LEVELS, dtype=np.float64) ** style.gamma
            out = np.clip(style.lift + v * (style.contrast * (1.0 - style.lift)), 0.0, 1.0)
            self._tone[camera] = (out * 255.0).astype(np.float32)
        return self._tone[camera]

    def render(self, pid: int, camera: int, rng: np.random.Generator) -> Image.Image:
        """One image of ``pid`` (0: a distractor) seen by ``camera``."""
        h, w = self.config.size
        xx, yy = self.xx, self.yy
        style = self.camera(camera)
        bg = self._background(camera)
        oy = int(rng.integers(0, bg.shape[0] - h + 1))
        ox = int(rng.integers(0, bg.shape[1] - w + 1))
        img = bg[oy : oy + h, ox : ox + w].copy()
        view = VIEWS[int(rng.choice(4, p=style.view_probs))]
        phase = float(rng.uniform(0, 2 * np.pi))
        if pid > 0:
            ident = self.identity(pid)
            ph = h * float(rng.uniform(0.8, 0.93)) * ident.height
            top = (h - ph) * float(rng.uniform(0.15, 0.85))
            cx = w * (0.5 + float(rng.uniform(-0.1, 0.1)))
            show_person = True
        else:  # distractor: a detector false positive
            ident = sample_identity(rng, 0)
            ph = h * float(rng.uniform(1.6, 2.8))
            top = -ph * float(rng.uniform(0.1, 0.6))
            cx = w * float(rng.uniform(0.1, 0.9))
            show_person = bool(rng.random() < 0.6)
        if show_person:
            pose = Pose(view=view, phase=phase, cx=cx, top=top, height=ph)
            shadow = ellipse(xx, yy, cx, top + 0.975 * ph, 0.17 * ph * ident.build, 0.03 * ph)
            img *= (1.0 - 0.35 * np.clip(0.5 - shadow / (0.02 * ph), 0.0, 1.0))[..., None]
            rgb, alpha = draw_person(xx, yy, ident, pose)
            img = img * (1.0 - alpha)[..., None] + rgb
        if rng.random() < _OCCLUSION_P:
            self._occlude(img, rng)
        return self._camera_response(img, camera, rng)

    def _occlude(self, img: np.ndarray, rng: np.random.Generator) -> None:
        h, w, _ = img.shape
        colour = np.clip(rng.uniform(0.1, 0.8) + rng.uniform(-0.15, 0.15, 3), 0, 1)
        kind = int(rng.integers(3))
        if kind == 0:  # something low in front: bench, car, luggage
            y0 = int(h * rng.uniform(0.65, 0.82))
            x0, x1 = sorted(int(v) for v in rng.uniform(-0.3, 1.3, 2) * w)
            img[y0:, max(0, x0) : max(0, x1)] = colour
        elif kind == 1:  # a pole or pillar
            x0 = int(w * rng.uniform(0.0, 0.85))
            img[:, x0 : x0 + max(1, int(w * rng.uniform(0.08, 0.18)))] = colour
        else:  # a passer-by at the crop's edge
            cx = 0.0 if rng.random() < 0.5 else float(w)
            sdf = ellipse(self.xx, self.yy, cx, h * rng.uniform(0.4, 0.6), 0.28 * w, 0.45 * h)
            a = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
            img *= 1.0 - a
            img += a * colour

    def _camera_response(
        self, img: np.ndarray, camera: int, rng: np.random.Generator
    ) -> Image.Image:
        """Light, colour response, optics and sensor of ``camera`` applied to a scene."""
        style = self.camera(camera)
        h = self.config.size[0]
        img = img * (self._illumination(camera) * float(rng.uniform(0.94, 1.06)))
        lum = img @ _LUMA
        img *= style.saturation
        img += ((1.0 - style.saturation) * lum)[..., None]
        levels = (np.clip(img, 0.0, 1.0) * (_TONE_LEVELS - 1) + 0.5).astype(np.intp)
        img = self._tone_curve(camera)[levels]
        sigma = style.blur * h / 128.0
        if sigma > 0.05:
            pil = Image.fromarray((img + 0.5).astype(np.uint8))
            img = np.asarray(pil.filter(ImageFilter.GaussianBlur(sigma)), np.float32)
        # Sensor noise: a random window of a pre-drawn noise field (drawing fresh normals
        # for every image would cost as much as rendering the person).
        bank = self._noise_bank()
        oy = int(rng.integers(0, bank.shape[0] - img.shape[0] + 1))
        ox = int(rng.integers(0, bank.shape[1] - img.shape[1] + 1))
        window = bank[oy : oy + img.shape[0], ox : ox + img.shape[1]]
        img = img + window * (style.noise * 255.0)
        return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))

    def encode(self, image: Image.Image, camera: int) -> bytes:
        """JPEG bytes at the camera's fixed quality."""
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=self.camera(camera).jpeg_quality)
        return buf.getvalue()

    def image_bytes(self, job: ImageJob) -> bytes:
        """The JPEG file of one planned image."""
        if job.pid > 0:
            rng = np.random.default_rng([*self._base, _IMAGE, job.pid, job.index])
        else:
            rng = np.random.default_rng([*self._base, _DISTRACTOR, job.index])
            rng.integers(1, self.config.num_cameras + 1)  # the camera draw of plan_split
        return self.encode(self.render(job.pid, job.camera, rng), job.camera)


def _counts(jobs: Sequence[ImageJob]) -> dict[str, dict[str, int]]:
    """Split statistics as :meth:`ReIDDataset.statistics` reports them (pid 0 counts)."""
    out = {}
    for split in ("train", "query", "gallery"):
        sel = [j for j in jobs if j.split == split]
        out[split] = {
            "ids": len({j.pid for j in sel}),
            "images": len(sel),
            "cameras": len({j.camera for j in sel}),
        }
    return out


def build_meta(config: SyntheticConfig, plan: SplitPlan, renderer: DomainRenderer) -> dict:
    """The ``meta.json`` content of a generated domain."""
    return {
        "generator": "crossreid.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "cache_key": config.cache_key(),
        **config.to_json(),
        "description": DOMAINS[config.domain].description,
        "counts": _counts(plan.jobs),
        "distractors": sum(1 for j in plan.jobs if j.pid == 0),
        "train_pids": plan.train_pids,
        "test_pids": plan.test_pids,
        "cameras": [renderer.camera(c).to_json() for c in range(1, config.num_cameras + 1)],
        "identities": {
            str(p): renderer.identity(p).to_json() for p in range(1, config.num_ids + 1)
        },
    }


def read_meta(root: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a generated domain, or None when ``root`` is not one."""
    path = Path(root) / META_FILE
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return (
        meta
        if isinstance(meta, dict) and meta.get("generator") == "crossreid.data.synthetic"
        else None
    )


def generate_domain(
    config: SyntheticConfig,
    out_dir: str | os.PathLike,
    progress: bool = True,
    overwrite: bool = True,
) -> dict:
    """Write ``config``'s dataset to ``out_dir`` in Market-1501 layout; return its meta.

    The dataset is written into a temporary folder beside ``out_dir`` and renamed into
    place, so no reader ever sees half a dataset. With ``overwrite=False`` an existing
    generated dataset at ``out_dir`` (for instance one a concurrent process finished
    first) is kept and its meta returned. With ``overwrite=True`` a previously generated
    dataset is replaced, but a non-empty folder that is not one is refused.

    Raises:
        DatasetError: ``out_dir`` is a non-empty folder that is not a generated dataset.
        StorageError: no space (with the size needed), permission or read-only file
            system; nothing is left behind but what ``out_dir`` held before.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        existing = read_meta(out_dir)
        if existing is not None and not overwrite:
            return existing
        if existing is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise DatasetError(
                f"refusing to write synthetic data into {out_dir}: it exists and is not an "
                "empty folder or a previous synthetic dataset"
            )
    make_folder(out_dir.parent)
    try:
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=TEMP_SUFFIX, dir=out_dir.parent)
        )
    except OSError as exc:
        raise (storage_error(exc, out_dir, folder=True) or exc) from None
    try:
        try:
            meta = _write_tree(config, tmp, progress)
            os.chmod(tmp, 0o755)
        except OSError as exc:
            error = storage_error(exc, out_dir, needed=_estimated_size(config, tmp))
            if error is None:
                raise
            raise error from None
        return _move_into_place(tmp, out_dir, meta, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _estimated_size(config: SyntheticConfig, partial: Path) -> int | None:
    """Bytes the whole dataset needs, extrapolated from the images written so far."""
    sizes = [p.stat().st_size for p in partial.rglob("*.jpg") if p.is_file()]
    if not sizes:
        return None
    return sum(sizes) * len(plan_split(config).jobs) // len(sizes)


def _write_tree(config: SyntheticConfig, root: Path, progress: bool) -> dict:
    plan = plan_split(config)
    renderer = DomainRenderer(config)
    for folder in SPLIT_DIRS.values():
        (root / folder).mkdir()
    bar = tqdm(
        plan.jobs,
        desc=f"synth {config.domain}",
        unit="img",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    for job in bar:
        (root / job.relpath).write_bytes(renderer.image_bytes(job))
    meta = build_meta(config, plan, renderer)
    text = json.dumps(meta, indent=1, sort_keys=True) + "\n"
    (root / META_FILE).write_text(text, encoding="utf-8")
    return meta


def _move_into_place(tmp: Path, out_dir: Path, meta: dict, overwrite: bool) -> dict:
    try:
        os.rename(tmp, out_dir)  # atomic; fails if out_dir appeared and is not empty
        return meta
    except OSError as exc:
        error = storage_error(exc, out_dir)
        if error is not None:
            raise error from None
        if not overwrite:
            existing = read_meta(out_dir)
            if existing is not None:  # another process won the race: use its result
                return existing
            raise DatasetError(f"could not move generated data into {out_dir}") from None
    trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex}"
    try:
        os.rename(out_dir, trash)
        os.rename(tmp, out_dir)
    except OSError as exc:
        raise (storage_error(exc, out_dir) or exc) from None
    shutil.rmtree(trash, ignore_errors=True)
    return meta


# --------------------------------------------------------------------------------------
# Contact sheets

_NAME = re.compile(r"^(\d+)_c(\d+)")


def _cells_from_folder(root: Path, num_ids: int) -> tuple[dict, list[int], int, str]:
    files: dict[tuple[int, int], Path] = {}
    for folder in SPLIT_DIRS.values():
        for path in sorted((root / folder).glob("*.jpg")):
            m = _NAME.match(path.name)
            if m and int(m.group(1)) > 0:
                files.setdefault((int(m.group(1)), int(m.group(2))), path)
    if not files:
        raise DatasetError(f"no Market-named images under {root} to preview")
    cams_of: dict[int, int] = {}
    for pid, _ in files:
        cams_of[pid] = cams_of.get(pid, 0) + 1
    pids = sorted(sorted(cams_of, key=lambda p: (-cams_of[p], p))[:num_ids])
    num_cams = max(c for _, c in files)
    meta = read_meta(root) or {}
    title = f"domain {meta['domain']}" if "domain" in meta else root.name
    cells = {(p, c): Image.open(path).convert("RGB") for (p, c), path in files.items() if p in pids}
    return cells, pids, num_cams, title


def render_preview(
    root_or_config: str | os.PathLike | SyntheticConfig,
    out_png: str | os.PathLike,
    num_ids: int = 8,
    cell_height: int = 128,
    colors: int | None = None,
) -> Path:
    """Write a contact sheet: rows = identities, columns = cameras.

    From a config, images are rendered in memory (every identity in every camera); from
    a generated folder, one existing image per (identity, camera) is shown, preferring
    identities seen by the most cameras. Cells are scaled (nearest neighbour) to about
    ``cell_height`` pixels; ``colors`` (e.g. 256) writes a palette PNG, much smaller.
    """
    if isinstance(root_or_config, SyntheticConfig):
        config = root_or_config
        renderer = DomainRenderer(config)
        base = [config.seed, _domain_code(config.domain)]
        pids = list(range(1, min(num_ids, config.num_ids) + 1))
        num_cams = config.num_cameras
        cells = {
            (p, c): renderer.render(p, c, np.random.default_rng([*base, _PREVIEW, p, c]))
            for p in pids
            for c in range(1, num_cams + 1)
        }
        title = f"domain {config.domain}"
    else:
        cells, pids, num_cams, title = _cells_from_folder(Path(root_or_config), num_ids)
    some = next(iter(cells.values()))
    scale = max(1, round(cell_height / some.height))
    cw, ch = some.width * scale, some.height * scale
    pad, left, header = 2, 34, 16
    sheet = Image.new(
        "RGB",
        (left + num_cams * (cw + pad), header + len(pids) * (ch + pad)),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 2), title, fill=(0, 0, 0))
    for j in range(num_cams):
        draw.text((left + j * (cw + pad) + cw // 2 - 8, 2), f"c{j + 1}", fill=(0, 0, 0))
    for i, pid in enumerate(pids):
        y = header + i * (ch + pad)
        draw.text((2, y + ch // 2 - 5), f"{pid:04d}", fill=(0, 0, 0))
        for j in range(num_cams):
            cell = cells.get((pid, j + 1))
            x = left + j * (cw + pad)
            if cell is None:
                draw.rectangle((x, y, x + cw - 1, y + ch - 1), fill=(225, 225, 225))
            else:
                sheet.paste(cell.resize((cw, ch), Image.NEAREST), (x, y))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if colors is not None:
        sheet = sheet.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    sheet.save(out_png, optimize=True)
    return out_png
