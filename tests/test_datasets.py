"""Dataset layer: meta/splits parsing, split loading, both protocols, integrity messages, factory."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SYNTHETIC_IMAGES_PER_CAM, SYNTHETIC_NUM_CAMS, SYNTHETIC_NUM_IDS
from reid import datasets
from reid.datasets import CUHK03, DukeMTMC, Market1501, Synthetic
from reid.errors import ConfigError, DatasetError
from reid.utils.data.dataset import Dataset, parse_meta, parse_splits


def name(pid: int, cam: int, i: int) -> str:
    return f"{pid:08d}_{cam:02d}_{i:04d}.jpg"


# A hand-made dataset: 10 identity slots, 3 cameras.
#   pid 0: no images (unused slot)     pid 1: c0 x2, c1 x1      pid 2: c2 x1 (single image)
#   pid 3: c0 x1, c2 x1                pid 4: c1 x2             pid 5: c0 x1, c1 x1
#   pid 6: c0 x1, c1 x1, c2 x1         pid 7: c2 x2             pid 8: c0 x1, c2 x1     pid 9: c1 x1
LAYOUT = {1: [2, 1, 0], 2: [0, 0, 1], 3: [1, 0, 1], 4: [0, 2, 0], 5: [1, 1, 0], 6: [1, 1, 1], 7: [0, 0, 2],
          8: [1, 0, 1], 9: [0, 1, 0]}


def make_identities() -> List[List[List[str]]]:
    ids: List[List[List[str]]] = [[[], [], []] for _ in range(10)]
    for pid, counts in LAYOUT.items():
        for cam, n in enumerate(counts):
            ids[pid][cam] = [name(pid, cam, i) for i in range(n)]
    return ids


def make_split() -> Dict[str, Any]:
    return {
        "trainval": [5, 1, 3, 2, 4],  # unsorted on purpose
        "query": [8, 6],
        "gallery": [6, 7, 8, 9],
        "official_query": [name(6, 0, 0), name(8, 2, 0)],
        "official_gallery": [name(6, 1, 0), name(6, 2, 0), name(7, 2, 0), name(7, 2, 1), name(8, 0, 0),
                             name(9, 1, 0)],
    }


def write_dataset(root: str, meta: Any = None, splits: Any = None, poses: bool = False) -> str:
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    if poses:
        os.makedirs(os.path.join(root, "poses"), exist_ok=True)
    if meta is None:
        meta = {"name": "handmade", "shot": "multiple", "num_cameras": 3, "identities": make_identities()}
    if splits is None:
        splits = [make_split()]
    with open(os.path.join(root, "meta.json"), "w") as f:
        f.write(meta if isinstance(meta, str) else json.dumps(meta))
    with open(os.path.join(root, "splits.json"), "w") as f:
        f.write(splits if isinstance(splits, str) else json.dumps(splits))
    return root


@pytest.fixture
def handmade(tmp_path: Any) -> str:
    return write_dataset(str(tmp_path / "handmade"))


def test_load_relabels_and_splits_val_from_the_end(handmade: str) -> None:
    ds = Dataset(handmade)
    ds.check_integrity()
    ds.load(num_val=2)
    # sorted trainval pids 1 2 3 4 5: val = the last two (4, 5), train = 1 2 3
    assert (ds.num_train_ids, ds.num_val_ids, ds.num_trainval_ids) == (3, 2, 5)
    assert ds.train == [
        (name(1, 0, 0), 0, 0), (name(1, 0, 1), 0, 0), (name(1, 1, 0), 0, 1),
        (name(2, 2, 0), 1, 2),
        (name(3, 0, 0), 2, 0), (name(3, 2, 0), 2, 2),
    ]
    assert ds.val == [(name(4, 1, 0), 0, 1), (name(4, 1, 1), 0, 1), (name(5, 0, 0), 1, 0), (name(5, 1, 0), 1, 1)]
    assert [label for _, label, _ in ds.trainval] == [0, 0, 0, 1, 2, 2, 3, 3, 4, 4]
    assert ds.trainval_pid2files[3] == [name(4, 1, 0), name(4, 1, 1)]
    assert ds.val_pid2files == {0: [name(4, 1, 0), name(4, 1, 1)], 1: [name(5, 0, 0), name(5, 1, 0)]}
    assert ds.train_pid2files[1] == [name(2, 2, 0)]
    # openreid protocol: every image of the query / gallery pids, original pids
    assert ds.query == [(name(6, 0, 0), 6, 0), (name(6, 1, 0), 6, 1), (name(6, 2, 0), 6, 2),
                        (name(8, 0, 0), 8, 0), (name(8, 2, 0), 8, 2)]
    assert len(ds.gallery) == 3 + 2 + 2 + 1
    assert sorted(ds.gallery_pid2files) == [6, 7, 8, 9]
    assert ds.query_pid2files[8] == [name(8, 0, 0), name(8, 2, 0)]
    assert ds.images_dir == os.path.join(handmade, "images")
    assert ds.poses_dir == os.path.join(handmade, "poses")


@pytest.mark.parametrize("num_val, expected_val", [(0, 0), (0.0, 0), (1, 1), (0.25, 1), (0.3, 2), (0.5, 2), (4, 4)])
def test_num_val_count_or_rounded_fraction(handmade: str, num_val: Any, expected_val: int) -> None:
    # 5 trainval ids: 0.25 -> round(1.25) = 1; 0.3 -> round(1.5) = 2; 0.5 -> round(2.5) = 2 (Python rounds half to even)
    ds = Dataset(handmade)
    ds.load(num_val=num_val, verbose=False)
    assert ds.num_val_ids == expected_val
    assert ds.num_train_ids == 5 - expected_val
    if expected_val == 0:
        assert ds.val == [] and ds.train == ds.trainval


@pytest.mark.parametrize("num_val", [5, 6, 1.0])
def test_num_val_too_large(handmade: str, num_val: Any) -> None:
    with pytest.raises(DatasetError, match=r"splits\.json.*5 trainval identities"):
        Dataset(handmade).load(num_val=num_val)


@pytest.mark.parametrize("num_val", [-1, "3", True, float("nan"), float("inf")])
def test_num_val_bad_value(handmade: str, num_val: Any) -> None:
    with pytest.raises(ConfigError):
        Dataset(handmade).load(num_val=num_val)


def test_official_protocol(handmade: str) -> None:
    ds = Dataset(handmade)
    ds.load(num_val=1, protocol="official")
    assert ds.query == [(name(6, 0, 0), 6, 0), (name(8, 2, 0), 8, 2)]
    assert ds.gallery == [(name(6, 1, 0), 6, 1), (name(6, 2, 0), 6, 2), (name(7, 2, 0), 7, 2),
                          (name(7, 2, 1), 7, 2), (name(8, 0, 0), 8, 0), (name(9, 1, 0), 9, 1)]
    assert ds.query_pid2files == {6: [name(6, 0, 0)], 8: [name(8, 2, 0)]}
    assert ds.gallery_pid2files[7] == [name(7, 2, 0), name(7, 2, 1)]
    assert len(ds.trainval) == 10  # unaffected by the protocol


def test_official_protocol_needs_the_lists(tmp_path: Any) -> None:
    split = make_split()
    del split["official_query"], split["official_gallery"]
    root = write_dataset(str(tmp_path / "d"), splits=[split])
    with pytest.raises(DatasetError, match="prepare_dataset.py"):
        Dataset(root).load(num_val=1, protocol="official")
    meta = {"name": "cuhk03", "num_cameras": 3, "identities": make_identities()}
    root = write_dataset(str(tmp_path / "cuhk03"), meta=meta, splits=[split])
    with pytest.raises(DatasetError, match="CUHK03 has only the old"):
        Dataset(root).load(num_val=1, protocol="official")
    with pytest.raises(ConfigError, match="old"):
        CUHK03(root, protocol="official")


def test_official_list_naming_unknown_file(tmp_path: Any) -> None:
    split = make_split()
    split["official_query"] = ["nothere.jpg"]
    root = write_dataset(str(tmp_path / "d"), splits=[split])
    with pytest.raises(DatasetError, match="nothere.jpg"):
        Dataset(root).load(num_val=1, protocol="official")
    split = make_split()
    split["official_gallery"].append(split["official_query"][0])
    root = write_dataset(str(tmp_path / "e"), splits=[split])
    with pytest.raises(DatasetError, match="both"):
        Dataset(root).load(num_val=1, protocol="official")


def test_unknown_protocol(handmade: str) -> None:
    with pytest.raises(ConfigError, match="openreid"):
        Dataset(handmade).load(protocol="market")


def test_split_id_out_of_range(handmade: str) -> None:
    with pytest.raises(DatasetError, match=r"splits\.json: split 1 does not exist"):
        Dataset(handmade, split_id=1).load(num_val=1)


def test_split_naming_missing_pid(tmp_path: Any) -> None:
    split = make_split()
    split["gallery"] = [6, 12]
    root = write_dataset(str(tmp_path / "d"), splits=[split])
    with pytest.raises(DatasetError, match="pid 12"):
        Dataset(root).load(num_val=1)


def test_trainval_identity_without_images(tmp_path: Any) -> None:
    split = make_split()
    split["trainval"] = [0, 1, 2]
    root = write_dataset(str(tmp_path / "d"), splits=[split])
    with pytest.raises(DatasetError, match="identity 0 .* no images"):
        Dataset(root).load(num_val=1)


def test_single_image_identity_is_fine(handmade: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="reid.utils.data.dataset"):
        Dataset(handmade).load(num_val=1)
    assert any("identity 2 has a single image" in r.getMessage() for r in caplog.records)


def test_verbose_summary_is_logged(handmade: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="reid.utils.data.dataset"):
        Dataset(handmade).load(num_val=2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "train    |     3 |        6" in text
    assert "gallery  |     4 |        8" in text


@pytest.mark.parametrize("bad_meta, match", [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object"),
    (json.dumps({"num_cameras": 3}), "missing key 'identities'"),
    (json.dumps({"identities": []}), "missing key 'num_cameras'"),
    (json.dumps({"num_cameras": "3", "identities": []}), "positive integer"),
    (json.dumps({"num_cameras": 3, "identities": {}}), "should be a list"),
    (json.dumps({"num_cameras": 1, "identities": [[[], []]]}), "lists 2 cameras"),
    (json.dumps({"num_cameras": 1, "identities": [[["a.jpg", 3]]]}), r"identities\[0\]\[0\]\[1\]"),
    (json.dumps({"num_cameras": 1, "identities": [[["a.jpg"]], [["a.jpg"]]]}), "listed for pid 0 and again"),
    (json.dumps({"num_cameras": 1, "identities": [[["../a.jpg"]]]}), "not a plain file name"),
])
def test_malformed_meta(tmp_path: Any, bad_meta: str, match: str) -> None:
    root = write_dataset(str(tmp_path / "d"), meta=bad_meta)
    with pytest.raises(DatasetError, match=match) as info:
        Dataset(root).load(num_val=1)
    assert "meta.json" in str(info.value)


@pytest.mark.parametrize("bad_splits, match", [
    ("", "not valid JSON"),
    ("{}", "expected a list of splits"),
    ("[]", "holds no split"),
    (json.dumps([{"trainval": [1], "query": [6]}]), "no 'gallery' list"),
    (json.dumps([{"trainval": [], "query": [6], "gallery": [6]}]), "'trainval' is empty"),
    (json.dumps([{"trainval": [1], "query": [], "gallery": [6]}]), "'query' is empty"),
    (json.dumps([{"trainval": [1], "query": [6], "gallery": [6, 6]}]), "pid 6 twice"),
    (json.dumps([{"trainval": [1.0], "query": [6], "gallery": [6]}]), "not a pid"),
    (json.dumps([{"trainval": [-2], "query": [6], "gallery": [6]}]), "not a pid"),
    (json.dumps([{"trainval": [1], "query": [6], "gallery": [6], "official_query": []}]), "no 'official_gallery'"),
])
def test_malformed_splits(tmp_path: Any, bad_splits: str, match: str) -> None:
    root = write_dataset(str(tmp_path / "d"), splits=bad_splits)
    with pytest.raises(DatasetError, match=match) as info:
        Dataset(root).load(num_val=0)
    assert "splits.json" in str(info.value)


def test_empty_query_after_loading(tmp_path: Any) -> None:
    split = make_split()
    split["query"] = [0]  # a pid without images
    root = write_dataset(str(tmp_path / "d"), splits=[split])
    with pytest.raises(DatasetError, match="'query' holds no image"):
        Dataset(root).load(num_val=1)


# ---- integrity messages


def test_missing_folder_says_how_to_prepare(tmp_path: Any) -> None:
    root = str(tmp_path / "market1501")
    with pytest.raises(DatasetError) as info:
        Market1501(root)
    msg = str(info.value)
    assert "python scripts/prepare_dataset.py market1501 --src" in msg and f"--dst {root}" in msg
    assert "\n" not in msg
    with pytest.raises(DatasetError, match="make_synthetic_dataset.py --root"):
        Synthetic(str(tmp_path / "synthetic"))


def test_missing_folder_suggests_lower_case_name(tmp_path: Any) -> None:
    write_dataset(str(tmp_path / "Market1501"))
    with pytest.raises(DatasetError, match="rename it to market1501"):
        Market1501(str(tmp_path / "market1501"))


def test_missing_folder_points_at_raw_download(tmp_path: Any) -> None:
    os.makedirs(tmp_path / "DukeMTMC-reID" / "bounding_box_train")
    with pytest.raises(DatasetError, match="unconverted download"):
        DukeMTMC(str(tmp_path / "dukemtmc"))


@pytest.mark.parametrize("missing", ["images", "meta.json", "splits.json"])
def test_missing_parts(handmade: str, missing: str) -> None:
    path = os.path.join(handmade, missing)
    if os.path.isdir(path):
        os.rmdir(path)
    else:
        os.unlink(path)
    with pytest.raises(DatasetError, match=f"{missing}: missing; prepare the dataset with"):
        Dataset(handmade).check_integrity()


def test_poses_required_only_when_asked(tmp_path: Any) -> None:
    root = write_dataset(str(tmp_path / "market1501"))
    Dataset(root).check_integrity(require_poses=False)
    with pytest.raises(DatasetError, match="poses: missing.*make poses POSE_DATASET=.*market1501"):
        Dataset(root).check_integrity(require_poses=True)
    write_dataset(root, poses=True)
    Dataset(root).check_integrity(require_poses=True)


# ---- factory


def test_factory_names_and_unknown() -> None:
    assert datasets.names() == ["cuhk03", "dukemtmc", "market1501", "synthetic"]
    with pytest.raises(ConfigError, match="cuhk03, dukemtmc, market1501, synthetic"):
        datasets.create("viper", "/nowhere")


def test_factory_creates_and_loads(tmp_path: Any) -> None:
    root = write_dataset(str(tmp_path / "market1501"))
    ds = datasets.create("market1501", root, num_val=1, protocol="official")
    assert isinstance(ds, Market1501)
    assert ds.num_val_ids == 1 and ds.num_train_ids == 4 and len(ds.query) == 2


def test_synthetic_fixture_loads(synthetic_root: str) -> None:
    ds = datasets.create("synthetic", synthetic_root, require_poses=True)
    trainval = SYNTHETIC_NUM_IDS // 2
    assert ds.num_trainval_ids == trainval
    assert ds.num_val_ids == round(0.2 * trainval)  # the Synthetic default num_val fraction
    assert len(ds.trainval) == sum(len(files) for files in ds.trainval_pid2files.values())
    assert all(len(files) % SYNTHETIC_IMAGES_PER_CAM == 0 for files in ds.trainval_pid2files.values())
    assert sorted(ds.query_pid2files) == list(range(trainval, SYNTHETIC_NUM_IDS))
    assert max(ds.gallery_pid2files) == SYNTHETIC_NUM_IDS  # the one distractor
    assert {cam for _, _, cam in ds.gallery} <= set(range(SYNTHETIC_NUM_CAMS))
    official = datasets.create("synthetic", synthetic_root, protocol="official")
    assert len(official.query) + len(official.gallery) == len(ds.gallery)


# ---- property tests of the pure parsers

def parsed_or_one_line_error(parse: Callable[[Any, str], Any], obj: Any, source: str) -> Any:
    """``parse(obj, source)``, or None after checking that its error is one line naming ``source``."""
    try:
        return parse(obj, source)
    except DatasetError as e:
        assert str(e).startswith(f"{source}: ") and "\n" not in str(e)
        return None


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
good_names = st.builds(lambda stem: stem + ".jpg", st.text(alphabet="abcdefgh", min_size=3, max_size=3))
file_names = st.one_of(good_names, good_names, good_names, st.sampled_from(["", "../e.jpg", "x/y.jpg", " a.jpg"]),
                       st.integers())
near_meta = st.fixed_dictionaries(
    {"num_cameras": st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(-1, 0), st.booleans(),
                              st.text(max_size=2)),
     "identities": st.lists(st.lists(st.lists(file_names, max_size=2), max_size=3), max_size=3)},
    optional={"name": st.one_of(st.text(max_size=3), st.text(max_size=3), st.integers()),
              "shot": st.text(max_size=3),
              "original_names": st.one_of(st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
                                          st.lists(st.integers()))},
)
good_pids = st.lists(st.integers(0, 6), min_size=1, max_size=4, unique=True)
pids = st.one_of(good_pids, good_pids, good_pids,
                 st.lists(st.one_of(st.integers(-1, 6), st.booleans(), st.floats(0, 3)), max_size=4))
near_split = st.fixed_dictionaries(
    {"trainval": pids, "query": pids, "gallery": pids},
    optional={"official_query": st.lists(file_names, max_size=3, unique_by=str),
              "official_gallery": st.lists(file_names, max_size=3, unique_by=str)},
)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(st.one_of(json_values, near_meta))
def test_parse_meta_total(obj: Any) -> None:
    meta = parsed_or_one_line_error(parse_meta, obj, "meta.json")
    if meta is None:
        return
    assert isinstance(meta["num_cameras"], int) and not isinstance(meta["num_cameras"], bool)
    assert meta["num_cameras"] >= 1
    seen = [f for cams in meta["identities"] for files in cams for f in files]
    assert len(seen) == len(set(seen))
    assert all(isinstance(f, str) and f and "/" not in f for f in seen)
    assert all(len(cams) <= meta["num_cameras"] for cams in meta["identities"])
    assert meta["identities"] == obj["identities"]


@PROPERTY_SETTINGS
@given(st.one_of(json_values, st.lists(near_split, max_size=3)))
def test_parse_splits_total(obj: Any) -> None:
    splits = parsed_or_one_line_error(parse_splits, obj, "splits.json")
    if splits is None:
        return
    assert splits and len(splits) == len(obj)
    for split in splits:
        for key in ("trainval", "query", "gallery"):
            values = split[key]
            assert values and len(set(values)) == len(values)
            assert all(type(p) is int and p >= 0 for p in values)
        assert ("official_query" in split) == ("official_gallery" in split)
