"""Pose landmarks for re-ID images with an offline estimator, mediapipe's BlazePose.

The library behind ``scripts/generate_poses.py``. It must stay free of torch: it runs in the
separate ``.venv-pose`` (``make setup-pose``), because mediapipe pins numpy<2 and protobuf<5.

BlazePose predicts 33 landmarks (x, y normalised to the image, z, visibility) and always guesses
all of them; :func:`blazepose_to_coco18` turns them into the 18 OpenPose COCO-18 keypoints of the
release's ``poses/`` files, marking as missing every point whose visibility is below a
threshold or that falls outside the image. The neck, which BlazePose lacks, is the midpoint of the
two shoulders when both are present.

Pipeline pieces, each usable on its own:

- :class:`BlazePoseEstimator`: one image (PIL or RGB array) -> :class:`PoseEstimate` (accepted,
  rejected with a reason, or no person); a skeleton must pass :mod:`reid.pose_plausibility`, and a
  miss is retried on a sharpened upscale and with a wider border before it counts as no person.
- :func:`plan_pose_jobs` / :func:`run_pose_jobs`: resumable, multi-process estimation over many
  images; every pose file is written atomically, an image with no (plausible) person gets an all
  ``-1`` file, and each image's status goes to the log of :mod:`reid.pose_report`.
- :func:`summarize_poses` / :func:`format_coverage_table` / :func:`write_pose_preview` (from
  :mod:`reid.pose_report`): accepted, rejected and no-person lists, coverage, an HTML preview.
"""
from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFilter

from reid.errors import ConfigError, DatasetError
from reid.pose_plausibility import (DEFAULT_MIN_HEIGHT_FRACTION, DEFAULT_MIN_SHOULDER_VISIBILITY,
                                    PlausibilityLimits, implausibility)
from reid.pose_report import (ACCEPTED, NO_PERSON, REJECTED, append_status, check_unique_stems,  # noqa: F401
                              draw_skeleton, format_coverage_table, plan_pose_jobs, pose_path_for,
                              summarize_poses, write_pose_preview)
from reid.utils.data.images import list_images, read_image  # noqa: F401  (pe.list_images for the CLI)
from reid.utils.data.pose import NUM_KEYPOINTS, write_pose_file
from reid.utils.osutils import PathLike, mkdir_if_missing

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
SETUP_HINT = "run `make setup-pose` and use .venv-pose/bin/python"
MISSING = -1.0
DEFAULT_RETRY_DETECTION_CONFIDENCE = 0.3
RETRY_MARGIN = 0.3  # the border of the last retry, as a fraction of the longer side


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


def pad_to_square(image: np.ndarray, margin: float = 0.0) -> Tuple[np.ndarray, int, int]:
    """Pad an ``(H, W, 3)`` image with black borders to a centred square.

    Re-ID crops are 2:1 (e.g. 128 x 64); BlazePose's person detector works on a square input and
    finds the person more often when the crop is not stretched to fill it.

    Args:
        image: ``(H, W, 3)`` uint8 array.
        margin: make the square this fraction larger than the image's longer side.

    Returns:
        ``(padded, top, left)``: the square image and the offsets of the original inside it.
    """
    h, w = image.shape[:2]
    size = int(round(max(h, w) * (1.0 + margin)))
    top, left = (size - h) // 2, (size - w) // 2
    if size == h and size == w:
        return image, 0, 0
    padded = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    padded[top:top + h, left:left + w] = image
    return padded, top, left


