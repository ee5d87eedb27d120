"""Synthetic pedestrians: persistent identity attributes and a vectorised renderer.

An :class:`Identity` holds what stays the same across a person's images (clothing
colours and textures, sleeve and leg wear, hair, skin, build, height, bag). A pose
(view and walking phase) and a placement vary per image. Bodies are drawn as a few
signed-distance shapes (capsules, ellipses, trapezoids) evaluated on the whole pixel
grid with numpy, with half-pixel soft edges, onto a premultiplied colour + alpha layer.

The attribute distribution is shared by every domain: domains differ in camera style
only (``styles.py``).
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np

Colour = tuple[float, float, float]

TEXTURES = ("solid", "stripes", "checks", "blocks")
LOWER_WEAR = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder")

_HAIR = (
    (0.06, 0.05, 0.05),  # black
    (0.22, 0.14, 0.08),  # dark brown
    (0.42, 0.28, 0.16),  # brown
    (0.85, 0.72, 0.45),  # blond
    (0.62, 0.6, 0.58),  # grey
    (0.6, 0.25, 0.12),  # red
)
_SKIN_LIGHT = np.array((0.96, 0.8, 0.69), np.float32)
_SKIN_DARK = np.array((0.33, 0.21, 0.13), np.float32)


@dataclass(frozen=True)
class Identity:
    """Attributes of one person that persist across all of their images."""

    pid: int
    upper: Colour
    upper2: Colour  # second colour of a textured top
    texture: str  # one of TEXTURES
    texture_period: float  # in units of body height
    sleeves: str  # "long" | "short"
    lower: Colour
    lower_wear: str  # one of LOWER_WEAR
    shoes: Colour
    skin: Colour
    hair: Colour
    long_hair: bool
    build: float  # width multiplier
    height: float  # height multiplier
    bag: str  # one of BAGS
    bag_colour: Colour
    bag_side: int  # -1 or +1: which shoulder carries a shoulder bag
    chest_print: Colour | None  # a print on the front of the top, if any

    def to_json(self) -> dict:
        """Plain, rounded values for ``meta.json``."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 3)
            elif isinstance(value, tuple):
                out[key] = [round(v, 3) for v in value]
        return out


def _hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (float(r), float(g), float(b))


def _clothing_colour(rng: np.random.Generator, neutral_p: float) -> Colour:
    if rng.random() < neutral_p:
        v = float(rng.uniform(0.08, 0.95))
        return _hsv(float(rng.random()), float(rng.uniform(0.0, 0.12)), v)
    return _hsv(float(rng.random()), float(rng.uniform(0.45, 0.95)), float(rng.uniform(0.35, 0.95)))


def sample_identity(rng: np.random.Generator, pid: int) -> Identity:
    """Draw one person's persistent attributes."""
    upper = _clothing_colour(rng, 0.3)
    upper2 = _clothing_colour(rng, 0.5)
    texture = TEXTURES[int(rng.choice(4, p=[0.5, 0.2, 0.15, 0.15]))]
    if rng.random() < 0.3:  # denim
        lower = _hsv(0.6, float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.25, 0.6)))
    else:
        lower = _clothing_colour(rng, 0.55)
    t = float(rng.random())
    skin = tuple(float(c) for c in _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * t)
    hair = np.asarray(_HAIR[int(rng.choice(6, p=[0.35, 0.25, 0.15, 0.1, 0.1, 0.05]))])
    hair = tuple(float(c) for c in np.clip(hair + rng.uniform(-0.04, 0.04, 3), 0, 1))
    shoes = [(0.08, 0.08, 0.08), (0.92, 0.92, 0.9), (0.4, 0.26, 0.15)][int(rng.integers(3))]
    bag = BAGS[int(rng.choice(3, p=[0.45, 0.3, 0.25]))]
    return Identity(
        pid=pid,
        upper=upper,
        upper2=upper2,
        texture=texture,
        texture_period=float(rng.uniform(0.025, 0.05)),
        sleeves="long" if rng.random() < 0.55 else "short",
        lower=lower,
        lower_wear=LOWER_WEAR[int(rng.choice(3, p=[0.65, 0.2, 0.15]))],
        shoes=shoes,
        skin=skin,  # type: ignore[arg-type]
        hair=hair,  # type: ignore[arg-type]
        long_hair=bool(rng.random() < 0.35),
        build=float(rng.uniform(0.85, 1.2)),
        height=float(rng.uniform(0.9, 1.04)),
        bag=bag,
        bag_colour=_clothing_colour(rng, 0.5),
        bag_side=1 if rng.random() < 0.5 else -1,
        chest_print=_clothing_colour(rng, 0.3) if rng.random() < 0.3 else None,
    )


