"""Converters of the official downloads into the prepared layout (spec section 1).

Each converter reads the download as it was fetched (a zip or tar archive, or the extracted
folder: the inner folder is found by its contents), writes ``images/`` (``PPPPPPPP_CC_NNNN.jpg``),
``meta.json`` and ``splits.json`` into ``<dst>.partial`` and renames that folder to ``dst`` at the
end. A re-run after an interruption resumes in ``<dst>.partial``: images written before are kept
(every file is written atomically, so a present file is complete).

On top of the release's keys, ``meta.json`` holds ``original_names`` (new file name -> where the
image came from in the download) and, for Market-1501, DukeMTMC-reID and generic folders, each
split holds ``official_query`` and ``official_gallery``: the images of the official query folder
and of the official gallery folder (junk, pid -1, removed), for the official protocol.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from reid.errors import ConfigError, DatasetError
from reid.utils.data.images import IMAGE_EXTENSIONS
from reid.utils.osutils import PathLike, atomic_write, mkdir_if_missing, write_json

logger = logging.getLogger(__name__)

#: md5 of the official archives; a mismatch is only a warning.
OFFICIAL_MD5 = {
    "market1501": "65005ab7d12ec1c44de4eeafe813e68a",  # Market-1501-v15.09.15.zip
    "dukemtmc": "286aaef9ba5db58853d91b66a028923b",  # DukeMTMC-reID.zip / Duke.tar.gz
    "cuhk03": "728939e58ad9f0ff53e521857dd8fb43",  # cuhk03_release.zip
}
JPEG_QUALITY = 95  # for images that are not JPEG already (CUHK03 arrays, PNGs of generic folders)
_NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
_MARKER = ".convert.json"
_MARKET_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")
_EXTRACTED_MAT = "cuhk-03.mat.extracted"


def new_image_name(pid: int, cam: int, index: int) -> str:
    """The prepared file name ``PPPPPPPP_CC_NNNN.jpg`` of image ``index`` of (``pid``, ``cam``)."""
    return f"{pid:08d}_{cam:02d}_{index:04d}.jpg"


# --------------------------------------------------------------------------------------------
# Reading the download: a folder, a zip or a tar archive


class _Source:
    """Read-only view of a download: relative POSIX paths of its files and their bytes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def files(self) -> List[str]:
        raise NotImplementedError

    def read(self, paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
        """Yield ``(path, bytes)`` for ``paths`` in the order cheapest for the container."""
        raise NotImplementedError

    def extract(self, rel: str, dest: str) -> None:
        """Copy file ``rel`` to ``dest`` (atomically)."""
        raise NotImplementedError

    def size(self, rel: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _DirSource(_Source):
    def files(self) -> List[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.path)
            for name in sorted(filenames):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                out.append(rel.replace(os.sep, "/"))
        return out

    def read(self, paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
        for rel in paths:
            full = os.path.join(self.path, rel)
            try:
                with open(full, "rb") as f:
                    yield rel, f.read()
            except OSError as e:
                raise DatasetError(f"{full}: cannot read ({e.strerror or e})") from None

    def extract(self, rel: str, dest: str) -> None:
        with open(os.path.join(self.path, rel), "rb") as fin, atomic_write(dest) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)

    def size(self, rel: str) -> int:
        return os.path.getsize(os.path.join(self.path, rel))


class _ZipSource(_Source):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetError(f"{path}: not a readable zip archive ({e})") from None
        self.infos = {i.filename: i for i in self.zf.infolist() if not i.is_dir()}

    def files(self) -> List[str]:
        return sorted(self.infos)

    def read(self, paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
        for rel in paths:
            try:
                yield rel, self.zf.read(self.infos[rel])
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
                raise DatasetError(f"{self.path}: member {rel} is corrupt ({e}); download the archive again") from None

    def extract(self, rel: str, dest: str) -> None:
        try:
            with self.zf.open(self.infos[rel]) as fin, atomic_write(dest) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DatasetError(f"{self.path}: member {rel} is corrupt ({e}); download the archive again") from None

    def size(self, rel: str) -> int:
        return self.infos[rel].file_size

    def close(self) -> None:
        self.zf.close()


class _TarSource(_Source):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            self.tf = tarfile.open(path, "r:*")
            self.members = {(m.name[2:] if m.name.startswith("./") else m.name): m
                            for m in self.tf.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path}: not a readable tar archive ({e})") from None

    def files(self) -> List[str]:
        return sorted(self.members)

    def read(self, paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
        # Archive order: a compressed tar can only be read cheaply front to back.
        for rel in sorted(paths, key=lambda p: self.members[p].offset_data):
            try:
                f = self.tf.extractfile(self.members[rel])
                assert f is not None
                yield rel, f.read()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise DatasetError(f"{self.path}: member {rel} is corrupt ({e}); download the archive again") from None

    def extract(self, rel: str, dest: str) -> None:
        try:
            fin = self.tf.extractfile(self.members[rel])
            assert fin is not None
            with fin, atomic_write(dest) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise DatasetError(f"{self.path}: member {rel} is corrupt ({e}); download the archive again") from None

    def size(self, rel: str) -> int:
        return self.members[rel].size

    def close(self) -> None:
        self.tf.close()


def _open_source(src: str) -> _Source:
    if os.path.isdir(src):
        return _DirSource(src)
    if not os.path.isfile(src):
        raise DatasetError(f"{src}: not found (give the downloaded archive or its extracted folder)")
    if zipfile.is_zipfile(src):
        return _ZipSource(src)
    if _is_tar(src):
        return _TarSource(src)
    raise DatasetError(f"{src}: neither a folder, a zip archive nor a tar archive")


def _is_tar(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def file_md5(path: PathLike) -> str:
    """The md5 hex digest of a file's content."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_md5(src: str, dataset: str) -> None:
    if dataset not in OFFICIAL_MD5 or not os.path.isfile(src):
        return
    if not zipfile.is_zipfile(src) and not _is_tar(src):
        return  # e.g. cuhk-03.mat given directly: the md5 is the archive's
    digest = file_md5(src)
    if digest != OFFICIAL_MD5[dataset]:
        logger.warning("%s: md5 %s differs from the official %s archive's %s; converting anyway",
                       src, digest, dataset, OFFICIAL_MD5[dataset])
    else:
        logger.info("%s: md5 matches the official archive", src)


def _is_junk_path(rel: str) -> bool:
    parts = rel.split("/")
    return any(p == "__MACOSX" or p.startswith("._") for p in parts)


def find_inner_folder(files: Sequence[str], required: Sequence[str], src: str, what: str) -> str:
    """The shortest folder prefix ("" for the top) that holds all ``required`` subfolders.

    Raises:
        DatasetError: no such folder.
    """
    found: Dict[str, set] = {}
    for rel in files:
        if _is_junk_path(rel):
            continue
        parts = rel.split("/")
        for i in range(len(parts) - 1):
            if parts[i] in required:
                found.setdefault("/".join(parts[:i]), set()).add(parts[i])
    roots = sorted((r for r, subs in found.items() if subs >= set(required)), key=lambda r: (r.count("/"), r))
    if not roots:
        names = ", ".join(required[:-1]) + " and " + required[-1]
        raise DatasetError(f"{src}: no folder with {names} subfolders found (is this the {what} download?)")
    return roots[0]


def _images_in(files: Sequence[str], folder: str) -> List[str]:
    """Image files directly inside ``folder``, sorted by name."""
    prefix = folder + "/" if folder else ""
    out = []
    for rel in files:
        if not rel.startswith(prefix):
            continue
        name = rel[len(prefix):]
        if "/" in name or name.startswith("."):
            continue
        if name.lower().endswith(IMAGE_EXTENSIONS):
            out.append(rel)
    return sorted(out, key=lambda r: r.rsplit("/", 1)[-1])


# --------------------------------------------------------------------------------------------
# Planning: which source image becomes which prepared file


@dataclass
class ConversionPlan:
    """What a conversion writes: meta/splits content and the (new name, source path) pairs."""

    meta: Dict[str, Any]
    splits: List[Dict[str, Any]]
    jobs: List[Tuple[str, Any]] = field(default_factory=list)


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
    groups = [(folder, _images_in(files, prefix + folder)) for folder in folders]
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


# --------------------------------------------------------------------------------------------
# CUHK03: cuhk-03.mat (MATLAB v7.3 = HDF5)


def _cell_refs(f: Any, obj: Any, source: str, what: str) -> np.ndarray:
    """A MATLAB cell array as an object array of references in MATLAB's (rows, cols) order."""
    import h5py

    if not isinstance(obj, h5py.Dataset) or obj.dtype != h5py.ref_dtype:
        raise DatasetError(f"{source}: {what} is not a MATLAB cell array")
    # HDF5 stores MATLAB's column-major arrays with the dimensions reversed.
    return np.asarray(obj[()]).T


def _deref(f: Any, ref: Any, source: str, what: str) -> Any:
    import h5py

    if not ref:
        return None
    try:
        obj = f[ref]
    except (ValueError, KeyError, OSError) as e:
        raise DatasetError(f"{source}: {what} holds a broken reference ({e})") from None
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"{source}: {what} is not an array")
    return obj


def _is_empty_cell(ds: Any) -> bool:
    if ds is None:
        return True
    return bool(ds.attrs.get("MATLAB_empty", 0)) or ds.size == 0 or ds.ndim < 2


def plan_cuhk03(f: Any, source: str = "cuhk-03.mat") -> ConversionPlan:
    """Plan the CUHK03 conversion from an open ``cuhk-03.mat`` (an ``h5py.File``).

    For each camera pair and identity row, the labeled then the detected images of columns 0-4
    go to camera 0 and those of columns 5-9 to camera 1; an empty cell ends a group. Pids run over
    all pairs in order. Each ``testsets`` entry (1-based (pair, row) rows) makes a split whose query
    and gallery are its identities and whose trainval is every other identity. Jobs hold h5py
    datasets of the images.

    Raises:
        DatasetError: a missing variable or an unexpected structure.
    """
    for key in ("labeled", "detected", "testsets"):
        if key not in f:
            raise DatasetError(f"{source}: no '{key}' variable (expected cuhk-03.mat from cuhk03_release.zip)")
    labeled = _cell_refs(f, f["labeled"], source, "'labeled'").ravel()
    detected = _cell_refs(f, f["detected"], source, "'detected'").ravel()
    if len(labeled) != len(detected):
        raise DatasetError(f"{source}: 'labeled' has {len(labeled)} camera pairs but 'detected' has {len(detected)}")
    identities: List[List[List[str]]] = []
    original: Dict[str, str] = {}
    jobs: List[Tuple[str, Any]] = []
    pair_offsets: List[int] = []
    pair_rows: List[int] = []
    for p, (lab_ref, det_ref) in enumerate(zip(labeled, detected)):
        cells = {}
        for kind, ref in (("labeled", lab_ref), ("detected", det_ref)):
            what = f"{kind}{{{p + 1}}}"
            ds = _deref(f, ref, source, what)
            if ds is None:
                raise DatasetError(f"{source}: {what} is empty")
            mat = _cell_refs(f, ds, source, what)
            if mat.ndim != 2 or mat.shape[1] != 10:
                raise DatasetError(f"{source}: {what} has shape {mat.shape}, expected (identities, 10)")
            cells[kind] = mat
        if cells["labeled"].shape != cells["detected"].shape:
            raise DatasetError(f"{source}: camera pair {p + 1}: labeled {cells['labeled'].shape} and detected "
                               f"{cells['detected'].shape} differ in shape")
        pair_offsets.append(len(identities))
        pair_rows.append(cells["labeled"].shape[0])
        for r in range(cells["labeled"].shape[0]):
            pid = len(identities)
            cams: List[List[str]] = [[], []]
            for cam, cols in ((0, range(0, 5)), (1, range(5, 10))):
                for kind in ("labeled", "detected"):
                    for c in cols:
                        what = f"{kind}{{{p + 1}}}{{{r + 1},{c + 1}}}"
                        ds = _deref(f, cells[kind][r, c], source, what)
                        if _is_empty_cell(ds):
                            break
                        fname = new_image_name(pid, cam, len(cams[cam]))
                        cams[cam].append(fname)
                        jobs.append((fname, ds))
                        original[fname] = f"cuhk-03.mat:{what}"
            identities.append(cams)
    testsets = _cell_refs(f, f["testsets"], source, "'testsets'").ravel()
    all_pids = set(range(len(identities)))
    splits = []
    for t, ref in enumerate(testsets):
        what = f"testsets{{{t + 1}}}"
        ds = _deref(f, ref, source, what)
        if _is_empty_cell(ds):
            raise DatasetError(f"{source}: {what} is empty")
        rows = np.asarray(ds[()]).T
        if rows.ndim != 2 or rows.shape[1] != 2 or not np.issubdtype(rows.dtype, np.number):
            raise DatasetError(f"{source}: {what} has shape {rows.shape}, expected (n, 2) numbers")
        test = set()
        for pair_f, row_f in rows.tolist():
            pair, row = int(pair_f), int(row_f)
            exists = pair == pair_f and row == row_f and 1 <= pair <= len(pair_offsets) \
                and 1 <= row <= pair_rows[pair - 1]
            if not exists:
                raise DatasetError(f"{source}: {what} names (pair {pair_f:g}, row {row_f:g}), which does not exist")
            test.add(pair_offsets[pair - 1] + row - 1)
        splits.append({"trainval": sorted(all_pids - test), "query": sorted(test), "gallery": sorted(test)})
    if not splits:
        raise DatasetError(f"{source}: 'testsets' is empty")
    meta = {"name": "cuhk03", "shot": "multiple", "num_cameras": 2, "identities": identities,
            "original_names": original}
    return ConversionPlan(meta, splits, jobs)


def _encode_array(arr: np.ndarray, what: str) -> bytes:
    if arr.dtype != np.uint8:
        raise DatasetError(f"{what}: image data of type {arr.dtype}, expected uint8")
    if arr.ndim == 3:
        arr = arr.transpose(2, 1, 0)  # MATLAB H x W x 3 stored as 3 x W x H
        if arr.shape[2] not in (1, 3):
            raise DatasetError(f"{what}: image with {arr.shape[2]} channels")
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
    else:
        arr = arr.T
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Writing


def _to_jpeg(data: bytes, what: str) -> bytes:
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


def _check_dst(dst: str) -> None:
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise DatasetError(f"{dst}: already exists and is not empty; remove it or choose another --dst")


def _prepare_partial(dst: str, dataset: str, src: str) -> str:
    """Create or resume ``<dst>.partial``; returns its path."""
    _check_dst(dst)
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


def _finish(partial: str, dst: str, plan: ConversionPlan) -> None:
    write_json(plan.meta, os.path.join(partial, "meta.json"))
    write_json(plan.splits, os.path.join(partial, "splits.json"))
    os.unlink(os.path.join(partial, _MARKER))
    if os.path.isdir(dst):
        os.rmdir(dst)  # empty, checked at the start
    os.replace(partial, dst)
    num_images = len(plan.jobs)
    logger.info("Wrote %s: %d images, %d identity slots, %d split(s)", dst, num_images,
                len(plan.meta["identities"]), len(plan.splits))


def _write_jobs(
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


def _convert_named(dataset: str, src: PathLike, dst: PathLike, planner: Callable[..., ConversionPlan],
                   **kwargs: Any) -> str:
    src, dst = os.fspath(src), os.fspath(dst)
    _check_dst(dst)
    source = _open_source(src)
    try:
        _check_md5(src, dataset)
        plan = planner(source.files(), src, **kwargs)
        partial = _prepare_partial(dst, dataset, src)
        images_dir = os.path.join(partial, "images")

        def read(paths: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
            for rel, data in source.read(paths):
                yield rel, _to_jpeg(data, f"{src}: {rel}")

        _write_jobs(plan.jobs, images_dir, read)
        _finish(partial, dst, plan)
    finally:
        source.close()
    return dst


def convert_market1501(src: PathLike, dst: PathLike) -> str:
    """Convert the Market-1501 download (``Market-1501-v15.09.15.zip`` or its folder) into ``dst``.

    Returns:
        ``dst``.

    Raises:
        DatasetError: unreadable or unexpected download, or ``dst`` exists and is not empty.
    """
    return _convert_named("market1501", src, dst, plan_market1501)


def convert_dukemtmc(src: PathLike, dst: PathLike) -> str:
    """Convert the DukeMTMC-reID download (``DukeMTMC-reID.zip``, ``Duke.tar.gz`` or the folder).

    Returns:
        ``dst``.

    Raises:
        DatasetError: unreadable or unexpected download, or ``dst`` exists and is not empty.
    """
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


def convert_cuhk03(src: PathLike, dst: PathLike) -> str:
    """Convert the CUHK03 download (``cuhk03_release.zip``, its folder, or ``cuhk-03.mat`` itself).

    Returns:
        ``dst``.

    Raises:
        DatasetError: unreadable or unexpected download, or ``dst`` exists and is not empty.
    """
    import h5py

    src, dst = os.fspath(src), os.fspath(dst)
    _check_dst(dst)
    _check_md5(src, "cuhk03")
    partial: Optional[str] = None
    if os.path.isfile(src) and not zipfile.is_zipfile(src) and src.lower().endswith(".mat"):
        mat_path = src
    else:
        source = _open_source(src)
        try:
            members = [rel for rel in source.files()
                       if rel.rsplit("/", 1)[-1] == "cuhk-03.mat" and not _is_junk_path(rel)]
            if not members:
                raise DatasetError(f"{src}: no cuhk-03.mat inside (is this cuhk03_release.zip?)")
            member = min(members, key=lambda r: (r.count("/"), r))
            if isinstance(source, _DirSource):
                mat_path = os.path.join(src, member)
            else:  # h5py needs a real file: extract it into the partial folder (kept for a resume)
                partial = _prepare_partial(dst, "cuhk03", src)
                mat_path = os.path.join(partial, _EXTRACTED_MAT)
                if not (os.path.isfile(mat_path) and os.path.getsize(mat_path) == source.size(member)):
                    logger.info("Extracting %s from %s", member, src)
                    source.extract(member, mat_path)
        finally:
            source.close()
    try:
        f = h5py.File(mat_path, "r")
    except OSError as e:
        raise DatasetError(f"{mat_path}: not a MATLAB v7.3 (HDF5) file ({e})") from None
    with f:
        plan = plan_cuhk03(f, mat_path)
        if partial is None:
            partial = _prepare_partial(dst, "cuhk03", src)

        def read(indices: Sequence[int]) -> Iterator[Tuple[int, bytes]]:
            for i in indices:
                new, ds = plan.jobs[i]
                yield i, _encode_array(np.asarray(ds[()]), f"{mat_path}: {plan.meta['original_names'][new]}")

        indexed_jobs = [(new, i) for i, (new, _) in enumerate(plan.jobs)]
        _write_jobs(indexed_jobs, os.path.join(partial, "images"), read)
    extracted = os.path.join(partial, _EXTRACTED_MAT)
    if os.path.exists(extracted):
        os.unlink(extracted)
    _finish(partial, dst, plan)
    return dst


CONVERTERS: Dict[str, Callable[..., str]] = {
    "market1501": convert_market1501,
    "dukemtmc": convert_dukemtmc,
    "cuhk03": convert_cuhk03,
    "generic": convert_generic,
}


def convert(dataset: str, src: PathLike, dst: PathLike, **kwargs: Any) -> str:
    """Run the converter ``dataset`` (one of ``CONVERTERS``); extra keyword arguments go to it.

    Raises:
        ConfigError: an unknown converter name.
    """
    if dataset not in CONVERTERS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(sorted(CONVERTERS))}")
    return CONVERTERS[dataset](src, dst, **kwargs)
