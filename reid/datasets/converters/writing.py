"""Writing a prepared folder: image names, the conversion plan, ``<dst>.partial`` and its resume."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from reid.errors import DatasetError
from reid.utils.osutils import atomic_write, mkdir_if_missing, write_json

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95  # for images that are not JPEG already (CUHK03 arrays, PNGs of generic folders)
_MARKER = ".convert.json"


def new_image_name(pid: int, cam: int, index: int) -> str:
    """The prepared file name ``PPPPPPPP_CC_NNNN.jpg`` of image ``index`` of (``pid``, ``cam``)."""
    return f"{pid:08d}_{cam:02d}_{index:04d}.jpg"


@dataclass
class ConversionPlan:
    """What a conversion writes: meta/splits content and the (new name, source path) pairs."""

    meta: Dict[str, Any]
    splits: List[Dict[str, Any]]
    jobs: List[Tuple[str, Any]] = field(default_factory=list)


def to_jpeg(data: bytes, what: str) -> bytes:
    if data[:3] == b"\xff\xd8\xff":
        return data
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"{what}: unreadable image ({e})") from None
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def check_dst(dst: str) -> None:
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise DatasetError(f"{dst}: already exists and is not empty; remove it or choose another --dst")


def prepare_partial(dst: str, dataset: str, src: str) -> str:
    """Create or resume ``<dst>.partial``; returns its path."""
    check_dst(dst)
    partial = os.path.normpath(dst) + ".partial"
    marker = {"dataset": dataset, "source": os.path.basename(os.path.normpath(os.path.abspath(src)))}
    marker_path = os.path.join(partial, _MARKER)
    if os.path.isdir(partial):
        try:
            with open(marker_path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            raise DatasetError(f"{partial}: exists but was not made by this converter; remove it") from None
        if previous == marker:
            logger.info("Resuming the interrupted conversion in %s", partial)
            return partial
        logger.warning("%s: left by a conversion of another download (%s); starting over", partial, previous)
        shutil.rmtree(partial)
    mkdir_if_missing(os.path.join(partial, "images"))
    write_json(marker, marker_path)
    return partial


def finish(partial: str, dst: str, plan: ConversionPlan) -> None:
    write_json(plan.meta, os.path.join(partial, "meta.json"))
    write_json(plan.splits, os.path.join(partial, "splits.json"))
    os.unlink(os.path.join(partial, _MARKER))
    if os.path.isdir(dst):
        os.rmdir(dst)  # empty, checked at the start
    os.replace(partial, dst)
    num_images = len(plan.jobs)
    logger.info("Wrote %s: %d images, %d identity slots, %d split(s)", dst, num_images,
                len(plan.meta["identities"]), len(plan.splits))


def write_jobs(
    jobs: Sequence[Tuple[str, Any]], images_dir: str, read: Callable[[Sequence[Any]], Iterator[Tuple[Any, bytes]]],
) -> int:
    """Write every job ``(new name, source key)`` whose output is missing; returns the number written.

    ``read`` yields ``(source key, JPEG bytes)`` for the keys it is given.
    """
    todo = {key: new for new, key in jobs if not os.path.exists(os.path.join(images_dir, new))}
    if len(todo) < len(jobs):
        logger.info("%d of %d images already converted", len(jobs) - len(todo), len(jobs))
    written = 0
    for key, data in read(list(todo)):
        with atomic_write(os.path.join(images_dir, todo[key])) as f:
            f.write(data)
        written += 1
        if written % 2000 == 0:
            logger.info("  %d / %d images written", written, len(todo))
    return written

