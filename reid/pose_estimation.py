"""Pose landmarks for re-ID images with an offline estimator, mediapipe's BlazePose.

The library behind ``scripts/generate_poses.py``. It must stay free of torch: it runs in the
separate ``.venv-pose`` (``make setup-pose``), because mediapipe pins numpy<2 and protobuf<5.

BlazePose predicts 33 landmarks (x, y normalised to the image, z, visibility) and always guesses
all of them; :func:`blazepose_to_coco18` turns them into the 18 OpenPose COCO-18 keypoints of the
release's pose files (spec section 1), marking as missing every point whose visibility is below a
threshold or that falls outside the image. The neck, which BlazePose lacks, is the midpoint of the
two shoulders when both are present.

Pipeline pieces, each usable on its own:

- :class:`BlazePoseEstimator`: one image (PIL or RGB array) -> ``(18, 2)`` (row, col) or ``None``.
- :func:`plan_pose_jobs` / :func:`run_pose_jobs`: resumable, multi-process estimation over many
  images; every pose file is written atomically, an image with no person gets an all ``-1`` file.
- :func:`summarize_poses` / :func:`format_coverage_table`: no-person list and per-keypoint coverage.
- :func:`write_pose_preview`: an HTML page of thumbnails with the skeleton drawn.
"""
from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from reid.errors import ConfigError, DatasetError
from reid.utils.data.images import list_images, read_image  # noqa: F401  (pe.list_images for the CLI)
from reid.utils.html import HTML
from reid.utils.data.pose import KEYPOINT_NAMES, NUM_KEYPOINTS, SKELETON, read_pose_file, write_pose_file
from reid.utils.osutils import PathLike, atomic_write, mkdir_if_missing

logger = logging.getLogger(__name__)

NUM_BLAZEPOSE_LANDMARKS = 33
# BlazePose landmark index of each COCO-18 keypoint; None for the neck, which is computed.
BLAZEPOSE_INDEX: Tuple[Optional[int], ...] = (
    0,             # nose
    None,          # neck = midpoint of the shoulders (11, 12)
    12, 14, 16,    # right shoulder, elbow, wrist
    11, 13, 15,    # left shoulder, elbow, wrist
    24, 26, 28,    # right hip, knee, ankle
    23, 25, 27,    # left hip, knee, ankle
    5, 2,          # right eye, left eye
    8, 7,          # right ear, left ear
)
NECK = 1
LEFT_SHOULDER_33, RIGHT_SHOULDER_33 = 11, 12
DEFAULT_MIN_VISIBILITY = 0.5
_PREVIEW_STYLE = ("body{font-family:sans-serif}figure{display:inline-block;margin:6px;text-align:center}"
                  "figcaption{font-size:12px;max-width:200px;overflow-wrap:anywhere}")
SETUP_HINT = "run `make setup-pose` and use .venv-pose/bin/python"
MISSING = -1.0


def blazepose_to_coco18(landmarks33: np.ndarray, image_height: int, image_width: int,
                        min_visibility: float = DEFAULT_MIN_VISIBILITY) -> np.ndarray:
    """Map BlazePose's 33 landmarks to the 18 COCO-18 keypoints of a pose file.

    Args:
        landmarks33: ``(33, 3)`` or ``(33, 4)`` array of ``(x, y, [z,] visibility)``; x and y are
            normalised to the image (0..1 from the left / top edge), the last column is the
            visibility in 0..1; z, if present, is ignored.
        image_height: height in pixels of the image the normalised coordinates refer to.
        image_width: width in pixels of that image.
        min_visibility: a landmark with a lower visibility counts as missing.

    Returns:
        float32 ``(18, 2)`` array of (row, col) pixel coordinates (``row = y * height``,
        ``col = x * width``), ``(-1, -1)`` for a missing keypoint: visibility below
        ``min_visibility``, a coordinate outside ``[0, height) x [0, width)`` or not finite. The
        neck is the shoulders' midpoint when both shoulders are present, else missing.
    """
    lm = np.asarray(landmarks33, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] != NUM_BLAZEPOSE_LANDMARKS or lm.shape[1] not in (3, 4):
        raise ValueError(f"landmarks33 must have shape (33, 3) or (33, 4), got {lm.shape}")
    if image_height <= 0 or image_width <= 0:
        raise ValueError(f"image size must be positive, got {image_height} x {image_width}")
    rows = lm[:, 1] * image_height
    cols = lm[:, 0] * image_width
    visibility = lm[:, -1]
    # NaN fails every comparison, so a NaN coordinate or visibility counts as missing.
    valid = ((visibility >= min_visibility) & (rows >= 0) & (rows < image_height)
             & (cols >= 0) & (cols < image_width))
    out = np.full((NUM_KEYPOINTS, 2), MISSING, dtype=np.float32)
    for k, idx in enumerate(BLAZEPOSE_INDEX):
        if idx is not None and valid[idx]:
            out[k] = (rows[idx], cols[idx])
    if valid[LEFT_SHOULDER_33] and valid[RIGHT_SHOULDER_33]:
        out[NECK] = ((rows[LEFT_SHOULDER_33] + rows[RIGHT_SHOULDER_33]) / 2,
                     (cols[LEFT_SHOULDER_33] + cols[RIGHT_SHOULDER_33]) / 2)
    return out


