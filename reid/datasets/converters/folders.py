"""Downloads made of folders of ``<pid>_c<camera>...`` images: Market-1501, DukeMTMC-reID and any
folder with train/query/gallery subfolders."""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from reid.datasets.converters import sources, writing
from reid.datasets.converters.sources import find_inner_folder, images_in
from reid.datasets.converters.writing import ConversionPlan, new_image_name
from reid.errors import ConfigError, DatasetError
from reid.utils.osutils import PathLike

logger = logging.getLogger(__name__)

_NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
_MARKET_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")


def plan_named_folders(
    folders: Sequence[Tuple[str, Sequence[str]]],
    src: str,
    num_cameras: Optional[int],
    relabel: bool,
    min_slots: int = 0,
    strip_prefix: str = "",
) -> Tuple[List[List[List[str]]], Dict[str, List[str]], Dict[str, set], List[Tuple[str, str]], Dict[str, str], int]:
    """Assign prepared names to images named ``<pid>_c<cam>...``, folder by folder in order.

    Args:
        folders: ``(folder key, sorted image paths)`` in processing order.
        src: the download, for messages.
        num_cameras: the fixed camera count (camera numbers 1..num_cameras), or None to take the
            numbers as found (1-based, or 0-based when a ``c0`` exists).
        relabel: re-number pids densely in order of first appearance; otherwise keep the numbers.
        min_slots: the least number of identity slots (when not relabelling).
        strip_prefix: removed from the paths recorded in ``original_names``.

    Returns:
        identities, new names per folder, pids per folder, (new name, source path) jobs,
        original names, number of cameras.

    Raises:
        DatasetError: a name that does not match the pattern or a camera out of range.
    """
    parsed = []
    cam_numbers = set()
    for key, paths in folders:
        for rel in paths:
            base = rel.rsplit("/", 1)[-1]
            m = _NAME_PATTERN.match(base)
            if m is None:
                raise DatasetError(f"{src}: {rel}: file name does not start with '<pid>_c<camera>'")
            pid, cam = int(m.group(1)), int(m.group(2))
            if pid == -1:
                continue  # junk images
            if pid < 0:
                raise DatasetError(f"{src}: {rel}: negative identity {pid}")
            parsed.append((key, rel, pid, cam))
            cam_numbers.add(cam)
    if num_cameras is None:
        base_cam = 0 if 0 in cam_numbers else 1
        num_cameras = (max(cam_numbers) - base_cam + 1) if cam_numbers else 1
    else:
        base_cam = 1
        bad = [(rel, cam) for _, rel, _, cam in parsed if not 1 <= cam <= num_cameras]
        if bad:
            raise DatasetError(f"{src}: {bad[0][0]}: camera c{bad[0][1]} outside c1..c{num_cameras}")
    pid_map: Dict[int, int] = {}
    for _, _, pid, _ in parsed:
        if pid not in pid_map:
            pid_map[pid] = len(pid_map) if relabel else pid
    slots = max([min_slots] + [p + 1 for p in pid_map.values()])
    identities: List[List[List[str]]] = [[[] for _ in range(num_cameras)] for _ in range(slots)]
    per_folder: Dict[str, List[str]] = {key: [] for key, _ in folders}
    pids: Dict[str, set] = {key: set() for key, _ in folders}
    jobs: List[Tuple[str, str]] = []
    original: Dict[str, str] = {}
    for key, rel, pid, cam in parsed:
        new_pid, new_cam = pid_map[pid], cam - base_cam
        cell = identities[new_pid][new_cam]
        fname = new_image_name(new_pid, new_cam, len(cell))
        cell.append(fname)
        per_folder[key].append(fname)
        pids[key].add(new_pid)
        jobs.append((fname, rel))
        original[fname] = rel[len(strip_prefix):] if strip_prefix and rel.startswith(strip_prefix) else rel
    return identities, per_folder, pids, jobs, original, num_cameras


def _plan_market_like(
    files: Sequence[str], src: str, name: str, what: str, folders: Sequence[str], num_cameras: Optional[int],
    relabel: bool, min_slots: int = 0,
) -> ConversionPlan:
    inner = find_inner_folder(files, folders, src, what)
    prefix = inner + "/" if inner else ""
    groups = [(folder, images_in(files, prefix + folder)) for folder in folders]
    for folder, paths in groups:
        if not paths:
            raise DatasetError(f"{src}: folder {prefix + folder} holds no images")
    identities, per_folder, pids, jobs, original, ncams = plan_named_folders(
        groups, src, num_cameras, relabel, min_slots, strip_prefix=prefix)
    train, test, query = folders
    if pids[train] & pids[test]:
        logger.warning("%s: %d identities appear both in %s and %s", src, len(pids[train] & pids[test]), train, test)
    if not pids[query] <= pids[test]:
        logger.warning("%s: %d query identities have no image in %s", src, len(pids[query] - pids[test]), test)
    for folder in folders:
        if not pids[folder]:
            raise DatasetError(f"{src}: folder {prefix + folder} holds only junk (pid -1) images")
    meta = {"name": name, "shot": "multiple", "num_cameras": ncams, "identities": identities,
            "original_names": original}
    splits = [{
        "trainval": sorted(pids[train]),
        "query": sorted(pids[query]),
        "gallery": sorted(pids[test]),
        "official_query": per_folder[query],
        "official_gallery": per_folder[test],
    }]
    return ConversionPlan(meta, splits, list(jobs))


