"""Converters of the official downloads, on small fake archives with hand-computed expectations."""
from __future__ import annotations

import io
import logging
import os
import tarfile
import zipfile
from typing import Any, Callable, Dict, List, Tuple

import h5py
import numpy as np
import pytest
from PIL import Image

from helpers import load_json, load_script
from reid.datasets import CUHK03, DukeMTMC, Market1501
from reid.datasets.converters import convert_cuhk03, convert_dukemtmc, convert_generic, convert_market1501, writing
from reid.datasets.converters import cuhk03 as cuhk03_converter
from reid.errors import DatasetError

# (folder, original file name) of a fake Market-1501 download, as listed in the archive.
MARKET_FILES = [
    ("bounding_box_train", "0002_c1s1_000451_03.jpg"),
    ("bounding_box_train", "0002_c2s1_000301_01.jpg"),
    ("bounding_box_train", "0007_c1s1_000001_01.jpg"),
    ("bounding_box_train", "0007_c1s2_000002_01.jpg"),
    ("bounding_box_train", "0007_c3s1_000010_02.jpg"),
    ("bounding_box_test", "-1_c1s1_000401_03.jpg"),  # junk
    ("bounding_box_test", "-1_c5s1_000401_01.jpg"),  # junk
    ("bounding_box_test", "0000_c3s1_000001_01.jpg"),  # distractor
    ("bounding_box_test", "0000_c6s1_000002_01.jpg"),  # distractor
    ("bounding_box_test", "0003_c4s1_000011_01.jpg"),
    ("bounding_box_test", "0003_c6s1_000002_01.jpg"),
    ("bounding_box_test", "0005_c2s1_000100_01.jpg"),
    ("bounding_box_test", "0005_c2s1_000200_01.jpg"),
    ("query", "0003_c1s1_000005_00.jpg"),
    ("query", "0005_c5s1_000300_00.jpg"),
    ("query", "0003_c4s1_000020_00.jpg"),
]