# --------------------------------------------------------------------------------------
# Signed distances (negative inside, in pixels), evaluated on pixel-centre coordinates.


def capsule(xx, yy, x0, y0, x1, y1, r):
    """Distance to a segment (x0, y0)-(x1, y1) thickened by ``r``."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy + 1e-6), 0.0, 1.0)
    px, py = xx - (x0 + t * dx), yy - (y0 + t * dy)
    return np.sqrt(px * px + py * py) - r


def ellipse(xx, yy, cx, cy, rx, ry):
    """Approximate distance to an axis-aligned ellipse (exact on its axes)."""
    q = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return (q - 1.0) * min(rx, ry)


def trapezoid(xx, yy, cx, y0, y1, hw0, hw1):
    """Vertical trapezoid with half-widths ``hw0`` at ``y0`` and ``hw1`` at ``y1``."""
    t = np.clip((yy - y0) / (y1 - y0), 0.0, 1.0)
    dx = np.abs(xx - cx) - (hw0 + (hw1 - hw0) * t)
    dy = np.maximum(y0 - yy, yy - y1)
    return np.maximum(dx, dy)


class Layer:
    """Premultiplied RGB + alpha canvas painted back to front.

    Each shape is evaluated only inside its bounding box (plus a pixel of margin for the
    soft edge), which keeps a 20-part body cheap at any image size.
    """

    def __init__(self, xx: np.ndarray, yy: np.ndarray) -> None:
        self.xx, self.yy = xx, yy
        self.h, self.w = xx.shape
        self.rgb = np.zeros((self.h, self.w, 3), np.float32)
        self.alpha = np.zeros((self.h, self.w), np.float32)

    def paint(self, sdf_fn, box: tuple[float, float, float, float], colour) -> None:
        """Paint where ``sdf_fn(xx, yy) < 0`` within ``box = (x0, y0, x1, y1)``."""
        xa, ya = max(0, int(box[0]) - 1), max(0, int(box[1]) - 1)
        xb, yb = min(self.w, int(box[2]) + 2), min(self.h, int(box[3]) + 2)
        if xa >= xb or ya >= yb:
            return
        win = (slice(ya, yb), slice(xa, xb))
        a = np.clip(0.5 - sdf_fn(self.xx[win], self.yy[win]), 0.0, 1.0)
        if isinstance(colour, np.ndarray) and colour.ndim == 3:
            colour = colour[win]
        rgb, alpha = self.rgb[win], self.alpha[win]
        rgb *= (1.0 - a)[..., None]
        rgb += a[..., None] * colour
        alpha *= 1.0 - a
        alpha += a

    def capsule(self, x0, y0, x1, y1, r, colour) -> None:
        box = (min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
        self.paint(lambda xx, yy: capsule(xx, yy, x0, y0, x1, y1, r), box, colour)

    def ellipse(self, cx, cy, rx, ry, colour, cut=None) -> None:
        """An ellipse, optionally intersected with ``cut(xx, yy) < 0``."""

        def sdf(xx, yy):
            d = ellipse(xx, yy, cx, cy, rx, ry)
            return d if cut is None else np.maximum(d, cut(xx, yy))

        self.paint(sdf, (cx - rx, cy - ry, cx + rx, cy + ry), colour)

    def trapezoid(self, cx, y0, y1, hw0, hw1, colour, grow: float = 0.0) -> None:
        """A vertical trapezoid with corners rounded by ``grow`` pixels."""
        hw = max(hw0, hw1) + grow
        box = (cx - hw, y0 - grow, cx + hw, y1 + grow)
        self.paint(lambda xx, yy: trapezoid(xx, yy, cx, y0, y1, hw0, hw1) - grow, box, colour)


@dataclass(frozen=True)
class Pose:
    """Per-image placement: view, walking phase and the body box in pixels."""

    view: str  # "front" | "back" | "left" | "right"
    phase: float  # walking phase in radians
    cx: float  # body centre line, x
    top: float  # top of the head, y
    height: float  # head-to-feet height


def _texture(ident: Identity, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colour of the top at body coordinates (u, v), (H, W, 3) or (3,)."""
    c1 = np.asarray(ident.upper, np.float32)
    if ident.texture == "solid":
        return c1
    c2 = np.asarray(ident.upper2, np.float32)
    p = ident.texture_period
    if ident.texture == "stripes":
        second = np.floor(v / p) % 2 == 1
    elif ident.texture == "checks":
        second = (np.floor(v / p) + np.floor(u / p)) % 2 == 1
    else:  # colour blocks: a yoke in the second colour
        second = v < 0.27
    return np.where(second[..., None], c2, c1)


