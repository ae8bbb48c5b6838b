"""Drawing one synthetic person: backgrounds, part colours and the supersampled render."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from reid.datasets.synthetic_render.appearance import (
    Appearance, BAG, CameraStyle, HAIR, HAT, HEAD, LOGO, L_FARM, L_FOOT, L_HAND, L_SHIN, L_THIGH,
    L_UARM, NECK, NUM_PARTS, OCCLUDER, PELVIS, R_FARM, R_FOOT, R_HAND, R_SHIN, R_THIGH, R_UARM,
    Rendering, STRAP, SUPERSAMPLE, TORSO, View
)
from reid.datasets.synthetic_render.geometry import _Projector, _build_scene, _keypoints, _pose_joints


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
