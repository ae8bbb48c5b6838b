"""Synthetic identities, cameras and per-image views: palettes, part labels and their random draws."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

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

# Parts on which each keypoint counts as visible (OpenPose COCO-18 order, :mod:`reid.utils.data.pose`).
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
