"""The synthetic pedestrian dataset: determinism, split structure, keypoint geometry, learnability."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List

import numpy as np
import pytest
from PIL import Image

from conftest import (SYNTHETIC_HEIGHT, SYNTHETIC_IMAGES_PER_CAM, SYNTHETIC_NUM_CAMS, SYNTHETIC_NUM_IDS,
                      SYNTHETIC_WIDTH)
from helpers import load_json, load_script
from reid.datasets import synthetic_render as sr
from reid.errors import ConfigError, DatasetError
from reid.utils.data.pose import read_pose_file

R_SHOULDER, L_SHOULDER, NOSE, R_EYE, L_EYE, R_EAR, L_EAR = 2, 5, 0, 14, 15, 16, 17


def tree_bytes(root: str) -> Dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_same_seed_same_bytes(tmp_path: Any) -> None:
    cfg = sr.SyntheticConfig(num_ids=6, num_cams=2, images_per_cam=1, height=64, width=32, seed=7)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    sr.generate_synthetic_dataset(a, cfg)
    sr.generate_synthetic_dataset(b, cfg)
    files_a, files_b = tree_bytes(a), tree_bytes(b)
    # 7 identities (6 + 1 distractor), each in both cameras: 14 images, 14 pose files, meta, splits
    assert len(files_a) == 14 + 14 + 2
    assert files_a == files_b
    c = str(tmp_path / "c")
    sr.generate_synthetic_dataset(c, dataclasses.replace(cfg, seed=8))
    files_c = tree_bytes(c)
    assert files_c.keys() == files_a.keys()
    assert all(files_c[k] != files_a[k] for k in files_a if k.startswith("images"))


def test_rerun_and_force(tmp_path: Any) -> None:
    root = str(tmp_path / "synthetic")
    cfg = sr.SyntheticConfig(num_ids=4, num_cams=2, images_per_cam=1, height=32, width=16)
    assert sr.generate_synthetic_dataset(root, cfg)["skipped"] is False
    assert sr.generate_synthetic_dataset(root, cfg)["skipped"] is True
    bigger = dataclasses.replace(cfg, num_ids=6)
    with pytest.raises(DatasetError, match="--force"):
        sr.generate_synthetic_dataset(root, bigger)
    summary = sr.generate_synthetic_dataset(root, bigger, force=True)
    assert summary["num_identities"] == 7 and summary["num_images"] == 14
    assert len(os.listdir(os.path.join(root, "images"))) == 14
    assert sorted(os.listdir(tmp_path)) == ["synthetic"]  # no .partial / .old left behind


@pytest.mark.parametrize("kwargs, flag", [
    (dict(num_ids=1), "--num-ids"), (dict(num_cams=1), "--num-cams"), (dict(images_per_cam=0), "--images-per-cam"),
    (dict(height=16), "--height"), (dict(num_distractors=-1), "--num-distractors"),
])
def test_bad_settings(tmp_path: Any, kwargs: Dict[str, int], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        sr.generate_synthetic_dataset(str(tmp_path / "s"), sr.SyntheticConfig(**kwargs))


def test_cli_reports_errors(tmp_path: Any, capsys: pytest.CaptureFixture) -> None:
    cli = load_script("make_synthetic_dataset")
    assert cli.main(["--root", str(tmp_path / "s"), "--num-cams", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --num-cams 1")
    assert cli.main(["--root", str(tmp_path / "s"), "--num-ids", "4", "--num-cams", "2",
                     "--images-per-cam", "1", "--height", "32", "--width", "16"]) == 0
    assert len(os.listdir(tmp_path / "s" / "poses")) == 10  # (4 + 1 distractor) x 2 cameras


def test_split_structure(synthetic_root: str) -> None:
    meta = load_json(os.path.join(synthetic_root, "meta.json"))
    splits = load_json(os.path.join(synthetic_root, "splits.json"))
    num_distractors = max(1, SYNTHETIC_NUM_IDS // 20)
    ids = meta["identities"]
    assert meta["name"] == "synthetic" and meta["num_cameras"] == SYNTHETIC_NUM_CAMS
    assert len(ids) == SYNTHETIC_NUM_IDS + num_distractors
    for pid, cams in enumerate(ids):
        seen = [len(files) for files in cams if files]
        assert 2 <= len(seen) <= SYNTHETIC_NUM_CAMS  # every identity is seen by at least two cameras
        assert set(seen) == {SYNTHETIC_IMAGES_PER_CAM}
        for cam, files in enumerate(cams):
            assert files == [f"{pid:08d}_{cam:02d}_{i:04d}.jpg" for i in range(len(files))]
    assert len(splits) == 1
    split = splits[0]
    half = SYNTHETIC_NUM_IDS // 2
    assert split["trainval"] == list(range(half))
    assert split["query"] == list(range(half, SYNTHETIC_NUM_IDS))
    assert split["gallery"] == list(range(half, SYNTHETIC_NUM_IDS + num_distractors))
    assert not set(split["trainval"]) & set(split["gallery"])
    where = {f: (pid, cam) for pid, cams in enumerate(ids) for cam, files in enumerate(cams) for f in files}
    q, g = split["official_query"], split["official_gallery"]
    assert not set(q) & set(g)
    test_files = {f for pid in split["gallery"] for files in ids[pid] for f in files}
    assert set(q) | set(g) == test_files
    for pid in split["query"]:
        mine = [where[f][1] for f in q if where[f][0] == pid]
        cams = [c for c, files in enumerate(ids[pid]) if files]
        total = sum(len(files) for files in ids[pid])
        assert len(mine) == len(set(mine)) == min(len(cams), max(1, total // 4))  # one per camera
        assert any(where[f][0] == pid and where[f][1] not in mine for f in g)  # a cross-camera match exists
    assert all(where[f][0] in split["query"] for f in q)


def test_images_and_pose_files(synthetic_root: str) -> None:
    images = sorted(os.listdir(os.path.join(synthetic_root, "images")))
    poses = sorted(os.listdir(os.path.join(synthetic_root, "poses")))
    assert [os.path.splitext(p)[0] for p in poses] == [os.path.splitext(i)[0] for i in images]
    visible = 0
    for fname in images[:40]:
        with Image.open(os.path.join(synthetic_root, "images", fname)) as img:
            assert img.format == "JPEG" and img.size == (SYNTHETIC_WIDTH, SYNTHETIC_HEIGHT)
        kp = read_pose_file(os.path.join(synthetic_root, "poses", os.path.splitext(fname)[0] + ".txt"))
        shown = kp[:, 0] >= 0
        visible += int(shown.sum())
        assert np.all(kp[shown, 0] <= SYNTHETIC_HEIGHT - 1) and np.all(kp[shown, 1] <= SYNTHETIC_WIDTH - 1)
        assert np.all(kp[~shown] == -1)
    assert visible > 40 * 10  # most keypoints of most images are visible


def test_pose_file_matches_renderer(synthetic_root: str) -> None:
    meta = load_json(os.path.join(synthetic_root, "meta.json"))
    cfg = sr.SyntheticConfig(**{k: v for k, v in meta["synthetic"].items() if k != "version"})
    pid, cam = SYNTHETIC_NUM_IDS - 1, next(c for c, f in enumerate(meta["identities"][SYNTHETIC_NUM_IDS - 1]) if f)
    rendering = sr.render_image(cfg, pid, cam, 0)
    stem = f"{pid:08d}_{cam:02d}_0000"
    kp = read_pose_file(os.path.join(synthetic_root, "poses", stem + ".txt"))
    np.testing.assert_allclose(kp, rendering.keypoints, atol=0.006)
    with Image.open(os.path.join(synthetic_root, "images", stem + ".jpg")) as img:
        decoded = np.asarray(img.convert("RGB")).astype(int)
    assert np.abs(decoded - rendering.image.astype(int)).mean() < 6  # JPEG of the same rendering


# ---- geometry of single renderings

PLAIN_CAMERA = sr.CameraStyle(
    wall=(128, 128, 128), floor=(128, 128, 128), horizon=0.7, wall_texture="plain", floor_texture="plain",
    texture_period=8.0, cast=(1.0, 1.0, 1.0), brightness=1.0, contrast=1.0, blur=0.0, noise=0.0, elevation=0.1,
    yaw_modes=(0.0,), occluder_prob=0.0, light_side=0.0, jpeg_quality=95,
)
PLAIN_APPEARANCE = sr.Appearance(
    shirt=(200, 40, 40), shirt2=(40, 40, 200), pattern="solid", long_sleeves=True, trousers=(40, 40, 80),
    shorts=False, shoes=(20, 20, 20), skin=(230, 190, 150), hair=(30, 20, 20), long_hair=False, height=1.0,
    width=1.0, hat=None, bag="none", bag_colour=(0, 0, 0), bag_side=1,
)


def plain_view(yaw: float, **kw: Any) -> sr.View:
    base = dict(yaw=yaw, phase=0.3, arm_swing=0.3, leg_swing=0.3, scale=0.85, center=0.5, ground=0.96,
                brightness=1.0, bg_shift=(0.0, 0.0), clutter=(), occluder=None, noise_seed=0)
    base.update(kw)
    return sr.View(**base)


def test_keypoints_lie_on_the_body() -> None:
    # Independent of the renderer's own masks: render each person over a black and over a white
    # background; pixels that differ are background, so a keypoint's pixel must not differ (much).
    h, w = 128, 64
    black = np.zeros((2 * h, 2 * w, 3), np.float32)
    white = np.full((2 * h, 2 * w, 3), 255.0, np.float32)
    rng = np.random.default_rng(0)
    fractions: List[float] = []
    for i in range(40):
        app = sr.random_appearance(rng)
        view = dataclasses.replace(sr.random_view(rng, PLAIN_CAMERA), occluder=None, noise_seed=i)
        view = dataclasses.replace(view, yaw=float(rng.uniform(-math.pi, math.pi)))
        on_black = sr.render_person(app, PLAIN_CAMERA, view, h, w, background=black).image.astype(float)
        on_white = sr.render_person(app, PLAIN_CAMERA, view, h, w, background=white).image.astype(float)
        bg_part = (on_white - on_black).mean(axis=2) / 255.0  # = 1 - body coverage
        kp = sr.render_person(app, PLAIN_CAMERA, view, h, w, background=black).keypoints
        for row, col in kp[kp[:, 0] >= 0]:
            frac = 1.0 - bg_part[int(round(row)), int(round(col))]
            assert frac >= 0.25 - 1e-6, (i, row, col, frac)
            fractions.append(frac)
    assert len(fractions) > 40 * 11
    assert np.mean(fractions) > 0.95


def test_front_back_and_side_views() -> None:
    front = sr.render_person(PLAIN_APPEARANCE, PLAIN_CAMERA, plain_view(0.0)).keypoints
    back = sr.render_person(PLAIN_APPEARANCE, PLAIN_CAMERA, plain_view(math.pi)).keypoints
    right = sr.render_person(PLAIN_APPEARANCE, PLAIN_CAMERA, plain_view(math.pi / 2)).keypoints  # walks right
    assert np.all(front >= 0)  # nothing hidden when the person faces the camera
    # facing the camera, the person's right side is on the image's left; from behind, on the right
    assert front[R_SHOULDER, 1] < front[L_SHOULDER, 1]
    assert back[R_SHOULDER, 1] > back[L_SHOULDER, 1]
    # from behind: no nose, no eyes; the ears still show
    assert np.all(back[[NOSE, R_EYE, L_EYE]] == -1) and np.all(back[[R_EAR, L_EAR]] >= 0)
    # walking to the image right shows the person's right side: right eye and ear, not the left ones
    assert np.all(right[[NOSE, R_EYE, R_EAR]] >= 0) and np.all(right[[L_EYE, L_EAR]] == -1)
    assert right[NOSE, 1] > right[R_EAR, 1]  # the nose points the way they walk
    # body proportions: shoulders above hips above knees above ankles, head on top
    for kp in (front, back):
        assert kp[R_EAR, 0] < kp[1, 0] < kp[8, 0] < kp[9, 0] < kp[10, 0]


def test_keypoints_follow_scale_and_crop() -> None:
    a = sr.render_person(PLAIN_APPEARANCE, PLAIN_CAMERA, plain_view(0.0, scale=0.6, center=0.5, ground=0.9))
    b = sr.render_person(PLAIN_APPEARANCE, PLAIN_CAMERA, plain_view(0.0, scale=0.6, center=0.6, ground=0.8))
    shown = (a.keypoints[:, 0] >= 0) & (b.keypoints[:, 0] >= 0)
    # moving the body by 0.1 of the width and -0.1 of the height moves every keypoint by that much
    np.testing.assert_allclose(b.keypoints[shown, 1] - a.keypoints[shown, 1], 0.1 * 64, atol=1e-3)
    np.testing.assert_allclose(b.keypoints[shown, 0] - a.keypoints[shown, 0], -0.1 * 128, atol=1e-3)
    # a person standing below the frame's edge has no visible ankles
    low = sr.render_person(PLAIN_APPEARANCE, PLAIN_CAMERA, plain_view(0.0, ground=1.25)).keypoints
    assert np.all(low[[10, 13]] == -1) and np.all(low[[0, 1, 2, 5]] >= 0)


def test_occluder_hides_keypoints() -> None:
    view = plain_view(0.0, occluder=("ground", 0.6, 0.0, (90, 90, 90)))
    kp = sr.render_person(PLAIN_APPEARANCE, PLAIN_CAMERA, view).keypoints
    assert np.all(kp[[9, 10, 12, 13]] == -1)  # knees and ankles behind the object
    assert np.all(kp[[0, 1, 2, 5]] >= 0)


# ---- learnability


def colour_histogram(img: np.ndarray, bins: int = 4) -> np.ndarray:
    """Grey-world normalised joint RGB histogram of the image's central strip."""
    a = img.astype(np.float64)
    a = np.clip(a / a.reshape(-1, 3).mean(axis=0) * 110, 0, 255)
    h, w, _ = a.shape
    a = a[h // 5:h * 17 // 20, w * 3 // 8:w * 5 // 8]
    q = (a // (256 // bins)).astype(int).reshape(-1, 3)
    hist = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins ** 3).astype(float)
    return hist / hist.sum()


@pytest.mark.slow
def test_colour_histogram_nearest_neighbour_is_above_chance_below_perfect() -> None:
    # 60 identities (30 test + 3 distractors), 4 cameras, 128 x 64: the default settings, fewer ids.
    cfg = sr.SyntheticConfig(num_ids=60, seed=0)
    _, splits, jobs = sr.plan_synthetic(cfg)
    where = {fname: (pid, cam, index) for fname, pid, cam, index in jobs}
    cameras = [sr.random_camera(sr._rng(cfg.seed, 0, c)) for c in range(cfg.num_cams)]
    query, gallery = splits[0]["official_query"], splits[0]["official_gallery"]
    feats = {f: colour_histogram(sr.render_image(cfg, *where[f], cameras).image) for f in query + gallery}
    gp = np.array([where[f][0] for f in gallery])
    gc = np.array([where[f][1] for f in gallery])
    qf = np.stack([feats[f] for f in query])
    gf = np.stack([feats[f] for f in gallery])
    dist = np.abs(qf[:, None, :] - gf[None, :, :]).sum(axis=2)
    hits = []
    for i, f in enumerate(query):
        pid, cam, _ = where[f]
        d = np.where((gp == pid) & (gc == cam), np.inf, dist[i])  # same id and camera is ignored
        hits.append(gp[int(np.argmin(d))] == pid)
    rank1 = float(np.mean(hits))
    chance = 1.0 / len(set(gp.tolist()))
    assert chance < 0.04
    # measured 0.47 for seed 0 (0.26-0.54 over seeds 0-7): far above chance, far from solved
    assert 0.2 <= rank1 <= 0.75, rank1
