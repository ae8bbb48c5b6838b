"""Synthetic bodies in 3-D: joint positions, the camera projection, the drawable scene and the keypoints."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from reid.datasets.synthetic_render.appearance import (
    Appearance, BAG, BG, HAIR, HAT, HEAD, LOGO, L_FARM, L_FOOT, L_HAND, L_SHIN, L_THIGH, L_UARM, NECK,
    PELVIS, R_FARM, R_FOOT, R_HAND, R_SHIN, R_THIGH, R_UARM, STRAP, SUPERSAMPLE, TORSO, View,
    _FACING_LIMIT, _KEYPOINT_PARTS
)
from reid.utils.data.pose import NUM_KEYPOINTS


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
