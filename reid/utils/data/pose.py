"""Pose files: 18 OpenPose COCO-18 keypoints per image, one ``row col`` line each.

Coordinates are pixels in the image's own size; a negative value marks a keypoint that was not
detected. The order is OpenPose's COCO-18, as in the release's ``poses/`` files: nose, neck,
right shoulder/elbow/wrist, left shoulder/elbow/wrist, right hip/knee/ankle, left hip/knee/ankle,
right eye, left eye, right ear, left ear.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from reid.errors import DatasetError
from reid.utils.osutils import PathLike, atomic_write_text

NUM_KEYPOINTS = 18
KEYPOINT_NAMES = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
# Limbs as pairs of keypoint indices, for drawing skeletons.
SKELETON = (
    (0, 1), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (0, 14), (14, 16), (0, 15), (15, 17),
)


def parse_pose_text(text: str, source: str = "pose file") -> np.ndarray:
    """Parse the text of a pose file into a float32 ``(18, 2)`` array of (row, col).

    Missing keypoints (any negative coordinate) become ``(-1, -1)``.

    Raises:
        DatasetError: wrong line count, a line without exactly two numbers, or NaN/inf values.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != NUM_KEYPOINTS:
        raise DatasetError(f"{source}: expected {NUM_KEYPOINTS} lines of 'row col', found {len(lines)}")
    out = np.empty((NUM_KEYPOINTS, 2), dtype=np.float32)
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{source}: line {i + 1} should hold two numbers 'row col', got {line.strip()[:40]!r}")
        try:
            row, col = float(parts[0]), float(parts[1])
        except ValueError:
            raise DatasetError(f"{source}: line {i + 1} is not two numbers: {line.strip()[:40]!r}") from None
        if not (math.isfinite(row) and math.isfinite(col)):
            raise DatasetError(f"{source}: line {i + 1} holds a NaN or infinite coordinate")
        out[i] = (-1.0, -1.0) if (row < 0 or col < 0) else (row, col)
    return out


def read_pose_file(path: PathLike) -> np.ndarray:
    """Read a pose file; see :func:`parse_pose_text`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: pose file not found (run scripts/generate_poses.py)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unreadable pose file ({e})") from None
    return parse_pose_text(text, source=str(path))


def format_pose(landmarks: np.ndarray) -> str:
    """Format an ``(18, 2)`` array of (row, col) as pose-file text; negatives are written as -1."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"landmarks must have shape (18, 2), got {landmarks.shape}")
    lines = []
    for row, col in landmarks:
        if row < 0 or col < 0 or not (math.isfinite(row) and math.isfinite(col)):
            lines.append("-1 -1")
        else:
            lines.append(f"{row:.2f} {col:.2f}")
    return "\n".join(lines) + "\n"


def write_pose_file(path: PathLike, landmarks: np.ndarray) -> None:
    """Write an ``(18, 2)`` array of (row, col) as a pose file, atomically."""
    atomic_write_text(path, format_pose(landmarks))


def scale_landmarks(landmarks: np.ndarray, from_size: Tuple[int, int], to_size: Tuple[int, int]) -> np.ndarray:
    """Scale (row, col) keypoints from one image size to another, as the training items do.

    Args:
        landmarks: ``(K, 2)`` (row, col) pixel coordinates; a negative value marks a missing
            keypoint.
        from_size: (height, width) of the image the coordinates refer to.
        to_size: (height, width) to scale them to.

    Returns:
        int64 ``(K, 2)``: each present keypoint's coordinates multiplied by the size ratio and
        truncated; missing keypoints ``(-1, -1)`` (the release turns them into (0, 0) on large
        images, see docs/differences.md).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    out = np.full(points.shape, -1, dtype=np.int64)
    present = (points[:, 0] >= 0) & (points[:, 1] >= 0)
    points = np.minimum(points, 2.0 ** 40)  # absurd values stay far outside the map, and castable
    out[present, 0] = (points[present, 0] * (to_size[0] / from_size[0])).astype(np.int64)
    out[present, 1] = (points[present, 1] * (to_size[1] / from_size[1])).astype(np.int64)
    return out
