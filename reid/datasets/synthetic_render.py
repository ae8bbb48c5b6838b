"""The synthetic pedestrian dataset: rendered people with exact COCO-18 keypoints.

Each identity has a fixed appearance (shirt and trouser colours and pattern, sleeves, skin, hair,
body proportions, hat, bag) drawn from palettes shared by all identities, so no single colour
identifies a person. Each image varies the pose (walking phase, facing direction), and each camera
has its own background, lighting / colour cast, blur, noise, elevation and preferred walking
directions; scale, position and occasional occluders vary per image.

Bodies are posed in 3-D (person-centred axes: right, up, forward), turned by the facing angle,
projected orthographically with the camera's elevation and drawn far to near at twice the output
size, then averaged down 2 x 2. Keypoints are the projected joints mapped into the saved image; a
keypoint is -1 when it falls outside the image or when something else is drawn over it (the torso
over a far arm, hair or an occluder, the back of the head over the eyes, ...).

The layout written by :func:`generate_synthetic_dataset` is the prepared one (spec section 1) plus
``poses/``: one split whose trainval identities (the first half) are disjoint from the test
identities, query pids = test pids, a few distractor identities only in the gallery, and the
official-protocol lists (one query image per camera of each test identity, at most a quarter of
its images).
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from reid.errors import ConfigError, DatasetError
from reid.utils.data.pose import NUM_KEYPOINTS, write_pose_file
from reid.utils.osutils import PathLike, atomic_write, mkdir_if_missing, read_json, write_json

logger = logging.getLogger(__name__)

RGB = Tuple[int, int, int]
SUPERSAMPLE = 2
GENERATOR_VERSION = 1

SHIRT_COLOURS: Dict[str, RGB] = {
    "black": (32, 32, 34), "white": (232, 232, 226), "grey": (128, 128, 128), "charcoal": (72, 72, 78),
    "navy": (30, 42, 92), "blue": (42, 92, 190), "sky": (130, 180, 228), "red": (190, 36, 42),
    "maroon": (112, 26, 36), "green": (42, 130, 62), "olive": (112, 120, 52), "yellow": (228, 198, 52),
    "beige": (208, 190, 150), "brown": (112, 76, 46), "pink": (228, 142, 170), "purple": (112, 62, 150),
    "orange": (228, 122, 42), "teal": (32, 130, 130),
}
TROUSER_COLOURS: Dict[str, RGB] = {
    "black": (30, 30, 32), "charcoal": (68, 68, 74), "navy": (34, 44, 84), "denim": (62, 84, 130),
    "beige": (200, 182, 140), "brown": (100, 70, 44), "grey": (124, 124, 126), "olive": (96, 102, 54),
    "white": (226, 226, 220), "red": (160, 40, 44),
}
SKIN_TONES: Tuple[RGB, ...] = ((248, 218, 188), (228, 188, 150), (198, 150, 110), (150, 102, 70), (102, 70, 50))
HAIR_COLOURS: Tuple[RGB, ...] = ((24, 20, 20), (60, 40, 30), (112, 76, 46), (208, 178, 110), (168, 168, 168),
                                 (150, 62, 32))
SHOE_COLOURS: Tuple[RGB, ...] = ((24, 24, 24), (236, 236, 236), (96, 62, 40), (120, 120, 124), (170, 40, 40))
PATTERNS = ("solid", "hstripes", "vstripes", "twotone", "logo")
BAGS = ("none", "backpack", "shoulder")

# Part labels of the label image (0 = background).
(BG, HEAD, HAIR, HAT, NECK, TORSO, LOGO, PELVIS, BAG, STRAP,
 R_UARM, R_FARM, R_HAND, L_UARM, L_FARM, L_HAND,
 R_THIGH, R_SHIN, R_FOOT, L_THIGH, L_SHIN, L_FOOT, OCCLUDER) = range(23)
NUM_PARTS = 23

# Parts on which each keypoint counts as visible (COCO-18 order, spec section 1).
_KEYPOINT_PARTS: Tuple[frozenset, ...] = tuple(frozenset(p) for p in (
    (HEAD,), (TORSO, NECK, HAIR, STRAP, HEAD, R_UARM, L_UARM),
    (TORSO, R_UARM, STRAP), (R_UARM, R_FARM), (R_FARM, R_HAND),
    (TORSO, L_UARM, STRAP), (L_UARM, L_FARM), (L_FARM, L_HAND),
    (PELVIS, TORSO, R_THIGH), (R_THIGH, R_SHIN), (R_SHIN, R_FOOT),
    (PELVIS, TORSO, L_THIGH), (L_THIGH, L_SHIN), (L_SHIN, L_FOOT),
    (HEAD,), (HEAD,), (HEAD, HAIR), (HEAD, HAIR),
))
# Head keypoints are seen only when the head's surface there faces the camera: the cosine between
# the surface normal and the direction to the camera must reach this (the nose tip and the ears
# still show on the silhouette of a profile or a back view).
_FACING_LIMIT = {0: -0.15, 14: 0.1, 15: 0.1, 16: -0.2, 17: -0.2}


@dataclass(frozen=True)
class Appearance:
    """What stays fixed for an identity across images and cameras."""

    shirt: RGB
    shirt2: RGB
    pattern: str
    long_sleeves: bool
    trousers: RGB
    shorts: bool
    shoes: RGB
    skin: RGB
    hair: RGB
    long_hair: bool
    height: float  # body height relative to the average person
    width: float  # body width relative to the average person
    hat: Optional[RGB]
    bag: str
    bag_colour: RGB
    bag_side: int  # +1: on the person's right, -1: left (shoulder bags)


@dataclass(frozen=True)
class CameraStyle:
    """What stays fixed for a camera: background, lighting and viewpoint."""

    wall: RGB
    floor: RGB
    horizon: float  # fraction of the image height where the floor starts
    wall_texture: str
    floor_texture: str
    texture_period: float  # in output pixels
    cast: Tuple[float, float, float]
    brightness: float
    contrast: float
    blur: float  # Gaussian sigma in output pixels
    noise: float  # std of additive noise, in grey levels
    elevation: float  # radians the camera looks down
    yaw_modes: Tuple[float, ...]  # main walking directions (radians, 0 = facing the camera)
    occluder_prob: float
    light_side: float  # -1..1, side the light comes from
    jpeg_quality: int


@dataclass(frozen=True)
class View:
    """What varies per image."""

    yaw: float  # radians; 0 faces the camera, pi shows the back, +pi/2 walks to the image right
    phase: float  # walking phase in radians
    arm_swing: float
    leg_swing: float
    scale: float  # person height as a fraction of the image height
    center: float  # body centre column as a fraction of the image width
    ground: float  # sole row as a fraction of the image height
    brightness: float  # multiplier on top of the camera's
    bg_shift: Tuple[float, float]  # texture offset in output pixels
    clutter: Tuple[Tuple[float, float, float, float, RGB], ...]  # background boxes (x0, y0, x1, y1, colour)
    occluder: Optional[Tuple[str, float, float, RGB]]  # (kind, position, size, colour)
    noise_seed: int


@dataclass
class Rendering:
    """A rendered image with its keypoints and the body's pixel coverage."""

    image: np.ndarray  # H x W x 3 uint8
    keypoints: np.ndarray  # 18 x 2 float32 (row, col); -1 where not visible
    coverage: np.ndarray  # H x W float32: fraction of each pixel covered by the person


