"""Camera styles and domains of the synthetic generator.

A *domain* is a distribution over camera styles; each camera of a generated dataset draws
its style once from its domain (seeded by ``(seed, domain, camera)``). A camera style is
what a real camera network varies: the scene behind people (background kind, palette,
clutter), illumination (gain, gradient), the colour response (per-channel cast,
saturation, gamma, contrast and black level), optics and sensor (blur, noise, JPEG
quality) and the direction people usually walk past it.

Domains never change *who* appears: identities of every domain are drawn from the same
attribute distribution (see ``people.py``), so a domain shift is purely a shift of camera
style, the part of the gap that feature alignment (e.g. MMD) is meant to close.

To add a domain, add a :class:`DomainSpec` to :data:`DOMAINS` under a new letter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

Range = tuple[float, float]
#: A family of colour casts: one multiplier range per RGB channel.
CastFamily = tuple[str, Range, Range, Range]

VIEWS = ("front", "back", "left", "right")


@dataclass(frozen=True)
class DomainSpec:
    """The distribution one domain's camera styles are drawn from (uniform ranges)."""

    description: str
    backgrounds: tuple[str, ...]
    gain: Range
    casts: tuple[CastFamily, ...]
    saturation: Range
    gamma: Range
    contrast: Range
    lift: Range
    light_gradient: Range
    blur: Range  # Gaussian sigma in pixels at 128 px image height
    noise: Range  # sensor noise std as a fraction of full scale
    jpeg_quality: tuple[int, int]


DOMAINS: dict[str, DomainSpec] = {
    "A": DomainSpec(
        description="daylight outdoor cameras: street, park and plaza scenes, bright "
        "neutral light with mild colour casts, full contrast, sharp, low noise",
        backgrounds=("street", "park", "plaza"),
        gain=(0.95, 1.12),
        casts=(("neutral", (0.94, 1.06), (0.94, 1.06), (0.94, 1.06)),),
        saturation=(0.9, 1.1),
        gamma=(0.9, 1.1),
        contrast=(0.92, 1.05),
        lift=(0.0, 0.03),
        light_gradient=(-0.12, 0.12),
        blur=(0.0, 0.35),
        noise=(0.004, 0.012),
        jpeg_quality=(90, 95),
    ),
    "B": DomainSpec(
        description="dim indoor and night cameras: brick walls, corridors and lamp-lit "
        "streets, strong warm/cold/green casts, washed-out low contrast, blurred, noisy",
        backgrounds=("brick", "corridor", "night_street"),
        gain=(0.55, 0.75),
        casts=(
            ("warm", (1.12, 1.25), (0.97, 1.03), (0.7, 0.82)),
            ("cold", (0.78, 0.88), (0.95, 1.0), (1.12, 1.25)),
            ("green", (0.85, 0.92), (1.08, 1.15), (0.85, 0.92)),
        ),
        saturation=(0.6, 0.85),
        gamma=(1.05, 1.2),
        contrast=(0.65, 0.8),
        lift=(0.04, 0.1),
        light_gradient=(-0.3, 0.3),
        blur=(0.6, 1.1),
        noise=(0.015, 0.03),
        jpeg_quality=(70, 85),
    ),
}


