"""Writing the synthetic dataset: its settings, the split plan, images, pose files and meta data."""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from reid.datasets.synthetic_render.appearance import (
    CameraStyle, GENERATOR_VERSION, Rendering, _pick, random_appearance, random_camera, random_view
)
from reid.datasets.synthetic_render.drawing import render_person
from reid.errors import ConfigError, DatasetError
from reid.utils.data.pose import write_pose_file
from reid.utils.osutils import PathLike, atomic_write, mkdir_if_missing, read_json, write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticConfig:
    """The generation settings (recorded in meta.json as ``synthetic``)."""

    num_ids: int = 100
    num_cams: int = 4
    images_per_cam: int = 3
    height: int = 128
    width: int = 64
    seed: int = 0
    num_distractors: Optional[int] = None  # default: max(1, num_ids // 20)

    def resolved_distractors(self) -> int:
        return max(1, self.num_ids // 20) if self.num_distractors is None else self.num_distractors

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot make a usable dataset."""
        if self.num_ids < 2:
            raise ConfigError(f"--num-ids {self.num_ids}: need at least 2 identities (trainval and test)")
        if self.num_cams < 2:
            raise ConfigError(f"--num-cams {self.num_cams}: need at least 2 cameras "
                              "(queries are matched across cameras)")
        if self.images_per_cam < 1:
            raise ConfigError(f"--images-per-cam {self.images_per_cam}: need at least 1")
        if self.height < 32 or self.width < 16:
            raise ConfigError(f"--height {self.height} --width {self.width}: the smallest size is 32 x 16")
        if self.num_distractors is not None and self.num_distractors < 0:
            raise ConfigError(f"--num-distractors {self.num_distractors}: must not be negative")

    def as_meta(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["num_distractors"] = self.resolved_distractors()
        d["version"] = GENERATOR_VERSION
        return d


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


Job = Tuple[str, int, int, int]  # file name, pid, camera, index within (pid, camera)


def plan_synthetic(cfg: SyntheticConfig) -> Tuple[Dict[str, Any], List[Dict[str, Any]], List[Job]]:
    """meta.json and splits.json content and the (file name, pid, cam, index) of every image."""
    num_total = cfg.num_ids + cfg.resolved_distractors()
    num_trainval = cfg.num_ids // 2
    identities: List[List[List[str]]] = []
    jobs: List[Job] = []
    for pid in range(num_total):
        rng = _rng(cfg.seed, 1, pid)
        k = int(rng.integers(2, cfg.num_cams + 1))
        cams = sorted(int(c) for c in rng.choice(cfg.num_cams, size=k, replace=False))
        per_cam: List[List[str]] = [[] for _ in range(cfg.num_cams)]
        for cam in cams:
            for i in range(cfg.images_per_cam):
                fname = f"{pid:08d}_{cam:02d}_{i:04d}.jpg"
                per_cam[cam].append(fname)
                jobs.append((fname, pid, cam, i))
        identities.append(per_cam)
    test = list(range(num_trainval, cfg.num_ids))
    distractors = list(range(cfg.num_ids, num_total))
    official_query: List[str] = []
    for pid in test:
        cams = [c for c, files in enumerate(identities[pid]) if files]
        total = sum(len(f) for f in identities[pid])
        n = min(len(cams), max(1, total // 4))
        rng = _rng(cfg.seed, 3, pid)
        for cam in sorted(int(c) for c in rng.choice(cams, size=n, replace=False)):
            official_query.append(identities[pid][cam][int(rng.integers(len(identities[pid][cam])))])
    chosen = set(official_query)
    official_gallery = [f for pid in test + distractors for files in identities[pid] for f in files if f not in chosen]
    meta = {"name": "synthetic", "shot": "multiple", "num_cameras": cfg.num_cams, "identities": identities,
            "synthetic": cfg.as_meta()}
    splits = [{
        "trainval": list(range(num_trainval)),
        "query": test,
        "gallery": test + distractors,
        "official_query": official_query,
        "official_gallery": official_gallery,
    }]
    return meta, splits, jobs


def render_image(cfg: SyntheticConfig, pid: int, cam: int, index: int,
                 cameras: Optional[Sequence[CameraStyle]] = None) -> Rendering:
    """Render image ``index`` of identity ``pid`` in camera ``cam`` (independent of any other image)."""
    if cameras is None:
        cameras = [random_camera(_rng(cfg.seed, 0, c)) for c in range(cfg.num_cams)]
    app = random_appearance(_rng(cfg.seed, 1, pid, 0))
    # A person walks through a camera's view in one direction, sometimes turning.
    walk = _rng(cfg.seed, 4, pid, cam)
    camera = cameras[cam]
    base_yaw = float(_pick(walk, camera.yaw_modes)) if walk.random() < 0.85 else float(walk.uniform(-math.pi, math.pi))
    rng = _rng(cfg.seed, 2, pid, cam, index)
    yaw = base_yaw if rng.random() < 0.8 else base_yaw + math.pi
    view = random_view(rng, camera, base_yaw=yaw)
    return render_person(app, camera, view, cfg.height, cfg.width)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an H x W x 3 uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


_PARTIAL_MARKER = ".synthetic-partial"


def generate_synthetic_dataset(root: PathLike, config: Optional[SyntheticConfig] = None,
                               force: bool = False) -> Dict[str, Any]:
    """Write the synthetic dataset (images, poses, meta.json, splits.json) into ``root``.

    Nothing is done when ``root`` already holds a dataset made with the same settings. The dataset
    is built in ``<root>.partial`` and renamed into place at the end.

    Args:
        root: the dataset folder, e.g. ``datasets/synthetic``.
        config: the settings (defaults: 100 identities, 4 cameras, 3 images per camera, 128 x 64).
        force: replace an existing folder made with other settings.

    Returns:
        A summary: ``root``, ``num_images``, ``num_identities``, ``seconds``, ``skipped``.

    Raises:
        ConfigError: unusable settings.
        DatasetError: ``root`` exists with other content and ``force`` is false.
    """
    cfg = config or SyntheticConfig()
    cfg.validate()
    root = os.path.normpath(os.fspath(root))
    start = time.perf_counter()
    meta, splits, jobs = plan_synthetic(cfg)
    if os.path.exists(root):
        previous = None
        try:
            previous = read_json(os.path.join(root, "meta.json")).get("synthetic")
        except (DatasetError, AttributeError):
            pass
        complete = all(os.path.exists(os.path.join(root, p)) for p in ("images", "poses", "splits.json"))
        if previous == meta["synthetic"] and complete:
            logger.info("%s already holds the synthetic dataset with these settings; nothing to do", root)
            return {"root": root, "num_images": len(jobs), "num_identities": len(meta["identities"]),
                    "seconds": 0.0, "skipped": True}
        if (not os.path.isdir(root) or os.listdir(root)) and not force:
            raise DatasetError(f"{root}: already exists with other content; remove it or pass --force to replace it")
    partial = root + ".partial"
    if os.path.exists(partial):
        if not os.path.exists(os.path.join(partial, _PARTIAL_MARKER)):
            raise DatasetError(f"{partial}: exists but was not made by this generator; remove it")
        shutil.rmtree(partial)
    mkdir_if_missing(os.path.join(partial, "images"))
    mkdir_if_missing(os.path.join(partial, "poses"))
    with atomic_write(os.path.join(partial, _PARTIAL_MARKER), "w") as f:
        f.write("synthetic dataset being generated\n")
    cameras = [random_camera(_rng(cfg.seed, 0, c)) for c in range(cfg.num_cams)]
    for fname, pid, cam, index in jobs:
        result = render_image(cfg, pid, cam, index, cameras)
        with atomic_write(os.path.join(partial, "images", fname)) as f:
            f.write(encode_jpeg(result.image, cameras[cam].jpeg_quality))
        write_pose_file(os.path.join(partial, "poses", os.path.splitext(fname)[0] + ".txt"), result.keypoints)
    write_json(meta, os.path.join(partial, "meta.json"))
    write_json(splits, os.path.join(partial, "splits.json"))
    os.unlink(os.path.join(partial, _PARTIAL_MARKER))
    if os.path.exists(root):
        old = root + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(root, old)
        os.replace(partial, root)
        shutil.rmtree(old)
    else:
        os.replace(partial, root)
    seconds = time.perf_counter() - start
    logger.info("Wrote %s: %d images of %d identities in %.1f s", root, len(jobs), len(meta["identities"]), seconds)
    return {"root": root, "num_images": len(jobs), "num_identities": len(meta["identities"]),
            "seconds": seconds, "skipped": False}