def draw_person(
    xx: np.ndarray, yy: np.ndarray, ident: Identity, pose: Pose
) -> tuple[np.ndarray, np.ndarray]:
    """Render one person on the pixel grid ``xx``, ``yy`` (H, W).

    Returns premultiplied rgb (H, W, 3) and alpha (H, W), float32 in [0, 1].
    """
    layer = Layer(xx, yy)
    ph, cx, top = pose.height, pose.cx, pose.top
    b = ident.build
    side = pose.view in ("left", "right")
    facing = -1.0 if pose.view == "left" else 1.0
    phi = pose.phase

    def X(u: float) -> float:
        return cx + u * ph

    def Y(v: float) -> float:
        return top + v * ph

    u = (xx - cx) / ph
    top_colour = _texture(ident, u, (yy - top) / ph)
    lower = np.asarray(ident.lower, np.float32)
    skin = np.asarray(ident.skin, np.float32)
    hair = np.asarray(ident.hair, np.float32)
    shoes = np.asarray(ident.shoes, np.float32)
    bag_colour = np.asarray(ident.bag_colour, np.float32)
    far = 0.78  # limbs on the far side are in shadow

    def arm(shoulder_x: float, angle_upper: float, angle_fore: float, dirx: float, shade=1.0):
        sx, sy = X(shoulder_x), Y(0.19)
        ex = sx + dirx * np.sin(angle_upper) * 0.15 * ph
        ey = sy + np.cos(angle_upper) * 0.15 * ph
        wx = ex + dirx * np.sin(angle_fore) * 0.14 * ph
        wy = ey + np.cos(angle_fore) * 0.14 * ph
        r = 0.027 * b * ph
        if ident.sleeves == "long":
            layer.capsule(sx, sy, ex, ey, r, top_colour * shade)
            layer.capsule(ex, ey, wx, wy, r * 0.9, top_colour * shade)
        else:
            layer.capsule(ex, ey, wx, wy, r * 0.85, skin * shade)
            layer.capsule(sx, sy, ex, ey, r * 0.9, skin * shade)
            mx, my = sx + 0.55 * (ex - sx), sy + 0.55 * (ey - sy)
            layer.capsule(sx, sy, mx, my, r * 1.05, top_colour * shade)
        layer.ellipse(wx, wy + 0.012 * ph, 0.02 * ph, 0.026 * ph, skin * shade)

    def leg(hip_x: float, ankle_x: float, knee_dx: float, lift: float, dirx: float, shade=1.0):
        hx, hy = X(hip_x), Y(0.54)
        ax, ay = X(ankle_x), Y(0.955 - lift)
        kx, ky = (hx + ax) / 2 + dirx * knee_dx * ph, (hy + ay) / 2
        r = 0.037 * b * ph
        legwear = lower if ident.lower_wear == "trousers" else skin
        layer.capsule(kx, ky, ax, ay, r * 0.85, legwear * shade)
        layer.capsule(hx, hy, kx, ky, r, legwear * shade)
        if ident.lower_wear == "shorts":
            mx, my = hx + 0.75 * (kx - hx), hy + 0.75 * (ky - hy)
            layer.capsule(hx, hy, mx, my, r * 1.1, lower * shade)
        foot_dx = dirx * 0.045 * ph if side else 0.0
        layer.capsule(ax, ay + 0.015 * ph, ax + foot_dx, ay + 0.02 * ph, 0.02 * ph, shoes * shade)

    def pelvis():
        hw = (0.065 if side else 0.1) * b * ph
        if ident.lower_wear == "skirt":
            layer.trapezoid(cx, Y(0.47), Y(0.7), hw, hw * 1.5, lower)
        else:
            layer.trapezoid(cx, Y(0.47), Y(0.6), hw, hw * 0.85, lower)

    def torso():
        hw_s, hw_w = (0.075 * b, 0.065 * b) if side else (0.115 * b, 0.095 * b)
        layer.trapezoid(cx, Y(0.17), Y(0.5), hw_s * ph, hw_w * ph, top_colour, grow=0.01 * ph)
        if pose.view == "front" and ident.chest_print is not None:
            colour = np.asarray(ident.chest_print, np.float32)
            layer.trapezoid(cx, Y(0.25), Y(0.33), 0.04 * ph, 0.04 * ph, colour)

    hx_c, hy_c = X(0.005 * facing if side else 0.0), Y(0.07)
    rx, ry = (0.05 if side else 0.046) * ph, 0.064 * ph

    def head():
        layer.capsule(X(0), Y(0.11), X(0), Y(0.18), 0.022 * ph, skin)  # neck
        if pose.view == "back":
            layer.ellipse(hx_c, hy_c, rx * 1.05, ry * 1.02, hair)
            return
        layer.ellipse(hx_c, hy_c, rx, ry, skin)

        def cap(xx, yy):  # the upper part of the head, and for a profile its back half
            d = yy - (hy_c - 0.25 * ry)
            return np.minimum(d, (xx - hx_c) * facing + 0.15 * rx) if side else d

        layer.ellipse(hx_c, hy_c - 0.02 * ry, rx * 1.06, ry * 1.04, hair, cut=cap)

    def long_hair(front_strands: bool):
        if not ident.long_hair:
            return
        if front_strands:
            for s in (-1, 1):
                x0, x1 = hx_c + s * rx * 0.85, hx_c + s * rx * 0.95
                layer.capsule(x0, hy_c, x1, Y(0.24), 0.018 * ph, hair)
        else:
            x_back = hx_c - facing * 0.3 * rx if side else hx_c
            layer.trapezoid(x_back, hy_c, Y(0.27), rx * 0.9, rx * 1.0, hair)

    def backpack():
        if ident.bag != "backpack":
            return
        if pose.view == "back":
            hw0, hw1 = 0.085 * b * ph, 0.09 * b * ph
            layer.trapezoid(cx, Y(0.2), Y(0.44), hw0, hw1, bag_colour, grow=0.01 * ph)
        elif side:
            bx = cx - facing * (0.075 * b + 0.04) * ph
            layer.trapezoid(bx, Y(0.2), Y(0.43), 0.045 * ph, 0.05 * ph, bag_colour, 0.008 * ph)
        else:
            for s in (-1, 1):
                x0, x1 = X(s * 0.07 * b), X(s * 0.075 * b)
                layer.capsule(x0, Y(0.18), x1, Y(0.38), 0.012 * ph, bag_colour)

    def shoulder_bag(image_side: float):
        if ident.bag != "shoulder":
            return
        bx = X(-facing * 0.02) if side else X(image_side * (0.11 * b + 0.03))
        strap_x = X(-image_side * 0.08 * b)
        layer.capsule(strap_x, Y(0.19), bx, Y(0.44), 0.008 * ph, bag_colour * 0.8)
        layer.trapezoid(bx, Y(0.42), Y(0.54), 0.045 * ph, 0.05 * ph, bag_colour, 0.006 * ph)

    swing = float(np.sin(phi))
    if side:
        # Far limbs first; the near arm swings opposite to the near leg.
        arm(-0.01 * facing, -0.45 * swing, -0.45 * swing + 0.35, facing, far)
        leg(0.0, 0.12 * swing, 0.02 + 0.03 * max(0.0, -np.cos(phi)), 0.0, facing, far)
        if ident.bag == "shoulder" and ident.bag_side != facing:
            shoulder_bag(facing)
        backpack()
        pelvis()
        leg(0.0, -0.12 * swing, 0.02 + 0.03 * max(0.0, np.cos(phi)), 0.0, facing)
        torso()
        head()
        long_hair(False)
        arm(0.01 * facing, 0.45 * swing, 0.45 * swing + 0.35, facing)
        if ident.bag == "shoulder" and ident.bag_side == facing:
            shoulder_bag(facing)
    elif pose.view == "front":
        long_hair(False)
        for s in (-1, 1):
            leg(s * 0.055 * b, s * 0.06 * b, 0.0, 0.035 * max(0.0, s * swing), s)
        pelvis()
        torso()
        for s in (-1, 1):
            a = 0.12 + 0.05 * abs(swing)
            arm(s * 0.1 * b, a, a + 0.05, s)
        backpack()
        shoulder_bag(float(ident.bag_side))
        head()
        long_hair(True)
    else:  # back
        for s in (-1, 1):
            leg(s * 0.055 * b, s * 0.06 * b, 0.0, 0.035 * max(0.0, -s * swing), s)
        pelvis()
        for s in (-1, 1):
            a = 0.12 + 0.05 * abs(swing)
            arm(s * 0.1 * b, a, a + 0.05, s)
        torso()
        head()
        long_hair(False)
        backpack()
        shoulder_bag(-float(ident.bag_side))

    # Cylindrical shading: bodies are darker towards their silhouette edges.
    shade = 1.0 - 0.25 * np.clip(u / (0.14 * b), -1.0, 1.0) ** 2
    layer.rgb *= shade[..., None]
    return layer.rgb, layer.alpha