@dataclass(frozen=True)
class CameraStyle:
    """One camera's fixed style (everything here is the same for all its images)."""

    camera: int  # 1-based, as in the file names
    background: str
    cast_family: str
    gain: float
    cast: tuple[float, float, float]
    saturation: float
    gamma: float
    contrast: float
    lift: float
    light_gradient: float
    light_angle: float  # radians; direction along which the illumination varies
    blur: float
    noise: float
    jpeg_quality: int
    view_probs: tuple[float, float, float, float]  # front, back, left, right

    def to_json(self) -> dict:
        """Plain, rounded values for ``meta.json``."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 4)
            elif isinstance(value, tuple):
                out[key] = [round(v, 4) if isinstance(v, float) else v for v in value]
        return out


def domain_spec(domain: str) -> DomainSpec:
    """The :class:`DomainSpec` of ``domain`` (callers validate the name first)."""
    return DOMAINS[domain]


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def sample_camera_style(
    rng: np.random.Generator, domain: str, camera: int, scene_index: int | None = None
) -> CameraStyle:
    """Draw one camera's style from ``domain``'s distribution.

    ``scene_index`` picks the background kind (modulo the domain's kinds); when None it
    is drawn at random.
    """
    spec = DOMAINS[domain]
    pick = int(rng.integers(len(spec.backgrounds))) if scene_index is None else scene_index
    background = spec.backgrounds[pick % len(spec.backgrounds)]
    family = spec.casts[int(rng.integers(len(spec.casts)))]
    cast = (_u(rng, family[1]), _u(rng, family[2]), _u(rng, family[3]))
    # Cameras watch a path: most people pass in one or two directions.
    views = rng.dirichlet(np.full(4, 1.2)) * 0.8 + 0.05
    views = tuple(float(v) for v in views / views.sum())
    return CameraStyle(
        camera=camera,
        background=background,
        cast_family=family[0],
        gain=_u(rng, spec.gain),
        cast=cast,
        saturation=_u(rng, spec.saturation),
        gamma=_u(rng, spec.gamma),
        contrast=_u(rng, spec.contrast),
        lift=_u(rng, spec.lift),
        light_gradient=_u(rng, spec.light_gradient),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        blur=_u(rng, spec.blur),
        noise=_u(rng, spec.noise),
        jpeg_quality=int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1)),
        view_probs=views,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------
# Backgrounds: each returns an (H, W, 3) float32 image in [0, 1], larger than a crop so
# that every image can show a different window of the camera's scene.


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in [0, 1], (h, w): random cells upsampled bicubically."""
    small = (rng.random(cells) * 255).astype(np.uint8)
    big = Image.fromarray(small, "L").resize((w, h), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def _mix(a: np.ndarray | tuple, b: np.ndarray | tuple, t: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def _jitter(rng: np.random.Generator, colour: tuple, amount: float = 0.06) -> np.ndarray:
    c = np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)
    return np.clip(c, 0.0, 1.0)


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int, dark: bool) -> None:
    """Poles, signs and bins: flat rectangles in place."""
    h, w, _ = img.shape
    for _ in range(count):
        kind = rng.integers(3)
        if kind == 0:  # pole
            cw, ch = rng.uniform(0.02, 0.05) * w, h
            x0, y0 = rng.uniform(0, w), 0.0
        elif kind == 1:  # sign / poster
            cw, ch = rng.uniform(0.08, 0.2) * w, rng.uniform(0.06, 0.15) * h
            x0, y0 = rng.uniform(0, w), rng.uniform(0.05, 0.5) * h
        else:  # bin / bollard
            cw, ch = rng.uniform(0.06, 0.12) * w, rng.uniform(0.12, 0.25) * h
            x0, y0 = rng.uniform(0, w), rng.uniform(0.65, 0.85) * h
        base = rng.uniform(0.05, 0.35) if dark else rng.uniform(0.2, 0.9)
        colour = np.clip(base + rng.uniform(-0.2, 0.2, 3), 0, 1)
        img[int(y0) : int(y0 + ch), int(x0) : int(x0 + cw)] = colour


def _street(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    horizon = rng.uniform(0.35, 0.5) * h
    facade = _jitter(
        rng, [(0.82, 0.76, 0.66), (0.7, 0.7, 0.72), (0.85, 0.62, 0.5)][rng.integers(3)]
    )
    img = np.broadcast_to(facade, (h, w, 3)).copy()
    # Windows on the facade.
    px, py = rng.uniform(0.12, 0.2) * w, rng.uniform(0.1, 0.16) * h
    win = ((xx % px) < 0.55 * px) & ((yy % py) < 0.6 * py) & (yy < horizon - 0.05 * h)
    img[win] = _jitter(rng, (0.45, 0.55, 0.65))
    sky = yy < rng.uniform(0.0, 0.12) * h
    img[sky] = _jitter(rng, (0.7, 0.82, 0.95))
    pavement = _jitter(rng, (0.62, 0.62, 0.6))
    ground = yy >= horizon
    img[ground] = pavement
    slab = rng.uniform(0.05, 0.09) * h
    slabs = ground & (((yy - horizon) % slab) < 1.0)
    img[slabs] *= 0.85
    kerb = (yy >= horizon) & (yy < horizon + 0.02 * h)
    img[kerb] = _jitter(rng, (0.8, 0.8, 0.78))
    _clutter(rng, img, int(rng.integers(1, 4)), dark=False)
    return img


def _park(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    leaves = _smooth_noise(rng, h, w, (6, 10))
    img = _mix(_jitter(rng, (0.18, 0.42, 0.16)), _jitter(rng, (0.5, 0.72, 0.3)), leaves)
    for _ in range(int(rng.integers(2, 5))):  # tree trunks
        x0, tw = rng.uniform(0, w), rng.uniform(0.03, 0.07) * w
        img[:, int(x0) : int(x0 + tw)] = _jitter(rng, (0.35, 0.25, 0.16))
    horizon = rng.uniform(0.55, 0.7) * h
    path = _jitter(rng, [(0.8, 0.72, 0.55), (0.45, 0.65, 0.3)][rng.integers(2)])
    ground = yy >= horizon
    img[ground] = path * (0.9 + 0.2 * _smooth_noise(rng, h, w, (8, 12)))[ground][:, None]
    return img


def _plaza(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    top, bottom = _jitter(rng, (0.75, 0.85, 0.95)), _jitter(rng, (0.88, 0.88, 0.85))
    img = _mix(top, bottom, np.clip(yy / (0.5 * h), 0, 1))
    horizon = rng.uniform(0.4, 0.55) * h
    tile = rng.uniform(0.08, 0.14) * w
    checker = ((np.floor(xx / tile) + np.floor(yy / tile)) % 2).astype(np.float32)
    ground = yy >= horizon
    floor = _mix(_jitter(rng, (0.78, 0.76, 0.72)), _jitter(rng, (0.68, 0.66, 0.62)), checker)
    img[ground] = floor[ground]
    _clutter(rng, img, int(rng.integers(2, 5)), dark=False)
    return img


def _brick(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    bh = rng.uniform(0.035, 0.06) * h
    bw = bh * rng.uniform(2.2, 3.0)
    row = np.floor(yy / bh)
    shifted = xx + (row % 2) * bw / 2
    col = np.floor(shifted / bw)
    table = rng.uniform(0.8, 1.15, (int(h / bh) + 2, int(w / bw) + 3)).astype(np.float32)
    shade = table[row.astype(int), col.astype(int)]
    brick = _jitter(rng, [(0.55, 0.25, 0.18), (0.45, 0.35, 0.28), (0.6, 0.5, 0.4)][rng.integers(3)])
    img = brick * shade[..., None]
    mortar = ((yy % bh) < 1.2) | ((shifted % bw) < 1.2)
    img[mortar] = _jitter(rng, (0.5, 0.48, 0.45))
    horizon = rng.uniform(0.65, 0.78) * h
    img[yy >= horizon] = _jitter(rng, (0.25, 0.25, 0.27))
    _clutter(rng, img, int(rng.integers(0, 3)), dark=True)
    return np.clip(img, 0, 1)


def _corridor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    wall = _jitter(rng, [(0.55, 0.62, 0.58), (0.7, 0.66, 0.55), (0.5, 0.5, 0.55)][rng.integers(3)])
    img = np.broadcast_to(wall, (h, w, 3)).copy()
    for _ in range(int(rng.integers(1, 3))):  # doors / panels
        x0, dw = rng.uniform(0, w), rng.uniform(0.2, 0.35) * w
        y0 = rng.uniform(0.1, 0.25) * h
        img[int(y0) :, int(x0) : int(x0 + dw)] = _jitter(rng, (0.35, 0.3, 0.28))
    horizon = rng.uniform(0.6, 0.72) * h
    tile = rng.uniform(0.1, 0.18) * w
    checker = ((np.floor(xx / tile) + np.floor(yy / (0.5 * tile))) % 2).astype(np.float32)
    floor = _mix(_jitter(rng, (0.55, 0.55, 0.5)), _jitter(rng, (0.2, 0.22, 0.25)), checker)
    ground = yy >= horizon
    img[ground] = floor[ground]
    img[(yy >= horizon - 0.02 * h) & (yy < horizon)] = _jitter(rng, (0.15, 0.15, 0.15))
    lights = (yy < 0.04 * h) & ((xx % (0.5 * w)) < 0.2 * w)
    img[lights] = 0.95
    return img


def _night_street(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    img = _mix(_jitter(rng, (0.05, 0.07, 0.16)), _jitter(rng, (0.15, 0.16, 0.25)), yy / h)
    horizon = rng.uniform(0.5, 0.65) * h
    skyline = rng.uniform(0.05, 0.3) * h
    building = (yy > skyline) & (yy < horizon)
    img[building] = _jitter(rng, (0.12, 0.11, 0.12))
    px, py = rng.uniform(0.1, 0.18) * w, rng.uniform(0.08, 0.14) * h
    lit = rng.random((int(h / py) + 2, int(w / px) + 2)) < 0.45
    win = building & ((xx % px) < 0.5 * px) & ((yy % py) < 0.55 * py)
    win &= lit[(yy / py).astype(int), (xx / px).astype(int)]
    img[win] = _jitter(rng, (0.9, 0.75, 0.4))
    ground = yy >= horizon
    asphalt = _jitter(rng, (0.18, 0.18, 0.2))
    wet = np.exp(-(((xx - rng.uniform(0.2, 0.8) * w) / (0.15 * w)) ** 2))
    img[ground] = (asphalt + 0.25 * wet[..., None])[ground]
    lamp_x = rng.uniform(0.1, 0.9) * w
    lamp = ((xx - lamp_x) ** 2 + (yy - 0.08 * h) ** 2) < (0.05 * w) ** 2
    img[lamp] = (1.0, 0.95, 0.8)
    img[(np.abs(xx - lamp_x) < 0.015 * w) & (yy > 0.08 * h)] = (0.1, 0.1, 0.1)
    return np.clip(img, 0, 1)


BACKGROUNDS = {
    "street": _street,
    "park": _park,
    "plaza": _plaza,
    "brick": _brick,
    "corridor": _corridor,
    "night_street": _night_street,
}


def render_background(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """One camera's scene, (h, w, 3) float32 in [0, 1]."""
    return np.ascontiguousarray(BACKGROUNDS[kind](rng, h, w), dtype=np.float32)
