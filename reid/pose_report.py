"""The files of a pose run: pose file paths and job planning, the per-image status log, the
summary and the HTML preview.

Every processed image gets one line in ``<pose dir>/pose_status.jsonl``: ``{"image", "status",
...}`` with status ``accepted`` (a skeleton was written), ``rejected`` (a skeleton was found but
cannot be the crop's person: ``reason`` says why, ``landmarks`` holds it; the pose file is all
``-1``) or ``no_person`` (nothing was detected). Lines are appended; the last one of an image
wins, so re-runs and ``--overwrite`` need no clean-up. Torch-free.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from reid.errors import ConfigError
from reid.utils.data.images import read_image
from reid.utils.html import HTML
from reid.utils.data.pose import KEYPOINT_NAMES, NUM_KEYPOINTS, SKELETON, read_pose_file
from reid.utils.osutils import PathLike, atomic_write, mkdir_if_missing

PREVIEW_STYLE = ("body{font-family:sans-serif}figure{display:inline-block;margin:6px;text-align:center}"
                 "figcaption{font-size:12px;max-width:200px;overflow-wrap:anywhere}")

STATUS_LOG_NAME = "pose_status.jsonl"
ACCEPTED, REJECTED, NO_PERSON = "accepted", "rejected", "no_person"


def pose_path_for(image_path: PathLike, output_dir: PathLike) -> str:
    """The pose file of an image: ``<output_dir>/<image stem>.txt``."""
    stem = os.path.splitext(os.path.basename(os.fspath(image_path)))[0]
    return os.path.join(os.fspath(output_dir), stem + ".txt")


def check_unique_stems(image_paths: Sequence[PathLike]) -> None:
    """Raise :class:`ConfigError` if two images would share a pose file (same stem)."""
    seen: Dict[str, str] = {}
    for p in image_paths:
        stem = os.path.splitext(os.path.basename(os.fspath(p)))[0]
        if stem in seen:
            raise ConfigError(f"{seen[stem]} and {os.fspath(p)} would both write {stem}.txt; rename one")
        seen[stem] = os.fspath(p)


def plan_pose_jobs(image_paths: Sequence[PathLike], output_dir: PathLike,
                   overwrite: bool = False) -> Tuple[List[str], List[str]]:
    """Split images into those still to process and those whose pose file already exists.

    A pose file that exists is complete: files are written atomically.

    Args:
        image_paths: the images.
        output_dir: folder of the pose files.
        overwrite: process every image again.

    Returns:
        ``(todo, done)``: lists of image paths, in input order.
    """
    check_unique_stems(image_paths)
    todo, done = [], []
    for p in image_paths:
        p = os.fspath(p)
        (done if not overwrite and os.path.isfile(pose_path_for(p, output_dir)) else todo).append(p)
    return todo, done


def append_status(output_dir: PathLike, record: Dict[str, Any]) -> None:
    """Append one image's status record to the log of ``output_dir``.

    One ``write`` of one line on a file opened for appending, so worker processes writing at the
    same time do not interleave their lines.
    """
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
    fd = os.open(os.path.join(os.fspath(output_dir), STATUS_LOG_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_status_log(output_dir: PathLike) -> Dict[str, Dict[str, Any]]:
    """The last status record of each image name in the log of ``output_dir`` (empty if none).

    A line cut short by a killed process is skipped.
    """
    path = os.path.join(os.fspath(output_dir), STATUS_LOG_NAME)
    records: Dict[str, Dict[str, Any]] = {}
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("image"), str):
                records[record["image"]] = record
    return records


def summarize_poses(image_paths: Sequence[PathLike], output_dir: PathLike) -> Dict[str, Any]:
    """Coverage statistics of the pose files of a set of images.

    Args:
        image_paths: the images; those without a pose file are listed under ``missing_pose_files``.
        output_dir: folder of the pose files (and of the status log, if any).

    Returns:
        A JSON-ready dict: ``num_images``, ``num_with_pose_file``, ``no_person`` (file names of
        images whose pose file has no keypoint at all and no skeleton was rejected), ``rejected``
        (``{"image", "reason"}`` of images whose skeleton was rejected, per the status log),
        ``retried`` (file names whose skeleton was accepted on a retry), ``missing_pose_files``
        (file names) and ``coverage``: keypoint name -> ``{"count", "fraction"}`` over the images
        with a pose file.

    Raises:
        DatasetError: a pose file is malformed.
    """
    status = read_status_log(output_dir)
    counts = np.zeros(NUM_KEYPOINTS, dtype=np.int64)
    no_person: List[str] = []
    rejected: List[Dict[str, str]] = []
    retried: List[str] = []
    missing: List[str] = []
    n_files = 0
    for p in image_paths:
        name = os.path.basename(os.fspath(p))
        pose_file = pose_path_for(p, output_dir)
        if not os.path.isfile(pose_file):
            missing.append(name)
            continue
        present = (read_pose_file(pose_file) >= 0).all(axis=1)
        n_files += 1
        counts += present
        record = status.get(name, {})
        if present.any():
            if record.get("status") == ACCEPTED and record.get("attempt") not in (None, "plain"):
                retried.append(name)
        elif record.get("status") == REJECTED:
            rejected.append({"image": name, "reason": str(record.get("reason", ""))})
        else:
            no_person.append(name)
    coverage = {name: {"count": int(c), "fraction": round(float(c) / n_files, 4) if n_files else 0.0}
                for name, c in zip(KEYPOINT_NAMES, counts)}
    return {"num_images": len(image_paths), "num_with_pose_file": n_files, "no_person": no_person,
            "rejected": rejected, "retried": retried, "missing_pose_files": missing, "coverage": coverage}


def format_coverage_table(summary: Dict[str, Any]) -> str:
    """The per-keypoint coverage of :func:`summarize_poses` as a plain-text table."""
    width = max(len(n) for n in KEYPOINT_NAMES)
    lines = [f"{'keypoint':<{width}}  {'found':>8}  {'coverage':>8}", "-" * (width + 20)]
    for name in KEYPOINT_NAMES:
        c = summary["coverage"][name]
        lines.append(f"{name:<{width}}  {c['count']:>8d}  {100 * c['fraction']:>7.1f}%")
    return "\n".join(lines)


# Colours per limb in SKELETON order: right side warm, left side cool, head green.
_RIGHT, _LEFT, _CENTRE, _HEAD = (230, 60, 40), (40, 120, 230), (240, 200, 40), (60, 200, 90)
_LIMB_COLOURS = (_CENTRE, _RIGHT, _RIGHT, _RIGHT, _LEFT, _LEFT, _LEFT, _RIGHT, _RIGHT, _RIGHT,
                 _LEFT, _LEFT, _LEFT, _HEAD, _HEAD, _HEAD, _HEAD)


def draw_skeleton(image: Image.Image, landmarks: np.ndarray, height: int = 256) -> Image.Image:
    """A copy of ``image`` resized to ``height`` pixels (aspect kept) with the skeleton drawn.

    Args:
        image: the image the landmarks refer to.
        landmarks: ``(18, 2)`` (row, col) in that image's pixels; negative = missing.
        height: height of the returned thumbnail.
    """
    scale = height / image.height
    thumb = image.convert("RGB").resize((max(1, round(image.width * scale)), height), Image.BILINEAR)
    draw = ImageDraw.Draw(thumb)
    pts = np.asarray(landmarks, dtype=np.float64)
    present = (pts >= 0).all(axis=1)
    xy = [(c * scale, r * scale) for r, c in pts]
    line_w = max(2, height // 100)
    for (a, b), colour in zip(SKELETON, _LIMB_COLOURS):
        if present[a] and present[b]:
            draw.line([xy[a], xy[b]], fill=colour, width=line_w)
    rad = line_w + 1
    for k in np.flatnonzero(present):
        x, y = xy[k]
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=(255, 255, 255), outline=(0, 0, 0))
    return thumb


def _rejected_landmarks(record: Dict[str, Any]) -> Optional[np.ndarray]:
    try:
        pts = np.asarray(record.get("landmarks"), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return pts if pts.shape == (NUM_KEYPOINTS, 2) and np.isfinite(pts).all() else None


def write_pose_preview(image_paths: Sequence[PathLike], output_dir: PathLike, preview_dir: PathLike,
                       num_images: int = 16, seed: int = 0, thumb_height: int = 256) -> Optional[str]:
    """Write ``index.html`` with thumbnails of randomly chosen images and their skeletons.

    Three sections: images with a skeleton, rejected skeletons (drawn, with the reason; see
    :func:`summarize_poses`) and images with no person; each shows up to ``num_images`` images.

    Args:
        image_paths: images to choose from (those without a pose file are ignored).
        output_dir: folder of their pose files.
        preview_dir: folder for the PNG thumbnails and ``index.html`` (created if missing).
        num_images: how many images to show per section (all if fewer exist); 0 writes nothing.
        seed: seed of the random choice, so that a re-run shows the same images.
        thumb_height: thumbnail height in pixels.

    Returns:
        Path of ``index.html``, or ``None`` if nothing was written.
    """
    candidates = [os.fspath(p) for p in image_paths if os.path.isfile(pose_path_for(p, output_dir))]
    if num_images <= 0 or not candidates:
        return None
    status = read_status_log(output_dir)
    groups: Dict[str, List[tuple]] = {ACCEPTED: [], REJECTED: [], NO_PERSON: []}
    for path in candidates:
        name = os.path.basename(path)
        landmarks = read_pose_file(pose_path_for(path, output_dir))
        record = status.get(name, {})
        if (landmarks >= 0).any():
            groups[ACCEPTED].append((path, landmarks, ""))
        elif record.get("status") == REJECTED:
            drawn = _rejected_landmarks(record)
            groups[REJECTED].append((path, landmarks if drawn is None else drawn, str(record.get("reason", ""))))
        else:
            groups[NO_PERSON].append((path, landmarks, ""))
    preview_dir = os.fspath(preview_dir)
    mkdir_if_missing(preview_dir)
    rng = random.Random(seed)
    titles = {ACCEPTED: "Skeletons", REJECTED: "Rejected skeletons (written as no person)", NO_PERSON: "No person"}
    chosen = {key: sorted(rng.sample(items, min(num_images, len(items))), key=lambda item: item[0])
              for key, items in groups.items()}
    page = HTML(preview_dir, "Pose preview", style=PREVIEW_STYLE)
    page.add_header(f"Pose preview: {sum(map(len, chosen.values()))} of {len(candidates)} images", level=1)
    page.add_paragraph("right side red, left side blue, head green; white dots are detected keypoints.")
    for key, items in groups.items():
        page.add_header(f"{titles[key]}: {len(chosen[key])} of {len(items)}", level=2, anchor=key)
        for path, landmarks, reason in chosen[key]:
            name = os.path.basename(path)
            thumb_name = os.path.splitext(name)[0] + ".png"
            with atomic_write(os.path.join(preview_dir, thumb_name), "wb") as f:
                draw_skeleton(read_image(path), landmarks, thumb_height).save(f, format="PNG")
            found = int((landmarks >= 0).all(axis=1).sum())
            page.add_figure(thumb_name, [name, reason or f"{found}/{NUM_KEYPOINTS} keypoints"], alt=name,
                            height=thumb_height)
    index = page.save()
    return index
