"""Property tests of the parsers of user files: any input gives a valid result or the project's own
error with a one-line message, never another exception.

tests/test_datasets.py already checks ``parse_meta`` / ``parse_splits`` on decoded JSON values;
here: the pose-file parser, the bytes of meta.json / splits.json through ``read_json`` and a whole
``Dataset.load``, near-valid dataset descriptions whose loaded item lists must be consistent, and
checkpoint files (arbitrary bytes, damaged checkpoints) through ``load_checkpoint``.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reid.errors import CheckpointError, ConfigError, DatasetError
from reid.utils.data.dataset import Dataset
from reid.utils.data.pose import NUM_KEYPOINTS, format_pose, parse_pose_text, read_pose_file
from reid.utils.osutils import read_json
from reid.utils.serialization import load_checkpoint

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def assert_own_error(exc: Exception, source: str) -> None:
    msg = str(exc)
    assert msg.startswith(f"{source}: ") and "\n" not in msg, msg


def assert_valid_pose(arr: np.ndarray) -> None:
    assert arr.shape == (NUM_KEYPOINTS, 2) and arr.dtype == np.float32
    assert np.isfinite(arr).all()
    missing = (arr < 0).any(axis=1)
    assert (arr[missing] == -1).all()  # a missing keypoint is exactly (-1, -1)
    assert (arr[~missing] >= 0).all()


# --------------------------------------------------------------------------- pose files
numbers = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr),
    st.floats(-1e4, 1e4).map(lambda x: f"{x:.3f}"),
    st.sampled_from(["-1", "-1.0", "0", "1e3", "1E-2", "+5", "nan", "NaN", "inf", "-inf", "1e400", "0x10", "1_0",
                     "١٢", "", "abc", "--1", "1.2.3", "\u00a0"]),
)
pose_lines = st.lists(st.lists(numbers, min_size=0, max_size=3), min_size=0, max_size=20)
separators = st.sampled_from([" ", "\t", "  ", " \t "])
line_ends = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\n \n"])


@SETTINGS
@given(st.text(max_size=400))
def test_pose_parser_on_any_text(text: str) -> None:
    try:
        arr = parse_pose_text(text, "p.txt")
    except DatasetError as e:
        assert_own_error(e, "p.txt")
        return
    assert_valid_pose(arr)


@SETTINGS
@given(pose_lines, separators, line_ends)
def test_pose_parser_on_near_valid_files(lines: List[List[str]], sep: str, end: str) -> None:
    text = end.join(sep.join(tokens) for tokens in lines) + end
    try:
        arr = parse_pose_text(text, "p.txt")
    except DatasetError as e:
        assert_own_error(e, "p.txt")
        rows = [t for t in lines if sep.join(t).strip()]
        if len(rows) == NUM_KEYPOINTS and all(len(t) == 2 for t in rows):
            # then the failure must be about a value
            assert "not two numbers" in str(e) or "NaN or infinite" in str(e) or "two numbers" in str(e)
        return
    assert_valid_pose(arr)
    rows = [t for t in lines if sep.join(t).strip()]
    assert len(rows) == NUM_KEYPOINTS
    for (r, c), (row, col) in zip(rows, arr):
        fr, fc = float(r), float(c)
        if fr < 0 or fc < 0:
            assert (row, col) == (-1, -1)
        else:
            assert (row, col) == (np.float32(fr), np.float32(fc))


@pytest.mark.slow
@SETTINGS
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), min_size=18, max_size=18))
def test_pose_format_then_parse_round_trips(points: List[Any]) -> None:
    arr = np.asarray(points, dtype=np.float32)
    back = parse_pose_text(format_pose(arr), "p.txt")
    missing = (arr < 0).any(axis=1)
    assert (back[missing] == -1).all()
    assert np.allclose(back[~missing], arr[~missing], rtol=1e-6, atol=0.0051)


@SETTINGS
@given(st.binary(max_size=300))
def test_pose_file_reader_on_any_bytes(scratch: Path, raw: bytes) -> None:
    path = scratch / "pose.txt"
    path.write_bytes(raw)
    try:
        arr = read_pose_file(path)
    except DatasetError as e:
        assert_own_error(e, str(path))
        return
    assert_valid_pose(arr)


# --------------------------------------------------------------------------- JSON files and Dataset.load
json_text = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["NaN", "[NaN]", "Infinity", "-Infinity", '{"a": 1, "a": 2}', "\ufeff{}", "1" * 5000,
                     "[" * 5000 + "]" * 5000, "[" * 50_000, '{"num_cameras": 1e400}', "[[[]]]", "null", '""',
                     '{"num_cameras": 2, "identities": [[["a.jpg"]], [["a.jpg"]]]}']),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                 max_leaves=25).map(lambda v: json.dumps(v, allow_nan=True)),
)


@SETTINGS
@given(st.one_of(json_text.map(lambda t: t.encode("utf-8")), st.binary(max_size=200)))
def test_read_json_on_any_bytes(scratch: Path, raw: bytes) -> None:
    path = scratch / "x.json"
    path.write_bytes(raw)
    try:
        expected = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        expected = DatasetError
    try:
        value = read_json(path)
    except DatasetError as e:
        assert_own_error(e, str(path))
        assert expected is DatasetError
        event("refused")
        return
    event("decoded")
    assert json.dumps(value) == json.dumps(expected)  # what the json module decodes (NaN-aware)


def _dataset_root(scratch: Path, meta: bytes, splits: bytes) -> Path:
    root = scratch / "ds"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_bytes(meta)
    (root / "splits.json").write_bytes(splits)
    return root


GOOD_SPLITS = json.dumps([{"trainval": [0, 1, 2], "query": [3], "gallery": [3, 4]}]).encode()
GOOD_META = json.dumps({"num_cameras": 2,
                        "identities": [[[f"{p}_{c}.jpg"] for c in range(2)] for p in range(5)]}).encode()


@SETTINGS
@given(json_text.map(lambda t: t.encode("utf-8")), st.booleans())
def test_dataset_load_with_any_meta_or_splits_text(scratch: Path, raw: bytes, as_meta: bool) -> None:
    root = _dataset_root(scratch, raw if as_meta else GOOD_META, GOOD_SPLITS if as_meta else raw)
    ds = Dataset(root)
    try:
        ds.load(num_val=1, verbose=False)
    except DatasetError as e:
        assert str(e).startswith(str(root)) and "\n" not in str(e)
        return
    assert ds.num_trainval_ids == ds.num_train_ids + ds.num_val_ids


@st.composite
def near_valid_datasets(draw: st.DrawFn) -> Dict[str, Any]:
    """Mostly loadable descriptions, with a sprinkle of the mistakes users make."""
    n = draw(st.integers(1, 7))
    num_cameras = draw(st.integers(1, 3))
    counter = iter(range(10_000))
    identities = []
    too_many_cameras = draw(st.sampled_from([None] * 9 + [n - 1]))  # this pid lists one camera too many
    for pid in range(n):
        cams = []
        for _ in range(draw(st.integers(1, num_cameras)) + (pid == too_many_cameras)):
            cams.append([f"{next(counter):04d}.jpg" for _ in range(draw(st.sampled_from([1, 1, 2, 3, 0])))])
        identities.append(cams)
    flat = [f for cams in identities for files in cams for f in files]
    if flat and draw(st.integers(0, 9)) == 0:  # a file listed twice
        identities[-1].append([flat[0]])
    pids = st.lists(st.integers(0, n - 1 + draw(st.sampled_from([0] * 9 + [2]))),
                    min_size=draw(st.sampled_from([1] * 9 + [0])), max_size=n,
                    unique=draw(st.sampled_from([True] * 9 + [False])))
    split: Dict[str, Any] = {"trainval": draw(pids), "query": draw(pids), "gallery": draw(pids)}
    protocol = draw(st.sampled_from(["openreid"] * 5 + ["official"] * 4 + ["other"]))
    if protocol == "official" and flat:
        chosen = draw(st.lists(st.sampled_from(flat), unique=True, min_size=0, max_size=4))
        cut = draw(st.integers(min(1, len(chosen)), max(min(1, len(chosen)), len(chosen) - 1)))
        split["official_query"], split["official_gallery"] = chosen[:cut], chosen[cut:]
    return {"meta": {"num_cameras": num_cameras, "identities": identities}, "split": split, "protocol": protocol,
            "num_val": draw(st.one_of(st.integers(0, 2), st.floats(0, 0.6), st.sampled_from([-1, float("nan")]))),
            "split_id": draw(st.sampled_from([0] * 9 + [1, -1]))}


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_datasets())
def test_dataset_load_on_near_valid_descriptions(scratch: Path, case: Dict[str, Any]) -> None:
    meta, split, protocol, split_id = case["meta"], case["split"], case["protocol"], case["split_id"]
    identities, trainval, query, gallery = meta["identities"], split["trainval"], split["query"], split["gallery"]
    root = _dataset_root(scratch, json.dumps(meta).encode(), json.dumps([split]).encode())
    ds = Dataset(root, split_id=split_id)
    try:
        ds.load(num_val=case["num_val"], verbose=False, protocol=protocol)
    except (DatasetError, ConfigError) as e:
        assert "\n" not in str(e)
        event(f"refused: {type(e).__name__}")
        return
    event(f"loaded ({protocol})")
    # A loaded split is consistent with the files it came from.
    assert split_id == 0 and protocol in ("openreid", "official")
    tv = sorted(trainval)
    assert ds.num_trainval_ids == len(tv) == ds.num_train_ids + ds.num_val_ids
    assert sorted({label for _, label, _ in ds.trainval}) == list(range(len(tv)))
    assert len(ds.trainval) == sum(len(files) for pid in tv for files in identities[pid])
    assert len(ds.train) + len(ds.val) == len(ds.trainval)
    where = {f: (pid, cam) for pid, cams in enumerate(identities) for cam, files in enumerate(cams) for f in files}
    for fname, pid, cam in ds.query + ds.gallery:
        assert where[fname] == (pid, cam)
    if protocol == "openreid":
        assert {pid for _, pid, _ in ds.query} <= set(query)
        assert {pid for _, pid, _ in ds.gallery} <= set(gallery)
    assert ds.query and ds.gallery


# --------------------------------------------------------------------------- checkpoint files
def _checkpoint_bytes(legacy: bool) -> bytes:
    buf = io.BytesIO()
    state = {"state_dict": {"module.w": torch.arange(12.0).view(3, 4), "module.b": torch.zeros(2)}, "epoch": 3,
             "best_map": 0.5, "rng": {"python": (3, tuple(range(5)), None)}}
    torch.save(state, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


CHECKPOINTS = {False: _checkpoint_bytes(False), True: _checkpoint_bytes(True)}


@st.composite
def damaged_checkpoints(draw: st.DrawFn) -> bytes:
    raw = bytearray(CHECKPOINTS[draw(st.booleans())])
    how = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        return bytes(raw[: draw(st.integers(0, len(raw) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    at = draw(st.integers(0, len(raw)))
    return bytes(raw[:at]) + draw(st.binary(max_size=64)) + bytes(raw[at:])


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(damaged_checkpoints(), st.binary(max_size=400), st.text(max_size=100).map(str.encode),
                 st.sampled_from([pickle.dumps([1, 2]), pickle.dumps({"a": 1}, protocol=0), b"PK\x03\x04",
                                  b"\x80\x02}q\x00."])))
def test_load_checkpoint_on_any_bytes(scratch: Path, raw: bytes) -> None:
    path = scratch / "ckpt.pth"
    path.write_bytes(raw)
    try:
        value = load_checkpoint(path)
    except CheckpointError as e:
        assert_own_error(e, str(path))
        event("refused")
        return
    event("loaded")
    # Whatever loads is plain data: no object of another type was built.
    def plain(v: Any) -> bool:
        if isinstance(v, dict):
            return all(plain(k) and plain(x) for k, x in v.items())
        if isinstance(v, (list, tuple, set)):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.Size,
                                           torch.device))
    assert plain(value)


def test_intact_checkpoints_load_exactly(scratch: Path) -> None:
    for legacy, raw in CHECKPOINTS.items():
        path = scratch / f"ok_{legacy}.pth"
        path.write_bytes(raw)
        state = load_checkpoint(path)
        assert state["epoch"] == 3 and math.isclose(state["best_map"], 0.5)
        assert torch.equal(state["state_dict"]["module.w"], torch.arange(12.0).view(3, 4))
