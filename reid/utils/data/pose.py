"""Pose files: 18 OpenPose COCO-18 keypoints per image, one ``row col`` line each.

Coordinates are pixels in the image's own size; a negative value marks a keypoint that was not
detected. The order is spec section 1's: nose, neck, right shoulder/elbow/wrist, left
shoulder/elbow/wrist, right hip/knee/ankle, left hip/knee/ankle, right eye, left eye, right ear,
left ear.
"""
from __future__ import annotations

import math

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
