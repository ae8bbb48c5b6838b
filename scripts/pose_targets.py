"""What ``scripts/generate_images.py``'s ``--sources`` and ``--poses`` entries name.

- :func:`resolve_source`: a ``--sources`` entry -> an image file (a path, or a file name of a
  prepared dataset's ``images/``);
- :func:`load_target_pose`: a ``--poses`` entry -> a :class:`TargetPose`: keypoints read from a
  pose file (found by name next to the dataset's images) or estimated from an image, with the
  pixel size of the image they refer to (scaled with ``reid.utils.data.pose.scale_landmarks``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image

from reid.errors import ConfigError, DatasetError
from reid.utils.data.images import IMAGE_EXTENSIONS, read_image
from reid.utils.data.pose import NUM_KEYPOINTS, read_pose_file, scale_landmarks
from reid.utils.osutils import PathLike

logger = logging.getLogger(__name__)

__all__ = ["Size", "TargetPose", "PoseEstimator", "resolve_source", "estimate_pose",
           "load_target_pose"]

Size = Tuple[int, int]


def _image_size(path: str) -> Size:
    """(height, width) of an image file without decoding its pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError, SyntaxError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path}: unreadable image ({detail})") from None


def _find_image(folder: str, stem: str) -> Optional[str]:
    """The file ``<folder>/<stem><ext>`` for an ext of :data:`IMAGE_EXTENSIONS` (lower or upper case)."""
    for suffix in IMAGE_EXTENSIONS:
        for candidate in (stem + suffix, stem + suffix.upper()):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def resolve_source(spec: str, dataset_dir: Optional[PathLike] = None) -> str:
    """The image file a ``--sources`` entry names.

    Args:
        spec: an image path, or the file name of a dataset image (looked up in
            ``<dataset_dir>/images``).
        dataset_dir: the prepared dataset folder, or None.

    Raises:
        DatasetError: neither an existing file nor an image of the dataset.
    """
    if os.path.isfile(spec):
        return os.fspath(spec)
    if dataset_dir is not None:
        path = os.path.join(os.fspath(dataset_dir), "images", spec)
        if os.path.isfile(path):
            return path
        raise DatasetError(f"--sources {spec}: neither an image file nor an image in {path}")
    raise DatasetError(f"--sources {spec}: image file not found (give --dataset-dir to use dataset file names)")


@dataclass
class TargetPose:
    """A target pose before scaling to the generator's size.

    Attributes:
        name: the ``--poses`` entry it came from (shown in captions).
        landmarks: float ``(18, 2)`` (row, col) in the pixels of an image of ``size``; -1 = missing.
        size: (height, width) of the image the coordinates refer to.
        origin: where the keypoints came from: the pose file, or the image they were estimated on.
        estimated: True when they were estimated from an image.
    """

    name: str
    landmarks: np.ndarray
    size: Size
    origin: str
    estimated: bool = False

    def scaled(self, height: int, width: int) -> np.ndarray:
        """The keypoints scaled to ``height`` x ``width`` (see :func:`scale_landmarks`)."""
        return scale_landmarks(self.landmarks, self.size, (height, width))


PoseEstimator = Callable[[str], Optional[np.ndarray]]


def estimate_pose(image_path: str) -> Optional[np.ndarray]:
    """Estimate the keypoints of the person in an image with :mod:`reid.pose_estimation`.

    Args:
        image_path: the image file.

    Returns:
        float ``(18, 2)`` (row, col) in the image's pixels, or None when no person was found.

    Raises:
        ConfigError: the estimator (mediapipe) is not available in this environment.
    """
    # .venv-pose has mediapipe but no torch, so the way out is a pose file made there.
    hint = (f"estimating its pose needs mediapipe, which this Python lacks; pass a pose file (.txt) instead, "
            f"made with `.venv-pose/bin/python scripts/generate_poses.py --images {image_path} --output DIR`")
    try:
        from reid.pose_estimation import BlazePoseEstimator
    except ImportError:
        raise ConfigError(f"--poses {image_path} is an image: {hint}") from None
    try:
        estimator = BlazePoseEstimator()
    except ConfigError:
        raise ConfigError(f"--poses {image_path} is an image: {hint}") from None
    with estimator:
        return estimator.estimate(read_image(image_path))