def _rgb(values: Any) -> RGB:
    r, g, b = (int(v) for v in np.clip(np.asarray(values), 0, 255))
    return (r, g, b)


def _jitter(rng: np.random.Generator, colour: RGB, amount: int) -> RGB:
    return _rgb(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3))


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def random_appearance(rng: np.random.Generator) -> Appearance:
    """Draw an identity's appearance."""
    shirt_names = list(SHIRT_COLOURS)
    first = _pick(rng, shirt_names)
    second = _pick(rng, [n for n in shirt_names if n != first])
    bag = BAGS[int(rng.choice(3, p=[0.55, 0.28, 0.17]))]
    return Appearance(
        shirt=_jitter(rng, SHIRT_COLOURS[first], 14),
        shirt2=_jitter(rng, SHIRT_COLOURS[second], 14),
        pattern=PATTERNS[int(rng.choice(len(PATTERNS), p=[0.36, 0.16, 0.12, 0.16, 0.20]))],
        long_sleeves=bool(rng.random() < 0.5),
        trousers=_jitter(rng, TROUSER_COLOURS[_pick(rng, list(TROUSER_COLOURS))], 12),
        shorts=bool(rng.random() < 0.2),
        shoes=_jitter(rng, _pick(rng, SHOE_COLOURS), 10),
        skin=_jitter(rng, _pick(rng, SKIN_TONES), 8),
        hair=_jitter(rng, _pick(rng, HAIR_COLOURS), 10),
        long_hair=bool(rng.random() < 0.35),
        height=float(rng.uniform(0.9, 1.05)),
        width=float(rng.uniform(0.85, 1.2)),
        hat=_jitter(rng, SHIRT_COLOURS[_pick(rng, shirt_names)], 14) if rng.random() < 0.15 else None,
        bag=bag,
        bag_colour=_jitter(rng, SHIRT_COLOURS[_pick(rng, shirt_names)], 14),
        bag_side=1 if rng.random() < 0.5 else -1,
    )


def _tinted_grey(rng: np.random.Generator, low: int, high: int, tint: int) -> RGB:
    return _rgb(int(rng.integers(low, high)) + rng.integers(-tint, tint + 1, size=3))