def plan_market1501(files: Sequence[str], src: str = "Market-1501") -> ConversionPlan:
    """Plan the Market-1501 conversion from the list of files of the download.

    Pids keep their numbers (0 = distractors, 1502 slots); cameras c1..c6 become 0..5; junk
    (pid -1) is skipped; folders are read in the order bounding_box_train, bounding_box_test, query.
    """
    return _plan_market_like(files, src, "market1501", "Market-1501", _MARKET_FOLDERS, 6, relabel=False,
                             min_slots=1502)


def plan_dukemtmc(files: Sequence[str], src: str = "DukeMTMC-reID") -> ConversionPlan:
    """Plan the DukeMTMC-reID conversion: as Market-1501 but 8 cameras and pids re-numbered densely
    in order of first appearance (bounding_box_train first)."""
    return _plan_market_like(files, src, "dukemtmc", "DukeMTMC-reID", _MARKET_FOLDERS, 8, relabel=True)


def plan_generic(
    files: Sequence[str], src: str = "folder", train_dir: str = "train", query_dir: str = "query",
    gallery_dir: str = "gallery", name: str = "generic",
) -> ConversionPlan:
    """Plan the conversion of any folder with train/query/gallery subfolders of ``<pid>_c<cam>...``
    images: pids re-numbered densely in order of first appearance (train first), cameras as numbered
    (c1 -> 0, or c0 -> 0 when a c0 exists), pid -1 skipped."""
    folders = (train_dir, gallery_dir, query_dir)
    if len(set(folders)) != 3:
        raise ConfigError(f"the train, query and gallery folder names must differ, got {folders}")
    return _plan_market_like(files, src, name, "generic re-ID", folders, None, relabel=True)


def _convert_named(dataset: str, src: PathLike, dst: PathLike, planner: Callable[..., ConversionPlan],
                   **kwargs: Any) -> str:
    src, dst = os.fspath(src), os.fspath(dst)
    writing.check_dst(dst)
    source = sources.open_source(src)
    try:
        sources.check_md5(src, dataset)
        plan = planner(source.files(), src, **kwargs)
        partial = writing.prepare_partial(dst, dataset, src)
        images_dir = os.path.join(partial, "images")

        def read(paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
            for rel, data in source.read(paths):
                yield rel, writing.to_jpeg(data, f"{src}: {rel}")

        writing.write_jobs(plan.jobs, images_dir, read)
        writing.finish(partial, dst, plan)
    finally:
        source.close()
    return dst


def convert_market1501(src: PathLike, dst: PathLike) -> str:
    """Convert the Market-1501 download (``Market-1501-v15.09.15.zip`` or its folder) into ``dst``;
    returns ``dst``.

    Raises:
        DatasetError: unreadable or unexpected download, or ``dst`` exists and is not empty.
    """
    return _convert_named("market1501", src, dst, plan_market1501)


def convert_dukemtmc(src: PathLike, dst: PathLike) -> str:
    """Convert the DukeMTMC-reID download (``DukeMTMC-reID.zip``, ``Duke.tar.gz`` or the folder) into
    ``dst``, as :func:`convert_market1501`."""
    return _convert_named("dukemtmc", src, dst, plan_dukemtmc)


def convert_generic(src: PathLike, dst: PathLike, train_dir: str = "train", query_dir: str = "query",
                    gallery_dir: str = "gallery", name: Optional[str] = None) -> str:
    """Convert a folder (or archive) with train/query/gallery subfolders of ``<pid>_c<cam>...`` images.

    Args:
        src: the folder or archive.
        dst: the prepared folder to create.
        train_dir, query_dir, gallery_dir: the subfolder names.
        name: the dataset name recorded in meta.json (default: the folder name of ``dst``).

    Returns:
        ``dst``.
    """
    name = name or os.path.basename(os.path.normpath(os.fspath(dst)))
    return _convert_named("generic", src, dst, plan_generic, train_dir=train_dir, query_dir=query_dir,
                          gallery_dir=gallery_dir, name=name)

