"""CUHK03: ``cuhk-03.mat`` (MATLAB v7.3 = HDF5) from ``cuhk03_release.zip``, its folder, or the file itself."""
from __future__ import annotations

import io
import logging
import os
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from reid.datasets.converters.sources import DirSource, check_md5, is_junk_path, open_source
from reid.datasets.converters.writing import (
    JPEG_QUALITY,
    ConversionPlan,
    check_dst,
    finish,
    new_image_name,
    prepare_partial,
    write_jobs,
)
from reid.errors import DatasetError
from reid.utils.osutils import PathLike

logger = logging.getLogger(__name__)

_EXTRACTED_MAT = "cuhk-03.mat.extracted"


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


def convert_cuhk03(src: PathLike, dst: PathLike) -> str:
    """Convert the CUHK03 download (``cuhk03_release.zip``, its folder, or ``cuhk-03.mat`` itself).

    Returns:
        ``dst``.

    Raises:
        DatasetError: unreadable or unexpected download, or ``dst`` exists and is not empty.
    """
    import h5py

    src, dst = os.fspath(src), os.fspath(dst)
    check_dst(dst)
    check_md5(src, "cuhk03")
    partial: Optional[str] = None
    if os.path.isfile(src) and not zipfile.is_zipfile(src) and src.lower().endswith(".mat"):
        mat_path = src
    else:
        source = open_source(src)
        try:
            members = [rel for rel in source.files()
                       if rel.rsplit("/", 1)[-1] == "cuhk-03.mat" and not is_junk_path(rel)]
            if not members:
                raise DatasetError(f"{src}: no cuhk-03.mat inside (is this cuhk03_release.zip?)")
            member = min(members, key=lambda r: (r.count("/"), r))
            if isinstance(source, DirSource):
                mat_path = os.path.join(src, member)
            else:  # h5py needs a real file: extract it into the partial folder (kept for a resume)
                partial = prepare_partial(dst, "cuhk03", src)
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
            partial = prepare_partial(dst, "cuhk03", src)

        def read(indices: Sequence[int]) -> Iterator[Tuple[int, bytes]]:
            for i in indices:
                new, ds = plan.jobs[i]
                yield i, _encode_array(np.asarray(ds[()]), f"{mat_path}: {plan.meta['original_names'][new]}")

        indexed_jobs = [(new, i) for i, (new, _) in enumerate(plan.jobs)]
        write_jobs(indexed_jobs, os.path.join(partial, "images"), read)
    extracted = os.path.join(partial, _EXTRACTED_MAT)
    if os.path.exists(extracted):
        os.unlink(extracted)
    finish(partial, dst, plan)
    return dst
