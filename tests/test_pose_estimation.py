"""reid.pose_estimation without mediapipe: the 33 -> 18 mapping, missing-point rules, job planning,
summary, preview page, the CLI's argument errors, and that none of it needs torch.

The real estimator is tested in test_generate_poses.py (under .venv-pose).
"""
from __future__ import annotations

import html.parser
import importlib.util
import os
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from helpers import timeout
from reid import pose_estimation as pe
from reid.errors import ConfigError, DatasetError
from reid.pose_plausibility import PlausibilityLimits
from reid.utils.data.pose import KEYPOINT_NAMES, read_pose_file, write_pose_file
from tests.browser import is_blank, screenshot

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The mapping written out by name, independently of pe.BLAZEPOSE_INDEX (BlazePose numbering:
# 0 nose, 2/5 left/right eye, 7/8 left/right ear, 11-16 shoulders/elbows/wrists (odd = left),
# 23-28 hips/knees/ankles (odd = left)).
EXPECTED_SOURCE = {
    "nose": 0, "right_shoulder": 12, "right_elbow": 14, "right_wrist": 16,
    "left_shoulder": 11, "left_elbow": 13, "left_wrist": 15,
    "right_hip": 24, "right_knee": 26, "right_ankle": 28,
    "left_hip": 23, "left_knee": 25, "left_ankle": 27,
    "right_eye": 5, "left_eye": 2, "right_ear": 8, "left_ear": 7,
}


def distinct_landmarks(visibility: float = 0.9, with_z: bool = True) -> np.ndarray:
    """33 landmarks, all visible, each at its own spot inside the image."""
    i = np.arange(33, dtype=np.float64)
    x = 0.05 + 0.9 * i / 32          # 0.05 .. 0.95, increasing
    y = 0.95 - 0.9 * ((i * 7) % 33) / 32  # a permutation, so rows and cols are not tied
    cols = [x, y, np.zeros(33), np.full(33, visibility)] if with_z else [x, y, np.full(33, visibility)]
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------------------------------------
# blazepose_to_coco18

def test_mapping_table_puts_each_blazepose_point_in_its_coco18_slot() -> None:
    lm = distinct_landmarks()
    h, w = 128, 64
    out = pe.blazepose_to_coco18(lm, h, w)
    assert out.shape == (18, 2) and out.dtype == np.float32
    for name, src in EXPECTED_SOURCE.items():
        k = KEYPOINT_NAMES.index(name)
        np.testing.assert_allclose(out[k], (lm[src, 1] * h, lm[src, 0] * w), rtol=1e-6, err_msg=name)
    assert set(EXPECTED_SOURCE) | {"neck"} == set(KEYPOINT_NAMES)


def test_three_column_input_without_z_gives_the_same_result() -> None:
    np.testing.assert_array_equal(pe.blazepose_to_coco18(distinct_landmarks(with_z=True), 100, 50),
                                  pe.blazepose_to_coco18(distinct_landmarks(with_z=False), 100, 50))


def test_neck_is_the_midpoint_of_the_shoulders() -> None:
    lm = distinct_landmarks()
    lm[11, :2] = (0.25, 0.5)   # left shoulder: x, y
    lm[12, :2] = (0.75, 0.25)  # right shoulder
    out = pe.blazepose_to_coco18(lm, 200, 100)
    np.testing.assert_allclose(out[KEYPOINT_NAMES.index("neck")], ((100 + 50) / 2, (25 + 75) / 2))


@pytest.mark.parametrize("shoulder", [11, 12])
@pytest.mark.parametrize("how", ["invisible", "outside"])
def test_neck_is_missing_when_one_shoulder_is_missing(shoulder: int, how: str) -> None:
    lm = distinct_landmarks()
    if how == "invisible":
        lm[shoulder, 3] = 0.1
    else:
        lm[shoulder, 0] = 1.2
    out = pe.blazepose_to_coco18(lm, 128, 64)
    missing_name = "left_shoulder" if shoulder == 11 else "right_shoulder"
    other_name = "right_shoulder" if shoulder == 11 else "left_shoulder"
    assert out[KEYPOINT_NAMES.index("neck")].tolist() == [-1, -1]
    assert out[KEYPOINT_NAMES.index(missing_name)].tolist() == [-1, -1]
    assert (out[KEYPOINT_NAMES.index(other_name)] >= 0).all()


def test_visibility_threshold_is_inclusive_and_configurable() -> None:
    lm = distinct_landmarks()
    lm[0, 3] = 0.5        # nose exactly at the default threshold: kept
    lm[5, 3] = 0.4999     # right eye just below: missing
    lm[2, 3] = 0.7        # left eye
    out = pe.blazepose_to_coco18(lm, 128, 64)
    assert (out[KEYPOINT_NAMES.index("nose")] >= 0).all()
    assert out[KEYPOINT_NAMES.index("right_eye")].tolist() == [-1, -1]
    assert (out[KEYPOINT_NAMES.index("left_eye")] >= 0).all()
    strict = pe.blazepose_to_coco18(lm, 128, 64, min_visibility=0.8)
    assert strict[KEYPOINT_NAMES.index("left_eye")].tolist() == [-1, -1]
    assert strict[KEYPOINT_NAMES.index("nose")].tolist() == [-1, -1]
    # every other point has visibility 0.9
    assert (strict[KEYPOINT_NAMES.index("left_knee")] >= 0).all()
    assert (pe.blazepose_to_coco18(distinct_landmarks(visibility=0.2), 10, 10) == -1).all()


@pytest.mark.parametrize("x, y, kept", [
    (0.0, 0.0, True),           # top-left corner pixel
    (0.999, 0.999, True),       # last pixel
    (1.0, 0.5, False),          # col == width: outside
    (0.5, 1.0, False),          # row == height
    (-0.01, 0.5, False),
    (0.5, -0.2, False),
    (1.7, 2.0, False),
    (float("nan"), 0.5, False),
])
def test_points_outside_the_image_are_missing(x: float, y: float, kept: bool) -> None:
    lm = distinct_landmarks()
    lm[26, :2] = (x, y)  # right knee
    out = pe.blazepose_to_coco18(lm, 128, 64)
    knee = out[KEYPOINT_NAMES.index("right_knee")]
    if kept:
        np.testing.assert_allclose(knee, (y * 128, x * 64), rtol=1e-6)
    else:
        assert knee.tolist() == [-1, -1]


def test_nan_visibility_counts_as_missing() -> None:
    lm = distinct_landmarks()
    lm[0, 3] = np.nan
    assert pe.blazepose_to_coco18(lm, 64, 64)[0].tolist() == [-1, -1]


@pytest.mark.parametrize("shape", [(33, 2), (33, 5), (18, 4), (33,)])
def test_wrong_landmark_shape_is_rejected(shape: tuple) -> None:
    with pytest.raises(ValueError, match="33"):
        pe.blazepose_to_coco18(np.zeros(shape), 128, 64)


def test_mapped_pose_round_trips_through_a_pose_file(tmp_path) -> None:
    lm = distinct_landmarks()
    lm[13, 3] = 0.0  # left elbow missing
    out = pe.blazepose_to_coco18(lm, 128, 64)
    write_pose_file(tmp_path / "a.txt", out)
    np.testing.assert_allclose(read_pose_file(tmp_path / "a.txt"), out, atol=0.006)


# ---------------------------------------------------------------------------------------------
# padding

def test_pad_to_square_centres_a_tall_crop() -> None:
    img = np.full((128, 64, 3), 200, dtype=np.uint8)
    padded, top, left = pe.pad_to_square(img)
    assert padded.shape == (128, 128, 3) and (top, left) == (0, 32)
    assert (padded[:, 32:96] == 200).all() and (padded[:, :32] == 0).all() and (padded[:, 96:] == 0).all()


def test_pad_to_square_centres_a_wide_image_and_keeps_a_square_one() -> None:
    padded, top, left = pe.pad_to_square(np.ones((51, 100, 3), dtype=np.uint8))
    assert padded.shape == (100, 100, 3) and (top, left) == (24, 0)
    assert padded[24:75].all() and not padded[:24].any() and not padded[75:].any()
    sq = np.ones((40, 40, 3), dtype=np.uint8)
    same, top, left = pe.pad_to_square(sq)
    assert same is sq and (top, left) == (0, 0)


# ---------------------------------------------------------------------------------------------
# inputs and job planning

def _save_image(path, colour=(90, 120, 150), size=(32, 64)) -> str:
    Image.new("RGB", size, colour).save(path)
    return str(path)


def test_plan_skips_images_with_a_pose_file_unless_overwrite(tmp_path) -> None:
    images = [str(tmp_path / f"{i:08d}_00_0000.jpg") for i in range(4)]
    out = tmp_path / "poses"
    write_pose_file(out / "00000001_00_0000.txt", np.full((18, 2), -1.0))
    write_pose_file(out / "00000003_00_0000.txt", np.full((18, 2), -1.0))
    (out / ".00000002_00_0000.txt.abc123.tmp").write_text("half a fi")  # left by a killed writer
    todo, done = pe.plan_pose_jobs(images, out)
    assert todo == [images[0], images[2]] and done == [images[1], images[3]]
    todo, done = pe.plan_pose_jobs(images, out, overwrite=True)
    assert todo == images and done == []


def test_plan_rejects_two_images_with_the_same_stem(tmp_path) -> None:
    with pytest.raises(ConfigError, match="x.txt"):
        pe.plan_pose_jobs([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.png")], tmp_path / "out")


def test_pose_path_for_uses_the_stem() -> None:
    assert pe.pose_path_for("/data/images/00000001_02_0003.jpg", "/data/poses") == "/data/poses/00000001_02_0003.txt"


def test_run_pose_jobs_rejects_bad_options_before_starting_workers(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="-j"):
        list(pe.run_pose_jobs(["a.jpg"], tmp_path, num_workers=0))
    with pytest.raises(ConfigError, match="--min-visibility"):
        list(pe.run_pose_jobs(["a.jpg"], tmp_path, min_visibility=1.5))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mediapipe" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="make setup-pose"):
        list(pe.run_pose_jobs(["a.jpg"], tmp_path))
    with pytest.raises(ConfigError, match="make setup-pose"):
        pe.BlazePoseEstimator()


# ---------------------------------------------------------------------------------------------
# summary and preview

def _pose(present: list) -> np.ndarray:
    pts = np.full((18, 2), -1.0)
    for k in present:
        pts[k] = (10 + k, 5 + k / 2)
    return pts


def test_summary_counts_coverage_and_no_person(tmp_path) -> None:
    images = [str(tmp_path / n) for n in ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]]
    out = tmp_path / "poses"
    write_pose_file(out / "a.txt", _pose([0, 1, 2]))
    write_pose_file(out / "b.txt", _pose([0, 17]))
    write_pose_file(out / "c.txt", _pose([]))
    s = pe.summarize_poses(images, out)
    assert s["num_images"] == 4 and s["num_with_pose_file"] == 3
    assert s["no_person"] == ["c.jpg"] and s["missing_pose_files"] == ["d.jpg"]
    assert s["coverage"]["nose"] == {"count": 2, "fraction": round(2 / 3, 4)}
    assert s["coverage"]["neck"]["count"] == 1 and s["coverage"]["left_ear"]["count"] == 1
    assert s["coverage"]["left_ankle"] == {"count": 0, "fraction": 0.0}
    table = pe.format_coverage_table(s).splitlines()
    assert len(table) == 2 + 18
    assert table[2].split() == ["nose", "2", "66.7%"]
    assert table[-1].split() == ["left_ear", "1", "33.3%"]


def test_summary_of_malformed_pose_file_is_a_dataset_error(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("1 2\n")
    with pytest.raises(DatasetError, match="a.txt"):
        pe.summarize_poses([str(tmp_path / "a.jpg")], tmp_path)


class _ImgSources(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_preview_escapes_names_and_every_img_src_exists(tmp_path) -> None:
    img_dir, out = tmp_path / "images", tmp_path / "poses"
    img_dir.mkdir()
    names = ["plain.jpg", 'odd & <name> "q" #1%.png', "space name.jpg", "ünï.jpg", "no_pose.jpg"]
    paths = [_save_image(img_dir / n) for n in names]
    for n in names[:-1]:
        write_pose_file(out / (os.path.splitext(n)[0] + ".txt"), _pose([0, 1, 2, 5]))
    index = pe.write_pose_preview(paths, out, tmp_path / "preview", num_images=16)
    assert index == str(tmp_path / "preview" / "index.html")
    text = open(index, encoding="utf-8").read()
    assert "odd &amp; &lt;name&gt; &quot;q&quot; #1%.png" in text
    assert "<name>" not in text
    parser = _ImgSources()
    parser.feed(text)
    assert len(parser.srcs) == 4  # the image without a pose file is not shown
    for src in parser.srcs:
        assert "/" not in src and " " not in src and "#" not in src.replace("%23", "")
        thumb = tmp_path / "preview" / urllib.parse.unquote(src)
        assert thumb.is_file()
        with Image.open(thumb) as im:
            assert im.format == "PNG" and im.height == 256
    assert sorted(urllib.parse.unquote(s) for s in parser.srcs) == sorted(
        os.path.splitext(n)[0] + ".png" for n in names[:-1])


def test_preview_chooses_n_images_reproducibly(tmp_path) -> None:
    out = tmp_path / "poses"
    paths = []
    for i in range(10):
        paths.append(_save_image(tmp_path / f"{i}.jpg"))
        write_pose_file(out / f"{i}.txt", _pose([0]))

    def chosen(seed: int) -> list:
        index = pe.write_pose_preview(paths, out, tmp_path / f"prev{seed}", num_images=3, seed=seed)
        parser = _ImgSources()
        parser.feed(open(index, encoding="utf-8").read())
        return parser.srcs

    assert len(chosen(0)) == 3
    assert chosen(0) == chosen(0)
    assert pe.write_pose_preview(paths, out, tmp_path / "none", num_images=0) is None
    assert not (tmp_path / "none").exists()


def test_preview_page_shows_its_thumbnails_in_a_browser(tmp_path) -> None:
    """Rendered in headless chromium: both thumbnails load through their quoted, escaped src."""
    out = tmp_path / "poses"
    red = _save_image(tmp_path / 'red <i>"x" & #1%.png', colour=(255, 0, 0))
    green = _save_image(tmp_path / "green 50% #2.png", colour=(0, 200, 0))
    for path in (red, green):
        write_pose_file(pe.pose_path_for(path, out), _pose([]))
    index = pe.write_pose_preview([red, green], out, tmp_path / "preview")
    shot = screenshot(index, tmp_path / "shot.png", width=1000, height=700)
    assert not is_blank(shot)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # each thumbnail is 128 x 256 CSS px of one colour
    assert (np.abs(pixels - [255, 0, 0]).max(axis=2) <= 8).sum() > 20000
    assert (np.abs(pixels - [0, 200, 0]).max(axis=2) <= 8).sum() > 20000


def test_draw_skeleton_draws_only_present_points() -> None:
    img = Image.new("RGB", (64, 128), (0, 0, 0))
    blank = np.asarray(pe.draw_skeleton(img, np.full((18, 2), -1.0)))
    assert blank.shape == (256, 128, 3) and not blank.any()
    pts = np.full((18, 2), -1.0)
    pts[0] = (20, 32)   # nose
    pts[1] = (40, 32)   # neck
    drawn = np.asarray(pe.draw_skeleton(img, pts))
    # the nose-neck limb is drawn between rows 40 and 80 of the 2x thumbnail, at column 64
    assert drawn[60, 64].any() and not drawn[200, 64].any()


# ---------------------------------------------------------------------------------------------
# plausibility of a skeleton (reid.pose_plausibility)

def upright_body(scale: float = 1.0, top: float = 0.1) -> np.ndarray:
    """33 landmarks (x, y, z, visibility) of a standing person: nose at ``top``, ankles at
    ``top + 0.8 * scale`` (crop heights), torso centred at x = 0.5."""
    lm = np.tile([0.5, top + 0.3 * scale, 0.0, 0.9], (33, 1))
    rows = {0: 0.0, 11: 0.12, 12: 0.12, 23: 0.4, 24: 0.4, 25: 0.6, 26: 0.6, 27: 0.8, 28: 0.8}
    for idx, dy in rows.items():
        lm[idx, 1] = top + dy * scale
        lm[idx, 0] = 0.4 if idx % 2 else 0.6
    return lm


def test_an_upright_person_filling_the_crop_is_plausible() -> None:
    assert pe.implausibility(upright_body(), score=0.9, min_score=0.5) is None
    # a body cut by the crop's lower edge: knees and ankles predicted below it
    assert pe.implausibility(upright_body(scale=2.0), score=0.9, min_score=0.5) is None


def test_a_small_skeleton_is_rejected_with_its_height() -> None:
    # nose-to-ankles 0.8 * 0.25 = 0.20 of the crop: the "skeleton on a wheel"
    reason = pe.implausibility(upright_body(scale=0.25, top=0.5), score=0.9, min_score=0.5)
    assert reason == "height 0.20 of the crop < 0.50"
    limits = PlausibilityLimits(min_height_fraction=0.15)
    assert pe.implausibility(upright_body(scale=0.25, top=0.5), 0.9, 0.5, limits) is None


def test_a_skeleton_out_of_vertical_order_is_rejected() -> None:
    lm = upright_body()
    lm[[23, 24], 1] = 0.05  # hips above the nose
    assert pe.implausibility(lm, 0.9, 0.5) == "vertical order: hips not below shoulders"
    # points predicted outside the crop's rows are not compared
    lm = upright_body()
    lm[[25, 26], 1] = -0.3
    assert pe.implausibility(lm, 0.9, 0.5) is None
    flipped = upright_body()
    flipped[:, 1] = 1.0 - flipped[:, 1]  # upside down
    assert pe.implausibility(flipped, 0.9, 0.5).startswith("vertical order: shoulders not below nose")
    assert pe.implausibility(flipped, 0.9, 0.5, PlausibilityLimits(check_order=False)) is None


def test_score_visibility_and_centre_are_checked() -> None:
    assert pe.implausibility(upright_body(), 0.44, 0.5) == "detector score 0.44 < 0.50"
    lm = upright_body()
    lm[[11, 12], 3] = (0.2, 0.6)  # mean 0.4
    assert pe.implausibility(lm, 0.9, 0.5) == "shoulder visibility 0.40 < 0.50"
    lm = upright_body()
    lm[:, 0] += 0.7  # torso centre at x = 1.2
    assert pe.implausibility(lm, 0.9, 0.5) == "body centre outside the crop (x = 1.20 of its width)"
    lm = upright_body()
    lm[3, 1] = np.nan
    assert pe.implausibility(lm, 0.9, 0.5) == "non-finite landmarks"


def test_plausibility_limits_are_range_checked() -> None:
    with pytest.raises(ConfigError, match="--min-height-fraction"):
        PlausibilityLimits(min_height_fraction=-0.1)
    with pytest.raises(ConfigError, match="--min-shoulder-visibility"):
        PlausibilityLimits(min_shoulder_visibility=1.5)


def test_sharpened_upscale_enlarges_by_a_whole_factor() -> None:
    img = np.zeros((128, 64, 3), dtype=np.uint8)
    img[:, 32:] = 200
    up = pe.sharpened_upscale(img)
    assert up.shape == (512, 256, 3) and up.dtype == np.uint8
    assert pe.sharpened_upscale(np.zeros((600, 300, 3), dtype=np.uint8)).shape == (600, 300, 3)
    # the unsharp mask overshoots at the edge: darker than 0 is clipped, brighter than 200 shows
    assert up[:, 128:140].max() > 200 and up[:, :100].max() == 0


def test_pad_to_square_with_a_margin() -> None:
    padded, top, left = pe.pad_to_square(np.ones((100, 50, 3), dtype=np.uint8), margin=0.3)
    assert padded.shape == (130, 130, 3) and (top, left) == (15, 40)
    assert padded.sum() == 100 * 50 * 3


# ---------------------------------------------------------------------------------------------
# the status log: rejected skeletons apart from "no person"

def test_summary_and_preview_list_rejected_apart_from_no_person(tmp_path) -> None:
    out = tmp_path / "poses"
    paths = [_save_image(tmp_path / f"{n}.jpg") for n in ("ok", "retried", "rejected", "empty", "old")]
    write_pose_file(out / "ok.txt", _pose([0, 1]))
    write_pose_file(out / "retried.txt", _pose([0]))
    for stem in ("rejected", "empty", "old"):
        write_pose_file(out / f"{stem}.txt", _pose([]))
    skeleton = _pose([0, 1, 2]).tolist()
    for record in [{"image": "ok.jpg", "status": "accepted", "attempt": "plain"},
                   {"image": "retried.jpg", "status": "accepted", "attempt": "sharpened"},
                   {"image": "old.jpg", "status": "rejected", "reason": "stale"},
                   {"image": "rejected.jpg", "status": "rejected", "reason": "height 0.20 of the crop < 0.50",
                    "landmarks": skeleton},
                   {"image": "empty.jpg", "status": "no_person"},
                   {"image": "old.jpg", "status": "no_person"}]:  # the last record of an image wins
        pe.append_status(out, record)
    with open(out / "pose_status.jsonl", "a", encoding="utf-8") as f:
        f.write('{"image": "ok.jpg", "sta')  # cut short by a killed run
    s = pe.summarize_poses(paths, out)
    assert s["rejected"] == [{"image": "rejected.jpg", "reason": "height 0.20 of the crop < 0.50"}]
    assert s["no_person"] == ["empty.jpg", "old.jpg"] and s["retried"] == ["retried.jpg"]
    index = pe.write_pose_preview(paths, out, tmp_path / "preview")
    text = open(index, encoding="utf-8").read()
    assert "Skeletons: 2 of 2" in text and "Rejected skeletons (written as no person): 1 of 1" in text
    assert "No person: 2 of 2" in text
    rejected_section = text[text.index('id="rejected"'):text.index('id="no_person"')]
    assert "rejected.jpg" in rejected_section and "height 0.20 of the crop &lt; 0.50" in rejected_section
    # the rejected skeleton is drawn on its thumbnail (the plain image is one flat colour)
    with Image.open(tmp_path / "preview" / "rejected.png") as thumb, Image.open(tmp_path / "preview" / "empty.png") as flat:
        assert len(thumb.getcolors(1 << 16)) > 1 and len(flat.getcolors(1 << 16)) == 1


# ---------------------------------------------------------------------------------------------
# torch-free imports and the CLI's argument errors (no estimator needed)

def test_pose_code_imports_without_torch() -> None:
    code = (
        "import sys, runpy\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "sys.modules['torchvision'] = None\n"
        "import reid.pose_estimation, reid.errors, reid.utils.osutils, reid.utils.data.pose, "
        "reid.utils.data.images, reid.utils.logging\n"
        "runpy.run_path('scripts/generate_poses.py', run_name='not_main')\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout(120),
                       env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def _cli_main():
    spec = importlib.util.spec_from_file_location("generate_poses_cli", os.path.join(REPO_ROOT, "scripts",
                                                                                       "generate_poses.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("argv, message", [
    (["--images", "IMG"], "--images needs --output"),
    (["--dataset-dir", "NOPE"], "images: not found"),
    (["--dataset-dir", "DS", "--output", "x"], "--output applies only to --images"),
    (["--images", "missing.jpg", "--output", "OUT"], "missing.jpg: image file not found"),
    (["--images", "IMG", "IMG/a.jpg", "--output", "OUT"], "either one folder or image files"),
    (["--images", "IMG", "--output", "OUT", "--min-visibility", "2"], "--min-visibility must be in [0, 1]"),
    (["--images", "IMG", "--output", "OUT", "-j", "0"], "-j/--workers must be at least 1"),
    (["--images", "EMPTY", "--output", "OUT"], "no image files"),
    (["--images", "IMG", "--output", "OUT", "--retry-detection-confidence", "-1"],
     "--retry-detection-confidence must be in [0, 1]"),
    (["--images", "IMG", "--output", "OUT", "--min-height-fraction", "-1"], "--min-height-fraction must be in"),
    (["--images", "IMG", "--output", "OUT", "--min-shoulder-visibility", "2"], "--min-shoulder-visibility must be in"),
])
def test_cli_argument_errors_exit_2_with_one_line(tmp_path, capsys, argv, message) -> None:
    (tmp_path / "IMG").mkdir()
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "DS" / "images").mkdir(parents=True)
    _save_image(tmp_path / "IMG" / "a.jpg")
    argv = [str(tmp_path / a) if a.isupper() or a.startswith(("IMG", "missing")) else a for a in argv]
    assert _cli_main()(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "OUT").exists()