def random_camera(rng: np.random.Generator) -> CameraStyle:
    """Draw a camera's style."""
    cast = rng.uniform(0.85, 1.15, size=3)
    cast = cast / cast.mean() * rng.uniform(0.95, 1.05)
    if rng.random() < 0.5:
        modes: Tuple[float, ...] = (0.0, math.pi)
    else:
        modes = (math.pi / 2, -math.pi / 2)
    return CameraStyle(
        # Scenes are mostly grey with a tint, as streets and halls are; people carry the colour.
        wall=_tinted_grey(rng, 60, 210, 28),
        floor=_tinted_grey(rng, 70, 180, 16),
        horizon=float(rng.uniform(0.5, 0.8)),
        wall_texture=_pick(rng, ("bricks", "panels", "noise", "plain")),
        floor_texture=_pick(rng, ("tiles", "plain", "noise")),
        texture_period=float(rng.uniform(5, 14)),
        cast=(float(cast[0]), float(cast[1]), float(cast[2])),
        brightness=float(rng.uniform(0.8, 1.1)),
        contrast=float(rng.uniform(0.85, 1.05)),
        blur=float(rng.uniform(0.0, 0.9)),
        noise=float(rng.uniform(1.5, 6.0)),
        elevation=float(rng.uniform(0.0, 0.35)),
        yaw_modes=modes,
        occluder_prob=float(rng.uniform(0.0, 0.15)),
        light_side=float(rng.uniform(-1, 1)),
        jpeg_quality=int(rng.integers(80, 96)),
    )


