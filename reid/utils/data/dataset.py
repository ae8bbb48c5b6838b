"""The prepared dataset layout (open-reid format; the release's ``reid/utils/data/dataset.py``,
``Dataset.load``) and the loading of one split.

A prepared dataset is a folder holding ``images/``, ``meta.json``, ``splits.json`` and, for
FD-GAN training, ``poses/``. :class:`Dataset` validates those files and builds the item lists
(``train``, ``val``, ``trainval``, ``query``, ``gallery``) of one split under one of two
evaluation protocols:

- ``'openreid'`` (the release): query = every image of the query pids, gallery = every image of
  the gallery pids.
- ``'official'``: query and gallery are the image lists ``official_query`` / ``official_gallery``
  the converters record from the official folders (Market-1501, DukeMTMC-reID, generic, synthetic).
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from reid.errors import ConfigError, DatasetError
from reid.utils.osutils import PathLike, read_json

logger = logging.getLogger(__name__)

Item = Tuple[str, int, int]
PROTOCOLS = ("openreid", "official")

# How each known dataset folder is made; {root} is the dataset folder.
PREPARE_COMMANDS = {
    "market1501": "python scripts/prepare_dataset.py market1501 --src Market-1501-v15.09.15.zip --dst {root}",
    "dukemtmc": "python scripts/prepare_dataset.py dukemtmc --src DukeMTMC-reID.zip --dst {root}",
    "cuhk03": "python scripts/prepare_dataset.py cuhk03 --src cuhk03_release.zip --dst {root}",
    "synthetic": "python scripts/make_synthetic_dataset.py --root {root}",
}
GENERIC_PREPARE_COMMAND = "python scripts/prepare_dataset.py generic --src FOLDER --dst {root}"
POSES_HINT = "create it with: make poses POSE_DATASET={root} (scripts/generate_poses.py, see datasets/README.md)"
RAW_DOWNLOAD_MARKERS = ("bounding_box_train", "bounding_box_test", "query", "cuhk-03.mat")

_SPLIT_PID_KEYS = ("trainval", "query", "gallery")
_OFFICIAL_KEYS = ("official_query", "official_gallery")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_file_name(fname: Any, where: str, source: str) -> str:
    if not isinstance(fname, str):
        raise DatasetError(f"{source}: {where} should be a file name, got {_type_name(fname)}")
    if (not fname or fname in (".", "..") or "/" in fname or "\\" in fname or "\x00" in fname
            or fname != fname.strip()):
        raise DatasetError(f"{source}: {where} is not a plain file name inside images/: {fname[:60]!r}")
    return fname


def parse_meta(obj: Any, source: str = "meta.json") -> Dict[str, Any]:
    """Validate the decoded content of a ``meta.json`` file.

    Args:
        obj: the decoded JSON value.
        source: the file name used in error messages.

    Returns:
        A new dict with ``name`` (str), ``shot`` (str), ``num_cameras`` (int >= 1), ``identities``
        (list over pids of lists over cameras of file-name lists; an identity may list fewer
        cameras than ``num_cameras``) and ``original_names`` (dict, empty when absent). Other keys
        are kept unchanged.

    Raises:
        DatasetError: the structure, a type or a value is wrong, or a file name repeats.
    """
    if not isinstance(obj, dict):
        raise DatasetError(f"{source}: expected a JSON object with 'num_cameras' and 'identities', "
                           f"got {_type_name(obj)}")
    out = dict(obj)
    for key in ("name", "shot"):
        value = obj.get(key, "multiple" if key == "shot" else "")
        if not isinstance(value, str):
            raise DatasetError(f"{source}: '{key}' should be a string, got {_type_name(value)}")
        out[key] = value
    if "num_cameras" not in obj:
        raise DatasetError(f"{source}: missing key 'num_cameras'")
    num_cameras = obj["num_cameras"]
    if not _is_int(num_cameras) or num_cameras < 1:
        raise DatasetError(f"{source}: 'num_cameras' should be a positive integer, got {num_cameras!r:.40}")
    if "identities" not in obj:
        raise DatasetError(f"{source}: missing key 'identities'")
    identities = obj["identities"]
    if not isinstance(identities, list):
        raise DatasetError(f"{source}: 'identities' should be a list (one entry per pid), got "
                           f"{_type_name(identities)}")
    seen: Dict[str, int] = {}
    parsed: List[List[List[str]]] = []
    for pid, cams in enumerate(identities):
        if not isinstance(cams, list):
            raise DatasetError(f"{source}: identities[{pid}] should be a list over cameras, got {_type_name(cams)}")
        if len(cams) > num_cameras:
            raise DatasetError(f"{source}: identities[{pid}] lists {len(cams)} cameras but 'num_cameras' "
                               f"is {num_cameras}")
        per_cam: List[List[str]] = []
        for cam, files in enumerate(cams):
            if not isinstance(files, list):
                raise DatasetError(f"{source}: identities[{pid}][{cam}] should be a list of file names, "
                                   f"got {_type_name(files)}")
            names = []
            for k, fname in enumerate(files):
                fname = _check_file_name(fname, f"identities[{pid}][{cam}][{k}]", source)
                if fname in seen:
                    raise DatasetError(f"{source}: file {fname!r} is listed for pid {seen[fname]} and again for "
                                       f"pid {pid}")
                seen[fname] = pid
                names.append(fname)
            per_cam.append(names)
        parsed.append(per_cam)
    out["num_cameras"] = num_cameras
    out["identities"] = parsed
    original = obj.get("original_names", {})
    if not isinstance(original, dict) or not all(isinstance(v, str) for v in original.values()):
        raise DatasetError(f"{source}: 'original_names' should map file names to strings")
    out["original_names"] = dict(original)
    return out


def parse_splits(obj: Any, source: str = "splits.json") -> List[Dict[str, Any]]:
    """Validate the decoded content of a ``splits.json`` file.

    Args:
        obj: the decoded JSON value.
        source: the file name used in error messages.

    Returns:
        A list of splits; each is a new dict whose ``trainval``, ``query`` and ``gallery`` are
        non-empty lists of distinct non-negative ints and whose optional ``official_query`` and
        ``official_gallery`` (both or neither) are lists of distinct file names. Other keys are kept.

    Raises:
        DatasetError: the structure, a type or a value is wrong.
    """
    if not isinstance(obj, list):
        raise DatasetError(f"{source}: expected a list of splits, got {_type_name(obj)}")
    if not obj:
        raise DatasetError(f"{source}: holds no split")
    splits = []
    for i, split in enumerate(obj):
        if not isinstance(split, dict):
            raise DatasetError(f"{source}: split {i} should be an object with 'trainval', 'query' and "
                               f"'gallery', got {_type_name(split)}")
        out = dict(split)
        for key in _SPLIT_PID_KEYS:
            if key not in split:
                raise DatasetError(f"{source}: split {i} has no '{key}' list")
            pids = split[key]
            if not isinstance(pids, list):
                raise DatasetError(f"{source}: split {i} '{key}' should be a list of pids, got {_type_name(pids)}")
            if not pids:
                raise DatasetError(f"{source}: split {i} '{key}' is empty")
            seen = set()
            for pid in pids:
                if not _is_int(pid) or pid < 0:
                    raise DatasetError(f"{source}: split {i} '{key}' holds {pid!r:.40}, not a pid "
                                       "(a non-negative integer)")
                if pid in seen:
                    raise DatasetError(f"{source}: split {i} '{key}' lists pid {pid} twice")
                seen.add(pid)
            out[key] = list(pids)
        present = [key for key in _OFFICIAL_KEYS if key in split]
        if len(present) == 1:
            other = _OFFICIAL_KEYS[1 - _OFFICIAL_KEYS.index(present[0])]
            raise DatasetError(f"{source}: split {i} has '{present[0]}' but no '{other}'")
        for key in present:
            files = split[key]
            if not isinstance(files, list):
                raise DatasetError(f"{source}: split {i} '{key}' should be a list of file names, "
                                   f"got {_type_name(files)}")
            names = [_check_file_name(f, f"split {i} '{key}'[{k}]", source) for k, f in enumerate(files)]
            if len(set(names)) != len(names):
                raise DatasetError(f"{source}: split {i} '{key}' lists a file twice")
            out[key] = names
        splits.append(out)
    return splits


def _find_case_variant(root: str) -> Optional[str]:
    """A sibling of ``root`` whose name equals it up to case and '-'/'_' (e.g. Market-1501)."""
    parent, base = os.path.split(os.path.normpath(root))
    want = re.sub(r"[-_ ]", "", base.lower())
    try:
        entries = sorted(os.listdir(parent or "."))
    except OSError:
        return None
    for entry in entries:
        norm = re.sub(r"[-_ ]", "", entry.lower())
        if entry != base and want and (norm == want or norm.startswith(want)) and \
                os.path.isdir(os.path.join(parent, entry)):
            return os.path.join(parent, entry)
    return None


class Dataset:
    """A prepared re-ID dataset folder and the item lists of one of its splits.

    Args:
        root: the dataset folder (e.g. ``datasets/market1501``), holding ``images/``,
            ``meta.json``, ``splits.json`` and optionally ``poses/``.
        split_id: which entry of ``splits.json`` :meth:`load` uses.

    After :meth:`load`: ``train``, ``val``, ``trainval`` (``(fname, label, cam)`` with labels
    0..n-1 in pid order), ``query``, ``gallery`` (``(fname, pid, cam)`` with the original pids),
    ``num_train_ids``, ``num_val_ids``, ``num_trainval_ids``, and for each list a dict
    ``<list>_pid2files`` mapping label (or pid) to its file names.
    """

    #: The dataset's name, used for the preparation hint; None for an arbitrary folder.
    name: Optional[str] = None

    def __init__(self, root: PathLike, split_id: int = 0) -> None:
        self.root = os.fspath(root)
        self.split_id = split_id
        self.meta: Optional[Dict[str, Any]] = None
        self.split: Optional[Dict[str, Any]] = None
        self.protocol: Optional[str] = None
        self.train: List[Item] = []
        self.val: List[Item] = []
        self.trainval: List[Item] = []
        self.query: List[Item] = []
        self.gallery: List[Item] = []
        self.num_train_ids = 0
        self.num_val_ids = 0
        self.num_trainval_ids = 0
        self.train_pid2files: Dict[int, List[str]] = {}
        self.val_pid2files: Dict[int, List[str]] = {}
        self.trainval_pid2files: Dict[int, List[str]] = {}
        self.query_pid2files: Dict[int, List[str]] = {}
        self.gallery_pid2files: Dict[int, List[str]] = {}

    @property
    def images_dir(self) -> str:
        """The folder holding the images (``<root>/images``)."""
        return os.path.join(self.root, "images")

    @property
    def poses_dir(self) -> str:
        """The folder holding the pose files (``<root>/poses``)."""
        return os.path.join(self.root, "poses")

    def prepare_hint(self) -> str:
        """The command that creates this dataset folder."""
        key = self.name or os.path.basename(os.path.normpath(self.root)).lower()
        return PREPARE_COMMANDS.get(key, GENERIC_PREPARE_COMMAND).format(root=self.root)

    def check_integrity(self, require_poses: bool = False) -> None:
        """Check that ``images/``, ``meta.json``, ``splits.json`` (and ``poses/``) exist.

        Raises:
            DatasetError: something is missing; the message says how to prepare the dataset.
        """
        if not os.path.isdir(self.root):
            variant = _find_case_variant(self.root)
            extra = ""
            if variant is not None:
                raw = any(os.path.exists(os.path.join(variant, m)) for m in RAW_DOWNLOAD_MARKERS)
                target = os.path.basename(os.path.normpath(self.root))
                if raw:
                    extra = f" ({variant} looks like the unconverted download: convert it with --src {variant})"
                else:
                    extra = (f" (found {variant}: the folder name must be the lower-case dataset name, "
                             f"rename it to {target})")
            raise DatasetError(f"{self.root}: dataset folder not found; prepare it with: "
                               f"{self.prepare_hint()}{extra}")
        for part, is_dir in (("images", True), ("meta.json", False), ("splits.json", False)):
            path = os.path.join(self.root, part)
            if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
                raw = any(os.path.exists(os.path.join(self.root, m)) for m in RAW_DOWNLOAD_MARKERS)
                how = ("this looks like an unconverted download; convert it into another folder with: "
                       if raw else "prepare the dataset with: ")
                raise DatasetError(f"{path}: missing; {how}{self.prepare_hint()}")
        if require_poses and not os.path.isdir(self.poses_dir):
            if self.name == "synthetic":
                how = f"re-create the dataset with: {self.prepare_hint()}"
            else:
                how = POSES_HINT.format(root=self.root)
            raise DatasetError(f"{self.poses_dir}: missing (FD-GAN training needs pose files); {how}")

    def load(self, num_val: Union[int, float] = 0.3, verbose: bool = True, protocol: str = "openreid") -> None:
        """Read meta.json and splits.json and build the item lists of split ``split_id``.

        Args:
            num_val: validation identities, the last ones of the sorted trainval pids: an int is a
                count, a float a fraction of the trainval identities (rounded).
            verbose: log a summary table at INFO level (DEBUG otherwise).
            protocol: ``'openreid'`` or ``'official'`` (see the module docstring).

        Raises:
            DatasetError: malformed or inconsistent files, ``split_id`` out of range, too many
                validation identities, or ``'official'`` asked of a split without the official lists.
            ConfigError: an unknown protocol or a num_val of the wrong type or sign.
        """
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        meta_path = os.path.join(self.root, "meta.json")
        splits_path = os.path.join(self.root, "splits.json")
        meta = parse_meta(read_json(meta_path), meta_path)
        splits = parse_splits(read_json(splits_path), splits_path)
        if not _is_int(self.split_id) or not 0 <= self.split_id < len(splits):
            raise DatasetError(f"{splits_path}: split {self.split_id!r} does not exist (the file holds "
                               f"{len(splits)} split(s), numbered 0..{len(splits) - 1})")
        split = splits[self.split_id]
        identities = meta["identities"]
        for key in _SPLIT_PID_KEYS:
            bad = [p for p in split[key] if p >= len(identities)]
            if bad:
                raise DatasetError(f"{splits_path}: split {self.split_id} '{key}' names pid {bad[0]}, but "
                                   f"{meta_path} lists only {len(identities)} identities")

        trainval_pids = sorted(split["trainval"])
        num = len(trainval_pids)
        if (not isinstance(num_val, (int, float)) or isinstance(num_val, bool) or not num_val >= 0
                or not math.isfinite(num_val)):
            raise ConfigError(f"num_val {num_val!r}: expected a non-negative count or fraction")
        if isinstance(num_val, float):
            num_val = int(round(num * num_val))
        if num_val >= num:
            raise DatasetError(f"{splits_path}: split {self.split_id} has {num} trainval identities, too few "
                               f"for {num_val} validation identities (pass a smaller num_val)")
        val_pids = trainval_pids[num - num_val:]
        train_pids = trainval_pids[:num - num_val]
        for pid in trainval_pids:
            count = sum(len(files) for files in identities[pid])
            if count == 0:
                raise DatasetError(f"{meta_path}: trainval identity {pid} of split {self.split_id} has no images")
            if count == 1:
                logger.debug("%s: identity %d has a single image", meta_path, pid)
        overlap = set(trainval_pids) & (set(split["query"]) | set(split["gallery"]))
        if overlap:
            logger.warning("%s: split %d: %d identities are both in trainval and in the test set",
                           splits_path, self.split_id, len(overlap))

        self.meta, self.split, self.protocol = meta, split, protocol
        self.train, self.train_pid2files = _pluck(identities, train_pids, relabel=True)
        self.val, self.val_pid2files = _pluck(identities, val_pids, relabel=True)
        self.trainval, self.trainval_pid2files = _pluck(identities, trainval_pids, relabel=True)
        if protocol == "openreid":
            self.query, self.query_pid2files = _pluck(identities, sorted(split["query"]), relabel=False)
            self.gallery, self.gallery_pid2files = _pluck(identities, sorted(split["gallery"]), relabel=False)
        else:
            self.query, self.gallery = self._official_lists(meta, split, meta_path, splits_path)
            self.query_pid2files = _files_by_pid(self.query)
            self.gallery_pid2files = _files_by_pid(self.gallery)
        for name in ("query", "gallery"):
            if not getattr(self, name):
                raise DatasetError(f"{splits_path}: split {self.split_id} '{name}' holds no image")
        self.num_train_ids = len(train_pids)
        self.num_val_ids = len(val_pids)
        self.num_trainval_ids = num
        self._log_summary(logging.INFO if verbose else logging.DEBUG)

    def _official_lists(
        self, meta: Dict[str, Any], split: Dict[str, Any], meta_path: str, splits_path: str,
    ) -> Tuple[List[Item], List[Item]]:
        if not all(key in split for key in _OFFICIAL_KEYS):
            if meta["name"] == "cuhk03":
                why = "CUHK03 has only the old (1367/100) protocol; use the openreid protocol"
            else:
                why = ("re-convert the dataset with scripts/prepare_dataset.py to record the official "
                       "query/gallery folders")
            raise DatasetError(f"{splits_path}: split {self.split_id} has no official_query/official_gallery "
                               f"lists; {why}")
        where: Dict[str, Tuple[int, int]] = {}
        for pid, cams in enumerate(meta["identities"]):
            for cam, files in enumerate(cams):
                for fname in files:
                    where[fname] = (pid, cam)
        both = set(split["official_query"]) & set(split["official_gallery"])
        if both:
            raise DatasetError(f"{splits_path}: split {self.split_id}: {sorted(both)[0]!r} is in both "
                               "official_query and official_gallery")
        lists = []
        for key in _OFFICIAL_KEYS:
            items = []
            for fname in split[key]:
                if fname not in where:
                    raise DatasetError(f"{splits_path}: split {self.split_id} '{key}' names {fname!r}, which "
                                       f"{meta_path} does not list")
                pid, cam = where[fname]
                items.append((fname, pid, cam))
            lists.append(items)
        return lists[0], lists[1]

    def _log_summary(self, level: int) -> None:
        rows = [
            ("train", self.num_train_ids, len(self.train)),
            ("val", self.num_val_ids, len(self.val)),
            ("trainval", self.num_trainval_ids, len(self.trainval)),
            ("query", len(self.query_pid2files), len(self.query)),
            ("gallery", len(self.gallery_pid2files), len(self.gallery)),
        ]
        title = self.name or (self.meta or {}).get("name") or os.path.basename(os.path.normpath(self.root))
        logger.log(level, "%s loaded (split %d, %s protocol)", title, self.split_id, self.protocol)
        logger.log(level, "  subset   | # ids | # images")
        logger.log(level, "  ---------------------------")
        for name, ids, imgs in rows:
            logger.log(level, "  %-8s | %5d | %8d", name, ids, imgs)


def _pluck(
    identities: Sequence[Sequence[Sequence[str]]], pids: Sequence[int], relabel: bool,
) -> Tuple[List[Item], Dict[int, List[str]]]:
    """Items of ``pids`` (in the given order) and the label/pid -> file names map."""
    items: List[Item] = []
    pid2files: Dict[int, List[str]] = {}
    for index, pid in enumerate(pids):
        key = index if relabel else pid
        for cam, names in enumerate(identities[pid]):
            for fname in names:
                items.append((fname, key, cam))
                pid2files.setdefault(key, []).append(fname)
    return items, pid2files


def _files_by_pid(items: Sequence[Item]) -> Dict[int, List[str]]:
    out: Dict[int, List[str]] = {}
    for fname, pid, _ in items:
        out.setdefault(pid, []).append(fname)
    return out