def jpeg_bytes(seed: int, size: Tuple[int, int] = (8, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def market_contents(top: str = "Market-1501-v15.09.15",
                    files: List[Tuple[str, str]] = MARKET_FILES) -> Dict[str, bytes]:
    out = {f"{top}/{folder}/{fname}": jpeg_bytes(i) for i, (folder, fname) in enumerate(files)}
    out[f"{top}/bounding_box_train/Thumbs.db"] = b"not an image"
    out[f"{top}/gt_bbox/0002_c1s1_000451_03.jpg"] = jpeg_bytes(99)
    out[f"{top}/readme.txt"] = b"readme"
    out[f"__MACOSX/{top}/query/._0003_c1s1_000005_00.jpg"] = b"resource fork"
    return out


def write_zip(path: str, contents: Dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    return path


def write_tree(root: str, contents: Dict[str, bytes]) -> str:
    for name, data in contents.items():
        path = os.path.join(root, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return root


def interrupt_at_call(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, call: int) -> Callable[..., Any]:
    """Make ``module.name`` raise KeyboardInterrupt on its ``call``-th call; returns the real function."""
    real = getattr(module, name)
    calls = {"n": 0}

    def interrupted(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(module, name, interrupted)
    return real


def n(pid: int, cam: int, i: int) -> str:
    return f"{pid:08d}_{cam:02d}_{i:04d}.jpg"


# Hand-computed result of the fake Market download (folders train, test, query; sorted names).
MARKET_EXPECTED_CELLS = {
    (2, 0): [n(2, 0, 0)], (2, 1): [n(2, 1, 0)],
    (7, 0): [n(7, 0, 0), n(7, 0, 1)], (7, 2): [n(7, 2, 0)],
    (0, 2): [n(0, 2, 0)], (0, 5): [n(0, 5, 0)],
    (3, 3): [n(3, 3, 0), n(3, 3, 1)],  # test c4 then query c4
    (3, 5): [n(3, 5, 0)], (3, 0): [n(3, 0, 0)],
    (5, 1): [n(5, 1, 0), n(5, 1, 1)], (5, 4): [n(5, 4, 0)],
}
MARKET_EXPECTED_SPLIT = {
    "trainval": [2, 7],
    "query": [3, 5],
    "gallery": [0, 3, 5],
    # query folder sorted: 0003_c1..., 0003_c4..., 0005_c5...
    "official_query": [n(3, 0, 0), n(3, 3, 1), n(5, 4, 0)],
    "official_gallery": [n(0, 2, 0), n(0, 5, 0), n(3, 3, 0), n(3, 5, 0), n(5, 1, 0), n(5, 1, 1)],
}


def check_market_output(dst: str, contents: Dict[str, bytes]) -> None:
    meta = load_json(os.path.join(dst, "meta.json"))
    splits = load_json(os.path.join(dst, "splits.json"))
    assert meta["name"] == "market1501" and meta["shot"] == "multiple" and meta["num_cameras"] == 6
    assert len(meta["identities"]) == 1502
    for pid, cams in enumerate(meta["identities"]):
        assert len(cams) == 6
        for cam, files in enumerate(cams):
            assert files == MARKET_EXPECTED_CELLS.get((pid, cam), []), (pid, cam)
    assert splits == [MARKET_EXPECTED_SPLIT]
    assert meta["original_names"][n(3, 3, 1)] == "query/0003_c4s1_000020_00.jpg"
    assert meta["original_names"][n(3, 3, 0)] == "bounding_box_test/0003_c4s1_000011_01.jpg"
    assert meta["original_names"][n(0, 5, 0)] == "bounding_box_test/0000_c6s1_000002_01.jpg"
    assert len(meta["original_names"]) == 14
    images = sorted(os.listdir(os.path.join(dst, "images")))
    assert len(images) == 14  # 16 named files minus 2 junk
    for new, orig in meta["original_names"].items():
        with open(os.path.join(dst, "images", new), "rb") as f:
            assert f.read() == contents["Market-1501-v15.09.15/" + orig]  # JPEG bytes copied unchanged
    assert not os.path.exists(os.path.join(dst, "poses"))
    assert not os.path.exists(dst + ".partial")


def test_market_from_zip(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    contents = market_contents()
    src = write_zip(str(tmp_path / "Market-1501-v15.09.15.zip"), contents)
    dst = str(tmp_path / "market1501")
    with caplog.at_level(logging.WARNING, logger="reid.datasets.converters"):
        assert convert_market1501(src, dst) == dst
    # not the official archive: a warning naming the md5, and the conversion goes on
    assert any("md5" in r.getMessage() and "65005ab7d12ec1c44de4eeafe813e68a" in r.getMessage()
               for r in caplog.records)
    check_market_output(dst, contents)
    ds = Market1501(dst, num_val=1)
    assert ds.num_train_ids == 1 and ds.num_val_ids == 1
    assert [p for _, p, _ in ds.query] == [3, 3, 3, 3, 5, 5, 5]  # openreid: every image of pids 3 and 5
    official = Market1501(dst, num_val=1, protocol="official")
    assert official.query == [(n(3, 0, 0), 3, 0), (n(3, 3, 1), 3, 3), (n(5, 4, 0), 5, 4)]
    assert len(official.gallery) == 6 and {p for _, p, _ in official.gallery} == {0, 3, 5}


def test_market_from_extracted_folder(tmp_path: Any) -> None:
    contents = market_contents()
    src = write_tree(str(tmp_path / "download"), contents)
    dst = str(tmp_path / "out" / "market1501")
    convert_market1501(src, dst)
    check_market_output(dst, contents)


def test_market_resumes_after_interruption(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = market_contents()
    src = write_zip(str(tmp_path / "m.zip"), contents)
    dst = str(tmp_path / "market1501")
    real = interrupt_at_call(monkeypatch, writing, "to_jpeg", 6)
    with pytest.raises(KeyboardInterrupt):
        convert_market1501(src, dst)
    assert not os.path.exists(dst)
    partial_images = os.listdir(os.path.join(dst + ".partial", "images"))
    assert len([f for f in partial_images if f.endswith(".jpg")]) == 5
    monkeypatch.setattr(writing, "to_jpeg", real)
    written: List[str] = []
    real_atomic = writing.atomic_write

    def counting(path: Any, mode: str = "wb") -> Any:
        written.append(os.path.basename(str(path)))
        return real_atomic(path, mode)

    monkeypatch.setattr(writing, "atomic_write", counting)
    convert_market1501(src, dst)
    assert len([w for w in written if w.endswith(".jpg")]) == 14 - 5  # only the missing ones
    check_market_output(dst, contents)


def test_refuses_non_empty_destination(tmp_path: Any) -> None:
    src = write_zip(str(tmp_path / "m.zip"), market_contents())
    dst = tmp_path / "market1501"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        convert_market1501(src, str(dst))
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_market1501(src, str(empty))  # an empty folder is fine
    assert os.path.isfile(empty / "meta.json")


def test_bad_downloads(tmp_path: Any) -> None:
    with pytest.raises(DatasetError, match="not found"):
        convert_market1501(str(tmp_path / "missing.zip"), str(tmp_path / "a"))
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is no archive")
    with pytest.raises(DatasetError, match="neither a folder, a zip archive nor a tar archive"):
        convert_market1501(str(junk), str(tmp_path / "b"))
    other = write_zip(str(tmp_path / "other.zip"), {"stuff/bounding_box_train/0001_c1_a.jpg": jpeg_bytes(1)})
    with pytest.raises(DatasetError, match="no folder with bounding_box_train, bounding_box_test and query subfolders"):
        convert_market1501(other, str(tmp_path / "c"))
    badname = market_contents()
    badname["Market-1501-v15.09.15/query/IMG_0001.jpg"] = jpeg_bytes(3)
    with pytest.raises(DatasetError, match="query/IMG_0001.jpg: file name does not start with"):
        convert_market1501(write_zip(str(tmp_path / "bad.zip"), badname), str(tmp_path / "d"))
    badcam = market_contents()
    badcam["Market-1501-v15.09.15/query/0003_c7s1_000001_00.jpg"] = jpeg_bytes(4)
    with pytest.raises(DatasetError, match="camera c7 outside c1..c6"):
        convert_market1501(write_zip(str(tmp_path / "badcam.zip"), badcam), str(tmp_path / "e"))


# ---- DukeMTMC-reID: pids re-numbered in order of first appearance, 8 cameras

DUKE_FILES = [
    ("bounding_box_train", "0005_c2_f0046182.jpg"),
    ("bounding_box_train", "0001_c1_f0000001.jpg"),
    ("bounding_box_train", "0005_c8_f0046999.jpg"),
    ("bounding_box_test", "0010_c3_f0100000.jpg"),
    ("bounding_box_test", "0004_c8_f0000100.jpg"),
    ("bounding_box_test", "0004_c1_f0000200.jpg"),
    ("query", "0010_c6_f0100500.jpg"),
]


def test_dukemtmc_from_tar_gz(tmp_path: Any) -> None:
    contents = {f"DukeMTMC-reID/{folder}/{fname}": jpeg_bytes(i) for i, (folder, fname) in enumerate(DUKE_FILES)}
    src = str(tmp_path / "Duke.tar.gz")
    with tarfile.open(src, "w:gz") as tf:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    dst = str(tmp_path / "dukemtmc")
    convert_dukemtmc(src, dst)
    meta = load_json(os.path.join(dst, "meta.json"))
    splits = load_json(os.path.join(dst, "splits.json"))
    # sorted train names: 0001_c1, 0005_c2, 0005_c8 -> pid 1 -> 0, pid 5 -> 1
    # sorted test names: 0004_c1, 0004_c8, 0010_c3 -> pid 4 -> 2, pid 10 -> 3
    assert meta["num_cameras"] == 8 and len(meta["identities"]) == 4
    empty8: List[List[str]] = [[] for _ in range(8)]
    expected = [list(map(list, empty8)) for _ in range(4)]
    expected[0][0] = [n(0, 0, 0)]
    expected[1][1] = [n(1, 1, 0)]
    expected[1][7] = [n(1, 7, 0)]
    expected[2][0] = [n(2, 0, 0)]
    expected[2][7] = [n(2, 7, 0)]
    expected[3][2] = [n(3, 2, 0)]
    expected[3][5] = [n(3, 5, 0)]
    assert meta["identities"] == expected
    assert splits == [{"trainval": [0, 1], "query": [3], "gallery": [2, 3], "official_query": [n(3, 5, 0)],
                       "official_gallery": [n(2, 0, 0), n(2, 7, 0), n(3, 2, 0)]}]
    assert meta["original_names"][n(1, 7, 0)] == "bounding_box_train/0005_c8_f0046999.jpg"
    with open(os.path.join(dst, "images", n(3, 5, 0)), "rb") as f:
        assert f.read() == contents["DukeMTMC-reID/query/0010_c6_f0100500.jpg"]
    ds = DukeMTMC(dst, num_val=1, protocol="official")
    assert ds.query == [(n(3, 5, 0), 3, 5)]


# ---- generic folders


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_generic_folder_with_custom_names(tmp_path: Any) -> None:
    contents = {
        "mydata/trn/42_c0_a.png": png_bytes(40),
        "mydata/trn/42_c1_b.png": png_bytes(60),
        "mydata/trn/-1_c1_junk.png": png_bytes(0),
        "mydata/gal/7_c1_x.jpg": jpeg_bytes(7),
        "mydata/gal/9_c2_y.jpg": jpeg_bytes(9),
        "mydata/qry/7_c0_q.jpg": jpeg_bytes(17),
    }
    src = write_tree(str(tmp_path / "src"), contents)
    dst = str(tmp_path / "mine")
    convert_generic(src, dst, train_dir="trn", query_dir="qry", gallery_dir="gal")
    meta = load_json(os.path.join(dst, "meta.json"))
    splits = load_json(os.path.join(dst, "splits.json"))
    # c0 exists, so cameras are 0-based: c0 -> 0, c2 -> 2; pids 42 -> 0, 7 -> 1, 9 -> 2
    assert meta["name"] == "mine" and meta["num_cameras"] == 3
    assert meta["identities"] == [
        [[n(0, 0, 0)], [n(0, 1, 0)], []],
        [[n(1, 0, 0)], [n(1, 1, 0)], []],
        [[], [], [n(2, 2, 0)]],
    ]
    assert splits == [{"trainval": [0], "query": [1], "gallery": [1, 2], "official_query": [n(1, 0, 0)],
                       "official_gallery": [n(1, 1, 0), n(2, 2, 0)]}]
    # PNGs are re-encoded as JPEG, JPEGs copied
    with Image.open(os.path.join(dst, "images", n(0, 1, 0))) as img:
        assert img.format == "JPEG" and img.size == (8, 16)
        assert abs(int(np.asarray(img.convert("RGB")).mean()) - 60) <= 2
    with open(os.path.join(dst, "images", n(1, 0, 0)), "rb") as f:
        assert f.read() == contents["mydata/qry/7_c0_q.jpg"]


def test_prepare_dataset_cli(tmp_path: Any, capsys: pytest.CaptureFixture) -> None:
    cli = load_script("prepare_dataset")
    assert cli.main(["market1501", "--src", str(tmp_path / "nope.zip"), "--dst", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.zip: not found" in err
    src = write_tree(str(tmp_path / "g"), {"train/1_c1_a.jpg": jpeg_bytes(1), "query/2_c1_b.jpg": jpeg_bytes(2),
                                           "gallery/2_c2_c.jpg": jpeg_bytes(3)})
    assert cli.main(["generic", "--src", src, "--dst", str(tmp_path / "gen")]) == 0
    assert load_json(str(tmp_path / "gen" / "splits.json"))[0]["official_query"] == [n(1, 0, 0)]
    with pytest.raises(SystemExit):
        cli.main(["market1501", "--src", src, "--dst", str(tmp_path / "x"), "--train-dir", "t"])


# ---- CUHK03: a MATLAB v7.3 (HDF5) cuhk-03.mat written with h5py


def cuhk_image(pair: int, row: int, col: int, kind: int) -> np.ndarray:
    """A MATLAB H x W x 3 image: top half one colour, bottom half another (tells up from down)."""
    img = np.zeros((16, 8, 3), np.uint8)
    img[:8] = (40 * pair + 20, 20 * row + 10, 20 * col + 5 + 10 * kind)
    img[8:] = (250, 250, 250)
    return img


class MatWriter:
    """Writes MATLAB v7.3-style cell arrays: objects under #refs#, cells as reference arrays,
    every array stored with its dimensions reversed (column-major)."""

    def __init__(self, f: h5py.File) -> None:
        self.f = f
        self.refs = f.create_group("#refs#")
        self.count = 0

    def _name(self) -> str:
        self.count += 1
        return f"r{self.count}"

    def array(self, arr: np.ndarray) -> Any:
        ds = self.refs.create_dataset(self._name(), data=np.asarray(arr).T)
        return ds.ref

    def empty(self) -> Any:
        ds = self.refs.create_dataset(self._name(), data=np.array([0, 0], dtype=np.uint64))
        ds.attrs["MATLAB_class"] = np.bytes_("double")
        ds.attrs["MATLAB_empty"] = np.uint8(1)
        return ds.ref

    def cell(self, refs: List[List[Any]], name: str = "") -> Any:
        rows, cols = len(refs), len(refs[0])
        data = np.empty((cols, rows), dtype=h5py.ref_dtype)  # reversed dimensions
        for r in range(rows):
            for c in range(cols):
                data[c, r] = refs[r][c]
        if name:
            ds = self.f.create_dataset(name, data=data)
        else:
            ds = self.refs.create_dataset(self._name(), data=data)
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
        return ds.ref


# Which cells hold images, per pair (rows = identities, 10 columns); "." = empty cell.
# Pair 1 has 3 identities, pair 2 has 2.
LABELED = [
    ["IIIIIIII..", "IIIII.I...", "IIIIIIIIII"],
    ["I....I....", "II...II..."],
]
DETECTED = [
    ["II.I.IIIII", "IIIIIIIIII", ".........."],
    ["IIIIIIIIII", "I....I...."],
]
# Images kept (an empty cell ends its group of five):
#   pid 0 cam 0: 5 labeled + 2 detected (col 3 after the gap is dropped) = 7; cam 1: 3 labeled + 5 detected = 8
#   pid 1 cam 0: 5 + 5 = 10; cam 1: 0 labeled (col 6 comes after the empty col 5) + 5 = 5
#   pid 2 cam 0: 5 + 0 = 5; cam 1: 5 + 0 = 5
#   pid 3 cam 0: 1 + 5 = 6; cam 1: 1 + 5 = 6
#   pid 4 cam 0: 2 + 1 = 3; cam 1: 2 + 1 = 3
CUHK_COUNTS = {0: (7, 8), 1: (10, 5), 2: (5, 5), 3: (6, 6), 4: (3, 3)}
TESTSETS = [[(1, 2), (2, 1)], [(2, 2)], [(1, 1), (1, 3)]]  # 1-based (pair, row)


def write_cuhk_mat(path: str) -> None:
    with h5py.File(path, "w") as f:
        w = MatWriter(f)
        for name, pattern, kind in (("labeled", LABELED, 0), ("detected", DETECTED, 1)):
            pair_refs = []
            for p, rows in enumerate(pattern):
                cells = [[w.array(cuhk_image(p, r, c, kind)) if ch == "I" else w.empty() for c, ch in enumerate(row)]
                         for r, row in enumerate(rows)]
                pair_refs.append(w.cell(cells))
            w.cell([pair_refs], name=name)  # MATLAB 1 x 5 cell (here 1 x 2)
        test_refs = [w.array(np.array(t, dtype=np.float64)) for t in TESTSETS]  # each n x 2 doubles
        w.cell([[r] for r in test_refs], name="testsets")  # MATLAB 20 x 1 cell (here 3 x 1)


def check_cuhk_output(dst: str) -> None:
    meta = load_json(os.path.join(dst, "meta.json"))
    splits = load_json(os.path.join(dst, "splits.json"))
    assert meta["name"] == "cuhk03" and meta["num_cameras"] == 2 and len(meta["identities"]) == 5
    for pid, (c0, c1) in CUHK_COUNTS.items():
        assert meta["identities"][pid] == [[n(pid, 0, i) for i in range(c0)], [n(pid, 1, i) for i in range(c1)]]
    # pairs: pair 1 rows 1..3 -> pids 0..2, pair 2 rows 1..2 -> pids 3..4
    assert splits == [
        {"trainval": [0, 2, 4], "query": [1, 3], "gallery": [1, 3]},
        {"trainval": [0, 1, 2, 3], "query": [4], "gallery": [4]},
        {"trainval": [1, 3, 4], "query": [0, 2], "gallery": [0, 2]},
    ]
    orig = meta["original_names"]
    assert orig[n(0, 0, 4)] == "cuhk-03.mat:labeled{1}{1,5}"
    assert orig[n(0, 0, 5)] == "cuhk-03.mat:detected{1}{1,1}"
    assert orig[n(0, 1, 0)] == "cuhk-03.mat:labeled{1}{1,6}"
    assert orig[n(0, 1, 3)] == "cuhk-03.mat:detected{1}{1,6}"
    assert orig[n(4, 1, 2)] == "cuhk-03.mat:detected{2}{2,6}"
    assert len(os.listdir(os.path.join(dst, "images"))) == sum(a + b for a, b in CUHK_COUNTS.values())
    # the array is written upright: 8 wide, 16 high, coloured top half, white bottom half
    with Image.open(os.path.join(dst, "images", n(3, 1, 1))) as img:  # detected{2}{1,6}
        assert img.format == "JPEG" and img.size == (8, 16)
        arr = np.asarray(img.convert("RGB")).astype(int)
    top = arr[1:6, 1:7].reshape(-1, 3).mean(0)
    assert np.all(np.abs(top - np.array([40 * 1 + 20, 10, 20 * 5 + 5 + 10])) <= 8), top
    assert arr[10:15].min() >= 235


def test_cuhk03_from_mat_file(tmp_path: Any) -> None:
    mat = str(tmp_path / "cuhk-03.mat")
    write_cuhk_mat(mat)
    dst = str(tmp_path / "cuhk03")
    convert_cuhk03(mat, dst)
    check_cuhk_output(dst)
    ds = CUHK03(dst, split_id=2, num_val=1)
    assert ds.num_trainval_ids == 3 and ds.num_val_ids == 1
    assert sorted(ds.query_pid2files) == [0, 2] and len(ds.query) == 7 + 8 + 5 + 5


def test_cuhk03_from_zip(tmp_path: Any) -> None:
    mat = str(tmp_path / "cuhk-03.mat")
    write_cuhk_mat(mat)
    with open(mat, "rb") as f:
        data = f.read()
    src = write_zip(str(tmp_path / "cuhk03_release.zip"),
                    {"cuhk03_release/cuhk-03.mat": data, "cuhk03_release/README.md": b"x"})
    dst = str(tmp_path / "cuhk03")
    convert_cuhk03(src, dst)
    check_cuhk_output(dst)
    assert sorted(os.listdir(dst)) == ["images", "meta.json", "splits.json"]


def test_cuhk03_bad_mat(tmp_path: Any) -> None:
    bad = tmp_path / "cuhk-03.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DatasetError, match="not a MATLAB v7.3"):
        convert_cuhk03(str(bad), str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a.partial") and not os.path.exists(tmp_path / "a")
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f.create_dataset("labeled", data=np.zeros(3))
    with pytest.raises(DatasetError, match="no 'detected' variable"):
        convert_cuhk03(str(tmp_path / "other.mat"), str(tmp_path / "b"))
    empty_zip = write_zip(str(tmp_path / "e.zip"), {"x/readme.txt": b""})
    with pytest.raises(DatasetError, match="no cuhk-03.mat inside"):
        convert_cuhk03(empty_zip, str(tmp_path / "c"))


def test_cuhk03_resumes_after_interruption(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    mat = str(tmp_path / "cuhk-03.mat")
    write_cuhk_mat(mat)
    with open(mat, "rb") as f:
        src = write_zip(str(tmp_path / "cuhk03_release.zip"), {"cuhk03_release/cuhk-03.mat": f.read()})
    dst = str(tmp_path / "cuhk03")
    real = interrupt_at_call(monkeypatch, cuhk03_converter, "_encode_array", 11)
    with pytest.raises(KeyboardInterrupt):
        convert_cuhk03(src, dst)
    assert len(os.listdir(os.path.join(dst + ".partial", "images"))) == 10
    monkeypatch.setattr(cuhk03_converter, "_encode_array", real)
    caplog.clear()  # only the second run's messages (an earlier CLI test may have set the root level to INFO)
    with caplog.at_level(logging.INFO, logger="reid.datasets.converters"):
        convert_cuhk03(src, dst)
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith("Extracting") for m in messages)  # the extracted .mat was kept
    assert any("10 of 58 images already converted" in m for m in messages)
    check_cuhk_output(dst)
    assert sorted(os.listdir(dst)) == ["images", "meta.json", "splits.json"]