def random_view(rng: np.random.Generator, camera: CameraStyle, base_yaw: Optional[float] = None) -> View:
    """Draw the per-image variation; ``base_yaw`` is the walking direction (default: one of the
    camera's modes, sometimes any direction)."""
    if base_yaw is None:
        base_yaw = float(_pick(rng, camera.yaw_modes)) if rng.random() < 0.8 else float(rng.uniform(-math.pi, math.pi))
    scale = float(rng.uniform(0.74, 0.92))
    clutter = []
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = rng.uniform(-0.2, 1.0), rng.uniform(0.0, 0.9)
        clutter.append((float(x0), float(y0), float(x0 + rng.uniform(0.1, 0.5)), float(y0 + rng.uniform(0.05, 0.4)),
                        _jitter(rng, SHIRT_COLOURS[_pick(rng, list(SHIRT_COLOURS))], 30)))
    occluder = None
    if rng.random() < camera.occluder_prob:
        kind = "pole" if rng.random() < 0.6 else "ground"
        colour = _jitter(rng, _pick(rng, ((90, 90, 95), (60, 60, 64), (150, 150, 145), (120, 90, 60))), 15)
        if kind == "pole":
            occluder = (kind, float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.06, 0.14)), colour)
        else:
            occluder = (kind, float(rng.uniform(0.78, 0.9)), 0.0, colour)
    return View(
        yaw=float(base_yaw + rng.normal(0, 0.3)),
        phase=float(rng.uniform(0, 2 * math.pi)),
        arm_swing=float(rng.uniform(0.15, 0.6)),
        leg_swing=float(rng.uniform(0.1, 0.45)),
        scale=scale,
        center=float(0.5 + rng.uniform(-0.1, 0.1)),
        ground=float(rng.uniform(0.9, 1.03)),
        brightness=float(rng.uniform(0.9, 1.1)),
        bg_shift=(float(rng.uniform(0, 50)), float(rng.uniform(0, 50))),
        clutter=tuple(clutter),
        occluder=occluder,
        noise_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------------------------
# Geometry


def _pose_joints(app: Appearance, view: View) -> Dict[str, np.ndarray]:
    """Joint positions in person-centred units (right, up, forward); body height about 1, soles at 0."""
    w = app.width
    head_r = 0.062
    j: Dict[str, np.ndarray] = {}
    j["neck"] = np.array([0.0, 0.835, 0.0])
    j["head"] = np.array([0.0, 0.925, 0.005])
    j["nose"] = j["head"] + [0.0, -0.012, head_r * 0.95]
    sin_p, cos_p = math.sin(view.phase), math.cos(view.phase)
    for side, s in (("r", 1.0), ("l", -1.0)):
        arm = view.arm_swing * sin_p * s
        bend = 0.15 + 0.6 * max(0.0, arm)
        j[f"{side}_shoulder"] = np.array([s * 0.105 * w, 0.81, 0.0])
        j[f"{side}_elbow"] = j[f"{side}_shoulder"] + [s * 0.015, -0.16 * math.cos(arm), 0.16 * math.sin(arm)]
        fore = arm + bend
        j[f"{side}_wrist"] = j[f"{side}_elbow"] + [s * 0.01, -0.145 * math.cos(fore), 0.145 * math.sin(fore)]
        leg = -view.leg_swing * sin_p * s
        knee = 0.05 + 0.45 * max(0.0, cos_p * s)
        j[f"{side}_hip"] = np.array([s * 0.06 * w, 0.52, 0.0])
        j[f"{side}_knee"] = j[f"{side}_hip"] + [0.0, -0.245 * math.cos(leg), 0.245 * math.sin(leg)]
        j[f"{side}_ankle"] = j[f"{side}_knee"] + [0.0, -0.235 * math.cos(leg - knee), 0.235 * math.sin(leg - knee)]
        j[f"{side}_toe"] = j[f"{side}_ankle"] + [0.0, -0.02, 0.055]
        j[f"{side}_eye"] = j["head"] + [s * 0.024, 0.012, head_r * 0.82]
        j[f"{side}_ear"] = j["head"] + [s * head_r * 0.88, 0.0, -0.005]
    lowest = min(j["r_ankle"][1], j["l_ankle"][1], j["r_toe"][1], j["l_toe"][1])
    shift = np.array([0.0, 0.025 - lowest, 0.0])
    return {k: v + shift for k, v in j.items()}


class _Projector:
    """Maps person-centred points to canvas (x, y) pixels and a depth (larger = nearer)."""

    def __init__(self, yaw: float, elevation: float, origin: Tuple[float, float], pixels_per_unit: float) -> None:
        c, s = math.cos(yaw), math.sin(yaw)
        # Columns: the person's right, up and forward axes in camera coordinates (x right, y up, z to the viewer).
        rot = np.array([[-c, 0.0, s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        ce, se = math.cos(elevation), math.sin(elevation)
        tilt = np.array([[1.0, 0.0, 0.0], [0.0, ce, -se], [0.0, se, ce]])
        self.matrix = tilt @ rot
        self.origin = origin
        self.ppu = pixels_per_unit

    def camera(self, p: Any) -> np.ndarray:
        return self.matrix @ np.asarray(p, dtype=np.float64)

    def __call__(self, p: Any) -> Tuple[float, float, float]:
        x, y, z = self.camera(p)
        return self.origin[0] + x * self.ppu, self.origin[1] - y * self.ppu, float(z)


def _convex_hull(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    pts = sorted(set(points))
    if len(pts) <= 2:
        return list(pts)

    def cross(o: Tuple[float, float], a: Tuple[float, float], b: Tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: List[Tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: List[Tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _box(center: Sequence[float], half: Sequence[float],
         top_half: Optional[Sequence[float]] = None) -> List[np.ndarray]:
    """Corners of a box in person units (``top_half`` tapers the upper face)."""
    cx, cy, cz = center
    hx, hy, hz = half
    tx, tz = (top_half[0], top_half[2]) if top_half is not None else (hx, hz)
    out = []
    for dy, (ax, az) in ((-hy, (hx, hz)), (hy, (tx, tz))):
        for sx in (-1, 1):
            for sz in (-1, 1):
                out.append(np.array([cx + sx * ax, cy + dy, cz + sz * az]))
    return out


class _Scene:
    """Primitives with depths, drawn far to near into a part-label image."""

    def __init__(self, project: _Projector) -> None:
        self.project = project
        self.items: List[Tuple[float, int, str, Any, int]] = []

    def _add(self, depth: float, kind: str, data: Any, part: int) -> None:
        self.items.append((depth, len(self.items), kind, data, part))

    def polygon(self, points: Sequence[Tuple[float, float]], part: int, depth: float) -> None:
        """A polygon given in canvas pixels at a fixed depth."""
        self._add(depth, "poly", list(points), part)

    def solid(self, corners: Sequence[np.ndarray], part: int, bias: float = 0.0) -> None:
        proj = [self.project(c) for c in corners]
        hull = _convex_hull([(x, y) for x, y, _ in proj])
        self._add(float(np.mean([z for _, _, z in proj])) + bias, "poly", hull, part)

    def capsule(self, a: np.ndarray, b: np.ndarray, radius: float, part: int, bias: float = 0.001) -> None:
        xa, ya, za = self.project(a)
        xb, yb, zb = self.project(b)
        self._add((za + zb) / 2 + bias, "capsule", (xa, ya, xb, yb, radius * self.project.ppu), part)

    def ball(self, c: np.ndarray, radius: float, part: int, bias: float = 0.0) -> None:
        x, y, z = self.project(c)
        self._add(z + bias, "ellipse", (x, y, radius * self.project.ppu, radius * self.project.ppu), part)

    def flat_ellipse(self, c: np.ndarray, rx: float, ry: float, part: int, bias: float = 0.0) -> None:
        x, y, z = self.project(c)
        self._add(z + bias, "ellipse", (x, y, rx * self.project.ppu, ry * self.project.ppu), part)

    def draw(self, size: Tuple[int, int]) -> np.ndarray:
        img = Image.new("L", size, BG)
        draw = ImageDraw.Draw(img)
        for _, _, kind, data, part in sorted(self.items, key=lambda t: (t[0], t[1])):
            if kind == "poly":
                if len(data) >= 3:
                    draw.polygon(data, fill=part)
            elif kind == "capsule":
                xa, ya, xb, yb, r = data
                draw.line([(xa, ya), (xb, yb)], fill=part, width=max(1, int(round(2 * r))))
                for x, y in ((xa, ya), (xb, yb)):
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=part)
            else:
                x, y, rx, ry = data
                draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=part)
        return np.asarray(img)


def _build_scene(app: Appearance, j: Dict[str, np.ndarray], project: _Projector) -> _Scene:
    scene = _Scene(project)
    w = app.width
    head_r = 0.062
    hip_u, sh_u = j["r_hip"][1], j["r_shoulder"][1]
    mid = (hip_u + sh_u) / 2
    # torso (shirt), tapered from the shoulders to the hips
    scene.solid(_box((0.0, mid, 0.0), (0.095 * w, (sh_u - hip_u) / 2 + 0.012, 0.05), (0.125 * w, 0, 0.056)), TORSO)
    scene.solid(_box((0.0, hip_u - 0.025, 0.0), (0.1 * w, 0.05, 0.05)), PELVIS, bias=-0.0005)
    if app.pattern == "logo":
        scene.solid(_box((0.0, sh_u - 0.11, 0.06), (0.04, 0.035, 0.002)), LOGO, bias=0.01)
    scene.capsule(j["neck"], j["head"] - [0, head_r * 0.6, 0], 0.032, NECK, bias=-0.001)
    scene.ball(j["head"], head_r, HEAD)
    scene.ball(j["head"] + [0.0, 0.25 * head_r, -0.3 * head_r], 1.02 * head_r, HAIR)
    if app.long_hair:
        scene.capsule(j["head"] + [0.0, 0.0, -0.5 * head_r], j["neck"] + [0.0, -0.06, -0.045], 0.75 * head_r, HAIR,
                      bias=0.0)
    if app.hat is not None:
        top = j["head"] + [0.0, 0.55 * head_r, 0.0]
        scene.flat_ellipse(top, 1.3 * head_r, 0.28 * head_r, HAT, bias=1.0)
        scene.flat_ellipse(top + [0.0, 0.35 * head_r, 0.0], 0.9 * head_r, 0.6 * head_r, HAT, bias=1.0)
    for side, s, uarm, farm, hand, thigh, shin, foot in (
        ("r", 1.0, R_UARM, R_FARM, R_HAND, R_THIGH, R_SHIN, R_FOOT),
        ("l", -1.0, L_UARM, L_FARM, L_HAND, L_THIGH, L_SHIN, L_FOOT),
    ):
        scene.capsule(j[f"{side}_shoulder"], j[f"{side}_elbow"], 0.036 * w, uarm)
        scene.capsule(j[f"{side}_elbow"], j[f"{side}_wrist"], 0.031 * w, farm)
        scene.ball(j[f"{side}_wrist"] + [0.0, -0.012, 0.0], 0.027, hand, bias=0.002)
        scene.capsule(j[f"{side}_hip"], j[f"{side}_knee"], 0.05 * w, thigh)
        scene.capsule(j[f"{side}_knee"], j[f"{side}_ankle"], 0.04 * w, shin)
        scene.capsule(j[f"{side}_ankle"], j[f"{side}_toe"], 0.028, foot, bias=0.002)
    if app.bag == "backpack":
        scene.solid(_box((0.0, 0.68, -0.11), (0.075 * w, 0.11, 0.045)), BAG)
        for s in (1.0, -1.0):
            scene.capsule(np.array([s * 0.06 * w, sh_u + 0.01, 0.058]), np.array([s * 0.07 * w, 0.6, 0.058]),
                          0.012, STRAP, bias=0.0)
    elif app.bag == "shoulder":
        s = float(app.bag_side)
        scene.solid(_box((s * (0.1 * w + 0.07), 0.5, 0.0), (0.035, 0.07, 0.06)), BAG, bias=0.001)
        for f in (0.058, -0.058):
            scene.capsule(np.array([-s * 0.09 * w, sh_u + 0.01, f]), np.array([s * (0.1 * w + 0.05), 0.56, f]),
                          0.01, STRAP, bias=0.0)
    return scene


# --------------------------------------------------------------------------------------------
# Colour


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: Tuple[int, int]) -> np.ndarray:
    small = rng.random((cells[0], cells[1])).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BILINEAR))


def _background(camera: CameraStyle, view: View, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A camera's scene at canvas size: wall, floor, texture, clutter (float32 H x W x 3)."""
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    period = camera.texture_period * SUPERSAMPLE
    dx, dy = view.bg_shift[0] * SUPERSAMPLE, view.bg_shift[1] * SUPERSAMPLE
    wall = np.ones((h, w), np.float32)
    if camera.wall_texture == "bricks":
        band = np.floor((rows + dy) / period)
        mortar = ((rows + dy) % period < 1.5) | (((cols + dx + (band % 2) * period) % (2 * period)) < 1.5)
        wall = np.where(mortar, 0.78, 1.0).astype(np.float32)
    elif camera.wall_texture == "panels":
        wall = np.where(((cols + dx) // (1.5 * period)) % 2 == 0, 1.0, 0.86).astype(np.float32) * np.ones_like(rows)
    elif camera.wall_texture == "noise":
        wall = 0.82 + 0.36 * _smooth_noise(rng, h, w, (6, 4))
    floor = np.ones((h, w), np.float32)
    if camera.floor_texture == "tiles":
        floor = np.where(((rows + dy) % period < 1.5) | ((cols + dx) % (2 * period) < 1.5), 0.8, 1.0).astype(np.float32)
    elif camera.floor_texture == "noise":
        floor = 0.85 + 0.3 * _smooth_noise(rng, h, w, (5, 3))
    horizon = int(round(camera.horizon * h))
    is_floor = rows >= horizon
    shade = np.where(is_floor, floor, wall * (0.92 + 0.16 * rows / h))
    base = np.where(is_floor[..., None], np.asarray(camera.floor, np.float32), np.asarray(camera.wall, np.float32))
    bg = base * shade[..., None]
    for x0, y0, x1, y1, colour in view.clutter:
        c0, c1 = int(round(x0 * w)), int(round(x1 * w))
        r0, r1 = int(round(y0 * h)), int(round(y1 * h))
        bg[max(r0, 0):max(r1, 0), max(c0, 0):max(c1, 0)] = np.asarray(colour, np.float32)
    return bg


def _part_colours(app: Appearance) -> np.ndarray:
    lut = np.zeros((NUM_PARTS, 3), np.float32)
    lut[[HEAD, NECK, R_HAND, L_HAND]] = app.skin
    lut[HAIR] = app.hair
    lut[HAT] = app.hat if app.hat is not None else app.hair
    lut[[TORSO, R_UARM, L_UARM]] = app.shirt
    lut[LOGO] = app.shirt2
    lut[[R_FARM, L_FARM]] = app.shirt if app.long_sleeves else app.skin
    lut[[PELVIS, R_THIGH, L_THIGH]] = app.trousers
    lut[[R_SHIN, L_SHIN]] = app.skin if app.shorts else app.trousers
    lut[[R_FOOT, L_FOOT]] = app.shoes
    lut[BAG] = app.bag_colour
    lut[STRAP] = np.asarray(app.bag_colour, np.float32) * 0.7
    return lut


def render_person(
    app: Appearance, camera: CameraStyle, view: View, height: int = 128, width: int = 64,
    background: Optional[np.ndarray] = None,
) -> Rendering:
    """Render one image of a person.

    Args:
        app: the identity's appearance.
        camera: the camera's style.
        view: the per-image variation.
        height, width: output size in pixels.
        background: an ``height*2 x width*2 x 3`` float array to use instead of the camera's scene.

    Returns:
        The image, its 18 keypoints (row, col in output pixels; -1 when hidden or outside) and the
        body's coverage map.
    """
    ch, cw = height * SUPERSAMPLE, width * SUPERSAMPLE
    rng = np.random.default_rng(view.noise_seed)
    joints = _pose_joints(app, view)
    ppu = view.scale * app.height * ch
    origin = (view.center * cw, view.ground * ch)
    project = _Projector(view.yaw, camera.elevation, origin, ppu)
    scene = _build_scene(app, joints, project)
    if view.occluder is not None:
        kind, pos, size, _ = view.occluder
        if kind == "pole":
            x0, x1 = (pos - size / 2) * cw, (pos + size / 2) * cw
            scene.polygon([(x0, -1), (x1, -1), (x1, ch + 1), (x0, ch + 1)], OCCLUDER, depth=1e9)
        else:
            scene.polygon([(-1, pos * ch), (cw + 1, pos * ch), (cw + 1, ch + 1), (-1, ch + 1)], OCCLUDER, depth=1e9)
    labels = scene.draw((cw, ch))

    bg = _background(camera, view, ch, cw, rng) if background is None else np.asarray(background, np.float32)
    colours = _part_colours(app)
    img = np.where((labels > 0)[..., None], colours[labels], bg)
    rows = np.arange(ch, dtype=np.float32)[:, None]
    cols = np.arange(cw, dtype=np.float32)[None, :]
    shirt_mask = (labels == TORSO) | (((labels == R_UARM) | (labels == L_UARM)) & (app.pattern == "hstripes"))
    sh_x, sh_y, _ = project(joints["neck"] - [0, 0.025, 0])
    hip_y = project(joints["r_hip"])[1]
    stripe = 0.045 * ppu
    if app.pattern == "hstripes":
        alt = ((rows - sh_y) // stripe) % 2 == 1
    elif app.pattern == "vstripes":
        alt = ((cols - sh_x) // (0.7 * stripe)) % 2 == 1
    elif app.pattern == "twotone":
        alt = np.broadcast_to(rows > (sh_y + hip_y) / 2, labels.shape)
    else:
        alt = np.zeros((1, 1), bool)
    alt_mask = shirt_mask & alt
    img[alt_mask] = np.asarray(app.shirt2, np.float32)
    if view.occluder is not None:
        img[labels == OCCLUDER] = np.asarray(view.occluder[3], np.float32)
    body = (labels > 0) & (labels != OCCLUDER)
    # Round-body shading, brighter on the camera's light side.
    half = 0.16 * ppu
    rel = np.clip((cols - sh_x) / half, -1.5, 1.5)
    shade = 1.0 - 0.12 * rel ** 2 + 0.1 * camera.light_side * rel
    img = np.where(body[..., None], img * shade[..., None], img)

    keypoints = _keypoints(joints, project, labels, height, width)
    for k in (14, 15):
        if keypoints[k, 0] >= 0:
            x, y, _ = project(joints["r_eye" if k == 14 else "l_eye"])
            r, c = int(round(y)), int(round(x))
            img[max(r - 1, 0):r + 1, max(c - 1, 0):c + 1] *= 0.35

    # Camera: colour cast, brightness, contrast, then 2x2 averaging, blur and sensor noise.
    gain = np.asarray(camera.cast, np.float32) * camera.brightness * view.brightness
    img = (img - 128.0) * camera.contrast + 128.0
    img = img * gain
    img = img.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(1, 3))
    if camera.blur > 0.05:
        img = gaussian_filter(img, sigma=(camera.blur, camera.blur, 0), mode="nearest")
    img = img + rng.normal(0.0, camera.noise, size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    coverage = body.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)
    return Rendering(image=image, keypoints=keypoints, coverage=coverage)


def _keypoints(joints: Dict[str, np.ndarray], project: _Projector, labels: np.ndarray,
               height: int, width: int) -> np.ndarray:
    names = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
             "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
    ch, cw = labels.shape
    out = np.full((NUM_KEYPOINTS, 2), -1.0, np.float32)
    head = project.camera(joints["head"])
    for k, name in enumerate(names):
        x, y, _ = project(joints[name])
        r, c = int(round(y)), int(round(x))
        if not (0 <= r < ch and 0 <= c < cw) or labels[r, c] not in _KEYPOINT_PARTS[k]:
            continue
        if k in _FACING_LIMIT:
            normal = project.camera(joints[name]) - head
            if normal[2] / (np.linalg.norm(normal) + 1e-9) < _FACING_LIMIT[k]:
                continue  # on the far side of the head
        # canvas pixel centres are at integers; output pixel i covers canvas 2i .. 2i+1
        row = (y + 0.5) / SUPERSAMPLE - 0.5
        col = (x + 0.5) / SUPERSAMPLE - 0.5
        out[k] = (min(max(row, 0.0), height - 1.0), min(max(col, 0.0), width - 1.0))
    return out


# --------------------------------------------------------------------------------------------
# The dataset


@dataclass(frozen=True)
class SyntheticConfig:
    """The generation settings (recorded in meta.json as ``synthetic``)."""

    num_ids: int = 100
    num_cams: int = 4
    images_per_cam: int = 3
    height: int = 128
    width: int = 64
    seed: int = 0
    num_distractors: Optional[int] = None  # default: max(1, num_ids // 20)

    def resolved_distractors(self) -> int:
        return max(1, self.num_ids // 20) if self.num_distractors is None else self.num_distractors

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot make a usable dataset."""
        if self.num_ids < 2:
            raise ConfigError(f"--num-ids {self.num_ids}: need at least 2 identities (trainval and test)")
        if self.num_cams < 2:
            raise ConfigError(f"--num-cams {self.num_cams}: need at least 2 cameras "
                              "(queries are matched across cameras)")
        if self.images_per_cam < 1:
            raise ConfigError(f"--images-per-cam {self.images_per_cam}: need at least 1")
        if self.height < 32 or self.width < 16:
            raise ConfigError(f"--height {self.height} --width {self.width}: the smallest size is 32 x 16")
        if self.num_distractors is not None and self.num_distractors < 0:
            raise ConfigError(f"--num-distractors {self.num_distractors}: must not be negative")

    def as_meta(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["num_distractors"] = self.resolved_distractors()
        d["version"] = GENERATOR_VERSION
        return d


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


Job = Tuple[str, int, int, int]  # file name, pid, camera, index within (pid, camera)


def plan_synthetic(cfg: SyntheticConfig) -> Tuple[Dict[str, Any], List[Dict[str, Any]], List[Job]]:
    """meta.json and splits.json content and the (file name, pid, cam, index) of every image."""
    num_total = cfg.num_ids + cfg.resolved_distractors()
    num_trainval = cfg.num_ids // 2
    identities: List[List[List[str]]] = []
    jobs: List[Job] = []
    for pid in range(num_total):
        rng = _rng(cfg.seed, 1, pid)
        k = int(rng.integers(2, cfg.num_cams + 1))
        cams = sorted(int(c) for c in rng.choice(cfg.num_cams, size=k, replace=False))
        per_cam: List[List[str]] = [[] for _ in range(cfg.num_cams)]
        for cam in cams:
            for i in range(cfg.images_per_cam):
                fname = f"{pid:08d}_{cam:02d}_{i:04d}.jpg"
                per_cam[cam].append(fname)
                jobs.append((fname, pid, cam, i))
        identities.append(per_cam)
    test = list(range(num_trainval, cfg.num_ids))
    distractors = list(range(cfg.num_ids, num_total))
    official_query: List[str] = []
    for pid in test:
        cams = [c for c, files in enumerate(identities[pid]) if files]
        total = sum(len(f) for f in identities[pid])
        n = min(len(cams), max(1, total // 4))
        rng = _rng(cfg.seed, 3, pid)
        for cam in sorted(int(c) for c in rng.choice(cams, size=n, replace=False)):
            official_query.append(identities[pid][cam][int(rng.integers(len(identities[pid][cam])))])
    chosen = set(official_query)
    official_gallery = [f for pid in test + distractors for files in identities[pid] for f in files if f not in chosen]
    meta = {"name": "synthetic", "shot": "multiple", "num_cameras": cfg.num_cams, "identities": identities,
            "synthetic": cfg.as_meta()}
    splits = [{
        "trainval": list(range(num_trainval)),
        "query": test,
        "gallery": test + distractors,
        "official_query": official_query,
        "official_gallery": official_gallery,
    }]
    return meta, splits, jobs


def render_image(cfg: SyntheticConfig, pid: int, cam: int, index: int,
                 cameras: Optional[Sequence[CameraStyle]] = None) -> Rendering:
    """Render image ``index`` of identity ``pid`` in camera ``cam`` (independent of any other image)."""
    if cameras is None:
        cameras = [random_camera(_rng(cfg.seed, 0, c)) for c in range(cfg.num_cams)]
    app = random_appearance(_rng(cfg.seed, 1, pid, 0))
    # A person walks through a camera's view in one direction, sometimes turning.
    walk = _rng(cfg.seed, 4, pid, cam)
    camera = cameras[cam]
    base_yaw = float(_pick(walk, camera.yaw_modes)) if walk.random() < 0.85 else float(walk.uniform(-math.pi, math.pi))
    rng = _rng(cfg.seed, 2, pid, cam, index)
    yaw = base_yaw if rng.random() < 0.8 else base_yaw + math.pi
    view = random_view(rng, camera, base_yaw=yaw)
    return render_person(app, camera, view, cfg.height, cfg.width)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an H x W x 3 uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


_PARTIAL_MARKER = ".synthetic-partial"


def generate_synthetic_dataset(root: PathLike, config: Optional[SyntheticConfig] = None,
                               force: bool = False) -> Dict[str, Any]:
    """Write the synthetic dataset (images, poses, meta.json, splits.json) into ``root``.

    Nothing is done when ``root`` already holds a dataset made with the same settings. The dataset
    is built in ``<root>.partial`` and renamed into place at the end.

    Args:
        root: the dataset folder, e.g. ``datasets/synthetic``.
        config: the settings (defaults: 100 identities, 4 cameras, 3 images per camera, 128 x 64).
        force: replace an existing folder made with other settings.

    Returns:
        A summary: ``root``, ``num_images``, ``num_identities``, ``seconds``, ``skipped``.

    Raises:
        ConfigError: unusable settings.
        DatasetError: ``root`` exists with other content and ``force`` is false.
    """
    cfg = config or SyntheticConfig()
    cfg.validate()
    root = os.path.normpath(os.fspath(root))
    start = time.perf_counter()
    meta, splits, jobs = plan_synthetic(cfg)
    if os.path.exists(root):
        previous = None
        try:
            previous = read_json(os.path.join(root, "meta.json")).get("synthetic")
        except (DatasetError, AttributeError):
            pass
        complete = all(os.path.exists(os.path.join(root, p)) for p in ("images", "poses", "splits.json"))
        if previous == meta["synthetic"] and complete:
            logger.info("%s already holds the synthetic dataset with these settings; nothing to do", root)
            return {"root": root, "num_images": len(jobs), "num_identities": len(meta["identities"]),
                    "seconds": 0.0, "skipped": True}
        if (not os.path.isdir(root) or os.listdir(root)) and not force:
            raise DatasetError(f"{root}: already exists with other content; remove it or pass --force to replace it")
    partial = root + ".partial"
    if os.path.exists(partial):
        if not os.path.exists(os.path.join(partial, _PARTIAL_MARKER)):
            raise DatasetError(f"{partial}: exists but was not made by this generator; remove it")
        shutil.rmtree(partial)
    mkdir_if_missing(os.path.join(partial, "images"))
    mkdir_if_missing(os.path.join(partial, "poses"))
    with atomic_write(os.path.join(partial, _PARTIAL_MARKER), "w") as f:
        f.write("synthetic dataset being generated\n")
    cameras = [random_camera(_rng(cfg.seed, 0, c)) for c in range(cfg.num_cams)]
    for fname, pid, cam, index in jobs:
        result = render_image(cfg, pid, cam, index, cameras)
        with atomic_write(os.path.join(partial, "images", fname)) as f:
            f.write(encode_jpeg(result.image, cameras[cam].jpeg_quality))
        write_pose_file(os.path.join(partial, "poses", os.path.splitext(fname)[0] + ".txt"), result.keypoints)
    write_json(meta, os.path.join(partial, "meta.json"))
    write_json(splits, os.path.join(partial, "splits.json"))
    os.unlink(os.path.join(partial, _PARTIAL_MARKER))
    if os.path.exists(root):
        old = root + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(root, old)
        os.replace(partial, root)
        shutil.rmtree(old)
    else:
        os.replace(partial, root)
    seconds = time.perf_counter() - start
    logger.info("Wrote %s: %d images of %d identities in %.1f s", root, len(jobs), len(meta["identities"]), seconds)
    return {"root": root, "num_images": len(jobs), "num_identities": len(meta["identities"]),
            "seconds": seconds, "skipped": False}