def sharpened_upscale(image: np.ndarray, min_height: int = 512) -> np.ndarray:
    """An ``(H, W, 3)`` image enlarged (Lanczos, by a whole factor) to at least ``min_height`` rows
    and sharpened with an unsharp mask: the first retry for a blurred or small crop."""
    factor = max(1, -(-min_height // image.shape[0]))
    pil = Image.fromarray(image)
    if factor > 1:
        pil = pil.resize((pil.width * factor, pil.height * factor), Image.LANCZOS)
    return np.asarray(pil.filter(ImageFilter.UnsharpMask(radius=factor, percent=150, threshold=2)))


@dataclass
class PoseEstimate:
    """The outcome for one image.

    Attributes:
        status: ``"accepted"``, ``"rejected"`` (a skeleton that cannot be the crop's person) or
            ``"no_person"`` (nothing detected).
        landmarks: ``(18, 2)`` (row, col) of the accepted or rejected skeleton, else ``None``.
        score: the person detector's score of that skeleton.
        reason: why it was rejected.
        attempt: the try that gave it: ``"plain"``, ``"sharpened"`` or ``"margin"``.
    """
    status: str
    landmarks: Optional[np.ndarray] = None
    score: Optional[float] = None
    reason: Optional[str] = None
    attempt: Optional[str] = None


class BlazePoseEstimator:
    """BlazePose (mediapipe 0.10.21, full landmark model) on single person crops, fully offline.

    Only the legacy pose graph with ``model_complexity=1`` ships its models inside the wheel;
    complexity 0 and 2 and the Tasks API download theirs at run time. The graph is run through
    mediapipe's ``SolutionBase`` (as ``mp.solutions.pose.Pose`` does) to also read the detector's
    score.

    A skeleton is accepted when :func:`reid.pose_plausibility.implausibility` finds nothing wrong
    with it. Otherwise (rejected, or nothing detected) the image is retried, in order, sharpened
    and upscaled (:func:`sharpened_upscale`) and padded with a wider border (``margin`` 0.3),
    with ``retry_detection_confidence`` as the detector threshold and the same checks; the first
    accepted skeleton wins.

    Args:
        min_visibility: landmarks with a lower visibility are written as missing.
        min_detection_confidence: the person detector's threshold on the first try.
        pad_square: pad each image to a centred square before the first try (coordinates are
            mapped back to the original image).
        retry: retry a miss before calling it no person.
        retry_detection_confidence: the detector threshold on the retries.
        limits: the plausibility thresholds.

    mediapipe's native code prints a few start-up lines straight to file descriptor 2;
    :func:`run_pose_jobs` keeps them out of the terminal by running estimators in worker processes.

    Raises:
        ConfigError: a threshold is out of range, or mediapipe is not installed in this interpreter.
    """

    def __init__(self, min_visibility: float = DEFAULT_MIN_VISIBILITY, min_detection_confidence: float = 0.5,
                 pad_square: bool = True, retry: bool = True,
                 retry_detection_confidence: float = DEFAULT_RETRY_DETECTION_CONFIDENCE,
                 limits: PlausibilityLimits = PlausibilityLimits()) -> None:
        check_estimator_options(min_visibility, min_detection_confidence,
                                retry_detection_confidence=retry_detection_confidence)
        try:
            from mediapipe.python.solution_base import SolutionBase
        except ImportError as e:
            raise ConfigError(f"mediapipe is not importable here ({e}); {SETUP_HINT}") from None
        self.min_visibility = min_visibility
        self.min_detection_confidence = min_detection_confidence
        self.pad_square = pad_square
        self.retry = retry
        self.retry_detection_confidence = retry_detection_confidence
        self.limits = limits
        # One graph per detector threshold: the threshold also decides which overlapping
        # detections are blended into the person's box, so it cannot be applied afterwards.
        self._graphs: Dict[float, Any] = {}
        self._solution_base = SolutionBase

    def _graph(self, threshold: float) -> Any:
        if threshold not in self._graphs:
            self._graphs[threshold] = self._solution_base(
                binary_graph_path="mediapipe/modules/pose_landmark/pose_landmark_cpu.binarypb",
                side_inputs={"model_complexity": 1, "smooth_landmarks": False, "enable_segmentation": False,
                             "smooth_segmentation": False, "use_prev_landmarks": False},
                calculator_params={
                    "posedetectioncpu__TensorsToDetectionsCalculator.min_score_thresh": threshold,
                    "poselandmarkbyroicpu__tensorstoposelandmarksandsegmentation__ThresholdingCalculator.threshold":
                        0.5,
                },
                outputs=["pose_landmarks", "pose_detection"])
        return self._graphs[threshold]

    def _landmarks33(self, rgb: np.ndarray, margin: Optional[float],
                     threshold: float) -> Optional[Tuple[np.ndarray, float]]:
        """BlazePose's 33 landmarks normalised to ``rgb`` and the detector score, or ``None``."""
        h, w = rgb.shape[:2]
        top = left = 0
        if margin is not None:
            rgb, top, left = pad_to_square(rgb, margin)
        result = self._graph(threshold).process({"image": np.ascontiguousarray(rgb)})
        if result.pose_landmarks is None or result.pose_detection is None:
            return None
        ph, pw = rgb.shape[:2]
        lm = np.array([(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark], dtype=np.float64)
        # Re-normalise from the padded square to the original image.
        lm[:, 0] = (lm[:, 0] * pw - left) / w
        lm[:, 1] = (lm[:, 1] * ph - top) / h
        return lm, float(result.pose_detection.score[0])

    def analyse(self, image: Union[Image.Image, np.ndarray]) -> PoseEstimate:
        """Estimate, check and if needed retry the pose of the person a crop is framed on.

        Args:
            image: a PIL image (any mode) or an ``(H, W, 3)`` uint8 RGB array.

        Returns:
            A :class:`PoseEstimate`; its landmarks are in the input image's pixels with ``-1`` for
            missing keypoints (see :func:`blazepose_to_coco18`). A rejected estimate reports the
            first try's skeleton and reason.
        """
        rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        attempts = [("plain", lambda: rgb, 0.0 if self.pad_square else None, self.min_detection_confidence)]
        if self.retry:
            attempts += [("sharpened", lambda: sharpened_upscale(rgb), 0.0, self.retry_detection_confidence),
                         ("margin", lambda: rgb, RETRY_MARGIN, self.retry_detection_confidence)]
        first_rejection: Optional[PoseEstimate] = None
        for name, make_input, margin, min_score in attempts:
            found = self._landmarks33(make_input(), margin, min_score)
            if found is None:
                continue
            lm, score = found
            reason = implausibility(lm, score, min_score, self.limits)
            landmarks = blazepose_to_coco18(lm, h, w, self.min_visibility)
            if reason is None:
                return PoseEstimate(ACCEPTED, landmarks, score, None, name)
            if first_rejection is None:
                first_rejection = PoseEstimate(REJECTED, landmarks, score, reason, name)
        return first_rejection if first_rejection is not None else PoseEstimate(NO_PERSON)

    def estimate(self, image: Union[Image.Image, np.ndarray]) -> Optional[np.ndarray]:
        """The accepted skeleton of :meth:`analyse` as ``(18, 2)`` (row, col), or ``None``."""
        result = self.analyse(image)
        return result.landmarks if result.status == ACCEPTED else None

    def close(self) -> None:
        """Release the mediapipe graph."""
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()

    def __enter__(self) -> "BlazePoseEstimator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# Many images: input lists, resumable multi-process runs



@dataclass
class PoseJobResult:
    """Outcome of one image: ``person`` is False when no skeleton was accepted; ``status`` and
    ``reason`` are those of :class:`PoseEstimate`; ``error`` is set when the image could not be
    read (then no pose file was written)."""
    image_path: str
    person: bool
    error: Optional[str] = None
    status: Optional[str] = None
    reason: Optional[str] = None


def check_estimator_options(min_visibility: float, min_detection_confidence: float,
                            require_mediapipe: bool = True,
                            retry_detection_confidence: float = DEFAULT_RETRY_DETECTION_CONFIDENCE) -> None:
    """Raise :class:`ConfigError` unless the thresholds lie in [0, 1] (and mediapipe is installed).

    Args:
        min_visibility, min_detection_confidence, retry_detection_confidence: see
            :class:`BlazePoseEstimator`.
        require_mediapipe: also check that mediapipe can be imported by this interpreter.
    """
    for flag, value in (("--min-visibility", min_visibility), ("--min-detection-confidence", min_detection_confidence),
                        ("--retry-detection-confidence", retry_detection_confidence)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{flag} must be in [0, 1], got {value}")
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
    result: PoseEstimate = _WORKER["estimator"].analyse(image)
    record: Dict[str, Any] = {"image": os.path.basename(image_path), "status": result.status}
    if result.score is not None:
        record.update(score=round(result.score, 4), attempt=result.attempt)
    if result.status == REJECTED:
        record.update(reason=result.reason, landmarks=np.round(result.landmarks.astype(np.float64), 2).tolist())
    # The status goes first: a run killed between the two writes redoes the image (no pose file).
    append_status(_WORKER["output_dir"], record)
    person = result.status == ACCEPTED
    landmarks = result.landmarks if person else np.full((NUM_KEYPOINTS, 2), MISSING, dtype=np.float32)
    write_pose_file(pose_path_for(image_path, _WORKER["output_dir"]), landmarks)
    return PoseJobResult(image_path, person, status=result.status, reason=result.reason)


def run_pose_jobs(image_paths: Sequence[PathLike], output_dir: PathLike, num_workers: int = 1,
                  min_visibility: float = DEFAULT_MIN_VISIBILITY, min_detection_confidence: float = 0.5,
                  pad_square: bool = True, retry: bool = True,
                  retry_detection_confidence: float = DEFAULT_RETRY_DETECTION_CONFIDENCE,
                  min_height_fraction: float = DEFAULT_MIN_HEIGHT_FRACTION,
                  min_shoulder_visibility: float = DEFAULT_MIN_SHOULDER_VISIBILITY,
                  check_order: bool = True) -> Iterator[PoseJobResult]:
    """Estimate and write the pose file of every image; the returned iterator gives one result per
    image, in input order, as the work proceeds (options are checked before it is returned).

    The work runs in ``num_workers`` separate processes (also when it is 1: that keeps
    mediapipe's native log lines out of the caller's terminal, and a crash of the native code
    out of the caller). Each pose file is written atomically as soon as its image is done, so an
    interrupted run leaves only complete files and :func:`plan_pose_jobs` resumes it. An image
    with no person, or whose skeleton was rejected, gets an all ``-1`` file (it counts as done);
    every processed image gets a line in the status log (:mod:`reid.pose_report`). An unreadable
    image gets no file and a result with ``error`` set; the other images are still processed.

    Args:
        image_paths: images to process (see :func:`plan_pose_jobs` to skip finished ones).
        output_dir: folder for ``<stem>.txt`` pose files (created if missing).
        num_workers: worker processes.
        min_visibility, min_detection_confidence, pad_square, retry, retry_detection_confidence:
            see :class:`BlazePoseEstimator`.
        min_height_fraction, min_shoulder_visibility, check_order: see
            :class:`reid.pose_plausibility.PlausibilityLimits`.

    Raises:
        ConfigError: ``num_workers < 1``, a threshold out of range, or mediapipe is missing.
    """
    if num_workers < 1:
        raise ConfigError(f"-j/--workers must be at least 1, got {num_workers}")
    paths = [os.fspath(p) for p in image_paths]
    # Nothing to do needs no estimator, so a finished folder can be summarised from any venv.
    limits = PlausibilityLimits(min_height_fraction, min_shoulder_visibility, check_order)
    check_estimator_options(min_visibility, min_detection_confidence, require_mediapipe=bool(paths),
                            retry_detection_confidence=retry_detection_confidence)
    if not paths:
        return iter(())
    output_dir = os.fspath(output_dir)
    mkdir_if_missing(output_dir)
    kwargs = dict(min_visibility=min_visibility, min_detection_confidence=min_detection_confidence,
                  pad_square=pad_square, retry=retry, retry_detection_confidence=retry_detection_confidence,
                  limits=limits)
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