def load_target_pose(
    spec: str,
    dataset_dir: Optional[PathLike] = None,
    pose_size: Optional[Size] = None,
    default_size: Size = (256, 128),
    estimator: Optional[PoseEstimator] = None,
) -> TargetPose:
    """Read or estimate the target pose a ``--poses`` entry names.

    Resolution order:

    1. a name ending in ``.txt``: a pose file (the path, else ``<dataset_dir>/poses/<name>``);
    2. an existing image file: its pose file when the image lies in a dataset's ``images/``
       folder and ``../poses/<stem>.txt`` exists, else the pose estimated from the image;
    3. a dataset file name: ``<dataset_dir>/poses/<stem>.txt``, else the pose estimated from
       ``<dataset_dir>/images/<name>``.

    Pose-file coordinates are in the pixels of the image they were made from: its size is read
    from that image when it is found (``<dataset_dir>/images/<stem>.*`` or, for
    ``<root>/poses/<stem>.txt``, ``<root>/images/<stem>.*``), else taken from ``pose_size``,
    else ``default_size``.

    Args:
        spec: the ``--poses`` entry.
        dataset_dir: the prepared dataset folder, or None.
        pose_size: (height, width) for pose files whose image is not found (``--pose-size``).
        default_size: the fallback size, normally the generator's.
        estimator: ``f(image_path) -> (18, 2) or None``; default :func:`estimate_pose`.

    Raises:
        DatasetError: nothing found under that name, an unreadable pose file, or no person
            detected in an image.
        ConfigError: pose estimation needed but unavailable.
    """
    dataset = os.fspath(dataset_dir) if dataset_dir is not None else None
    estimate = estimator or estimate_pose

    def from_file(pose_path: str, image_path: Optional[str]) -> TargetPose:
        landmarks = read_pose_file(pose_path)
        if image_path is None:
            stem = os.path.splitext(os.path.basename(pose_path))[0]
            folders = []
            if dataset is not None:
                folders.append(os.path.join(dataset, "images"))
            parent = os.path.dirname(os.path.abspath(pose_path))
            if os.path.basename(parent) == "poses":
                folders.append(os.path.join(os.path.dirname(parent), "images"))
            image_path = next((p for p in (_find_image(f, stem) for f in folders) if p), None)
        if image_path is not None:
            size = _image_size(image_path)
        else:
            size = pose_size or default_size
            logger.info("%s: no image found for the pose file; its coordinates are taken as %dx%d pixels "
                        "(--pose-size)", pose_path, *size)
        return TargetPose(spec, landmarks, size, pose_path)

    def from_image(image_path: str) -> TargetPose:
        landmarks = estimate(image_path)
        if landmarks is None:
            raise DatasetError(f"--poses {spec}: no person detected in {image_path}")
        landmarks = np.asarray(landmarks, dtype=np.float32)
        if landmarks.shape != (NUM_KEYPOINTS, 2):
            raise DatasetError(f"--poses {spec}: the estimator returned keypoints of shape {landmarks.shape}")
        return TargetPose(spec, landmarks, _image_size(image_path), image_path, estimated=True)

    if spec.lower().endswith(".txt"):
        if os.path.isfile(spec):
            return from_file(spec, None)
        if dataset is not None and os.path.isfile(os.path.join(dataset, "poses", spec)):
            return from_file(os.path.join(dataset, "poses", spec), None)
        raise DatasetError(f"--poses {spec}: pose file not found")

    if os.path.isfile(spec):
        parent = os.path.dirname(os.path.abspath(spec))
        stem = os.path.splitext(os.path.basename(spec))[0]
        sibling = os.path.join(os.path.dirname(parent), "poses", stem + ".txt")
        if os.path.basename(parent) == "images" and os.path.isfile(sibling):
            return from_file(sibling, spec)
        return from_image(spec)

    if dataset is not None:
        stem = os.path.splitext(spec)[0]
        pose_path = os.path.join(dataset, "poses", stem + ".txt")
        image_path = os.path.join(dataset, "images", spec)
        has_image = os.path.isfile(image_path)
        if os.path.isfile(pose_path):
            return from_file(pose_path, image_path if has_image else None)
        if has_image:
            return from_image(image_path)
        raise DatasetError(f"--poses {spec}: not a file, and neither {pose_path} nor {image_path} exists")
    raise DatasetError(f"--poses {spec}: file not found (give --dataset-dir to use dataset file names)")