def pad_to_square(image: np.ndarray) -> Tuple[np.ndarray, int, int]:
    """Pad an ``(H, W, 3)`` image with black borders to a centred square.

    Re-ID crops are 2:1 (e.g. 128 x 64); BlazePose's person detector works on a square input and
    finds the person more often when the crop is not stretched to fill it.

    Args:
        image: ``(H, W, 3)`` uint8 array.

    Returns:
        ``(padded, top, left)``: the square image and the offsets of the original inside it.
    """
    h, w = image.shape[:2]
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    if size == h and size == w:
        return image, 0, 0
    padded = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    padded[top:top + h, left:left + w] = image
    return padded, top, left


class BlazePoseEstimator:
    """BlazePose (mediapipe 0.10.21, full landmark model) on single person crops, fully offline.

    Only the legacy ``mp.solutions.pose.Pose(model_complexity=1)`` ships its models inside the
    wheel; complexity 0 and 2 and the Tasks API download theirs at run time.

    Args:
        min_visibility: landmarks with a lower visibility are written as missing.
        min_detection_confidence: the person detector's threshold; below it the image has no person.
        pad_square: pad each image to a centred square before estimation (coordinates are mapped
            back to the original image).

    mediapipe's native code prints a few start-up lines straight to file descriptor 2;
    :func:`run_pose_jobs` keeps them out of the terminal by running estimators in worker processes.

    Raises:
        ConfigError: mediapipe is not installed in this interpreter.
    """

    def __init__(self, min_visibility: float = DEFAULT_MIN_VISIBILITY, min_detection_confidence: float = 0.5,
                 pad_square: bool = True) -> None:
        check_estimator_options(min_visibility, min_detection_confidence)
        try:
            from mediapipe.python.solutions import pose as mp_pose
        except ImportError as e:
            raise ConfigError(f"mediapipe is not importable here ({e}); {SETUP_HINT}") from None
        self.min_visibility = min_visibility
        self.pad_square = pad_square
        self._pose = mp_pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                  min_detection_confidence=min_detection_confidence)

    def estimate(self, image: Union[Image.Image, np.ndarray]) -> Optional[np.ndarray]:
        """Estimate the pose of the (single, main) person in an image.

        Args:
            image: a PIL image (any mode) or an ``(H, W, 3)`` uint8 RGB array.

        Returns:
            float32 ``(18, 2)`` (row, col) in the input image's pixels with ``-1`` for missing
            keypoints (see :func:`blazepose_to_coco18`), or ``None`` when no person was detected.
        """
        rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        top = left = 0
        if self.pad_square:
            rgb, top, left = pad_to_square(rgb)
        result = self._pose.process(np.ascontiguousarray(rgb))
        if result.pose_landmarks is None:
            return None
        ph, pw = rgb.shape[:2]
        lm = np.array([(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark], dtype=np.float64)
        # Re-normalise from the padded square to the original image.
        lm[:, 0] = (lm[:, 0] * pw - left) / w
        lm[:, 1] = (lm[:, 1] * ph - top) / h
        return blazepose_to_coco18(lm, h, w, self.min_visibility)

    def close(self) -> None:
        """Release the mediapipe graph."""
        if self._pose is not None:
            self._pose.close()
            self._pose = None

    def __enter__(self) -> "BlazePoseEstimator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# Many images: input lists, resumable multi-process runs

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


@dataclass
class PoseJobResult:
    """Outcome of one image: ``person`` is False when nothing was detected; ``error`` is set when
    the image could not be read (then no pose file was written)."""
    image_path: str
    person: bool
    error: Optional[str] = None


def check_estimator_options(min_visibility: float, min_detection_confidence: float,
                            require_mediapipe: bool = True) -> None:
    """Raise :class:`ConfigError` unless both thresholds lie in [0, 1] (and mediapipe is installed).

    Args:
        min_visibility, min_detection_confidence: see :class:`BlazePoseEstimator`.
        require_mediapipe: also check that mediapipe can be imported by this interpreter.
    """
    if not 0.0 <= min_visibility <= 1.0:
        raise ConfigError(f"--min-visibility must be in [0, 1], got {min_visibility}")
    if not 0.0 <= min_detection_confidence <= 1.0:
        raise ConfigError(f"--min-detection-confidence must be in [0, 1], got {min_detection_confidence}")
    if require_mediapipe and importlib.util.find_spec("mediapipe") is None:
        raise ConfigError(f"mediapipe is not installed in this Python ({sys.executable}); {SETUP_HINT}")


# The estimator of a worker process, built once by _init_worker.
_WORKER: Dict[str, Any] = {}


def _init_worker(output_dir: str, estimator_kwargs: Dict[str, Any]) -> None:
    # mediapipe's native threads log to file descriptor 2 at unpredictable moments. A worker
    # points fd 2 at /dev/null for its whole life and gives Python's sys.stderr a copy of the
    # real one, so Python warnings and tracebacks still reach the terminal.
    real_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(real_stderr, "w", buffering=1)
    _WORKER["estimator"] = BlazePoseEstimator(**estimator_kwargs)
    _WORKER["output_dir"] = output_dir


def _process_one(image_path: str) -> PoseJobResult:
    try:
        image = read_image(image_path)
    except DatasetError as e:
        return PoseJobResult(image_path, False, str(e))
    landmarks = _WORKER["estimator"].estimate(image)
    person = landmarks is not None
    if landmarks is None:
        landmarks = np.full((NUM_KEYPOINTS, 2), MISSING, dtype=np.float32)
    write_pose_file(pose_path_for(image_path, _WORKER["output_dir"]), landmarks)
    return PoseJobResult(image_path, person)


def run_pose_jobs(image_paths: Sequence[PathLike], output_dir: PathLike, num_workers: int = 1,
                  min_visibility: float = DEFAULT_MIN_VISIBILITY, min_detection_confidence: float = 0.5,
                  pad_square: bool = True) -> Iterator[PoseJobResult]:
    """Estimate and write the pose file of every image; the returned iterator gives one result per
    image, in input order, as the work proceeds (options are checked before it is returned).

    The work runs in ``num_workers`` separate processes (also when it is 1: that keeps
    mediapipe's native log lines out of the caller's terminal, and a crash of the native code
    out of the caller). Each pose file is written atomically as soon as its image is done, so an
    interrupted run leaves only complete files and :func:`plan_pose_jobs` resumes it. An image
    with no person gets an all ``-1`` file (it counts as done). An unreadable image gets no file
    and a result with ``error`` set; the other images are still processed.

    Args:
        image_paths: images to process (see :func:`plan_pose_jobs` to skip finished ones).
        output_dir: folder for ``<stem>.txt`` pose files (created if missing).
        num_workers: worker processes.
        min_visibility, min_detection_confidence, pad_square: see :class:`BlazePoseEstimator`.

    Raises:
        ConfigError: ``num_workers < 1``, a threshold outside [0, 1], or mediapipe is missing.
    """
    if num_workers < 1:
        raise ConfigError(f"-j/--workers must be at least 1, got {num_workers}")
    paths = [os.fspath(p) for p in image_paths]
    # Nothing to do needs no estimator, so a finished folder can be summarised from any venv.
    check_estimator_options(min_visibility, min_detection_confidence, require_mediapipe=bool(paths))
    if not paths:
        return iter(())
    output_dir = os.fspath(output_dir)
    mkdir_if_missing(output_dir)
    kwargs = dict(min_visibility=min_visibility, min_detection_confidence=min_detection_confidence,
                  pad_square=pad_square)
    return _run_in_workers(paths, output_dir, min(num_workers, len(paths)), kwargs)


def _run_in_workers(paths: List[str], output_dir: str, num_workers: int,
                    kwargs: Dict[str, Any]) -> Iterator[PoseJobResult]:
    # spawn, not fork: a forked child would inherit the caller's threads (e.g. a progress bar's)
    # in unknown states. Small chunks keep the progress smooth and the workers balanced.
    chunksize = max(1, min(8, len(paths) // (4 * num_workers)))
    logger.debug("estimating %d poses in %d worker processes (chunks of %d)", len(paths), num_workers, chunksize)
    with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(output_dir, kwargs)) as pool:
        try:
            yield from pool.map(_process_one, paths, chunksize=chunksize)
        except BaseException:
            # Interrupted (Ctrl-C) or a worker died: drop the queued work instead of finishing it.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# ------------------------------------------------------------------------------------------------
# Summary and preview

def summarize_poses(image_paths: Sequence[PathLike], output_dir: PathLike) -> Dict[str, Any]:
    """Coverage statistics of the pose files of a set of images.

    Args:
        image_paths: the images; those without a pose file are listed under ``missing_pose_files``.
        output_dir: folder of the pose files.

    Returns:
        A JSON-ready dict: ``num_images``, ``num_with_pose_file``, ``no_person`` (file names of
        images whose pose file has no keypoint at all), ``missing_pose_files`` (file names) and
        ``coverage``: keypoint name -> ``{"count", "fraction"}`` over the images with a pose file.

    Raises:
        DatasetError: a pose file is malformed.
    """
    counts = np.zeros(NUM_KEYPOINTS, dtype=np.int64)
    no_person: List[str] = []
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
        if not present.any():
            no_person.append(name)
    coverage = {name: {"count": int(c), "fraction": round(float(c) / n_files, 4) if n_files else 0.0}
                for name, c in zip(KEYPOINT_NAMES, counts)}
    return {"num_images": len(image_paths), "num_with_pose_file": n_files, "no_person": no_person,
            "missing_pose_files": missing, "coverage": coverage}


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


def write_pose_preview(image_paths: Sequence[PathLike], output_dir: PathLike, preview_dir: PathLike,
                       num_images: int = 16, seed: int = 0, thumb_height: int = 256) -> Optional[str]:
    """Write ``index.html`` with thumbnails of randomly chosen images and their skeletons.

    Args:
        image_paths: images to choose from (those without a pose file are ignored).
        output_dir: folder of their pose files.
        preview_dir: folder for the PNG thumbnails and ``index.html`` (created if missing).
        num_images: how many images to show (all if fewer exist); 0 writes nothing.
        seed: seed of the random choice, so that a re-run shows the same images.
        thumb_height: thumbnail height in pixels.

    Returns:
        Path of ``index.html``, or ``None`` if nothing was written.
    """
    candidates = [os.fspath(p) for p in image_paths if os.path.isfile(pose_path_for(p, output_dir))]
    if num_images <= 0 or not candidates:
        return None
    chosen = sorted(random.Random(seed).sample(candidates, min(num_images, len(candidates))))
    preview_dir = os.fspath(preview_dir)
    mkdir_if_missing(preview_dir)
    page = HTML(preview_dir, "Pose preview", style=_PREVIEW_STYLE)
    page.add_header(f"Pose preview: {len(chosen)} of {len(candidates)} images", level=1)
    page.add_paragraph("right side red, left side blue, head green; white dots are detected keypoints.")
    for path in chosen:
        name = os.path.basename(path)
        landmarks = read_pose_file(pose_path_for(path, output_dir))
        thumb_name = os.path.splitext(name)[0] + ".png"
        with atomic_write(os.path.join(preview_dir, thumb_name), "wb") as f:
            draw_skeleton(read_image(path), landmarks, thumb_height).save(f, format="PNG")
        found = int((landmarks >= 0).all(axis=1).sum())
        page.add_figure(thumb_name, [name, f"{found}/{NUM_KEYPOINTS} keypoints"], alt=name, height=thumb_height)
    index = page.save()
    return index
