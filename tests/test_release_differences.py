"""Release behaviours this project changes on purpose (docs/differences.md), each checked here."""
from __future__ import annotations

import random

import numpy as np
from PIL import Image

from reid.utils.data.pose import write_pose_file
from reid.utils.data.preprocessor import Preprocessor


def test_missing_keypoint_on_a_large_target_stays_missing(tmp_path) -> None:
    # The release scales (-1, -1) by 256/512 and 128/256 and truncates int(-0.5) to 0: a peak in
    # the corner. Here a missing keypoint stays missing at any size (an all-zero map).
    (tmp_path / "images").mkdir()
    (tmp_path / "poses").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (256, 512), (90, 120, 150)).save(tmp_path / "images" / name)
    pose = np.full((18, 2), -1.0)
    pose[1] = (200.0, 100.0)  # the neck, scaled by 1/2 to (100, 50)
    for stem in ("a", "b"):
        write_pose_file(tmp_path / "poses" / f"{stem}.txt", pose)
    pre = Preprocessor([("a.png", 0, 0), ("b.png", 0, 1)], root=str(tmp_path / "images"), with_pose=True,
                       pose_root=str(tmp_path / "poses"), height=256, width=128)
    random.seed(0)
    maps = pre[0]["posemap"].numpy()
    if maps[1][100, 50] != 1.0:  # the item was mirrored
        maps = maps[..., ::-1]
    assert maps[1][100, 50] == 1.0 and maps[1].argmax() == 100 * 128 + 50
    assert not np.delete(maps, 1, axis=0).any()
    assert maps[:, 0, 0].max() < 1e-6  # no corner peak


def _api_map_rows() -> list:
    import os
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                             "differences.md"), encoding="utf-8").read()
    section = text.split("## Python API: the release's public names", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in rows]


def _resolve(name: str):
    """The object a dotted ``reid.`` / ``fdgan.`` name denotes here, or None."""
    import importlib
    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def test_the_api_map_covers_the_release_names_and_says_what_exists() -> None:
    """Every row has a status; each release name the audit listed has a row; a release name
    marked present or changed exists under its path here, one marked renamed or gone does not,
    and every dotted ``reid.`` / ``fdgan.`` name in the 'here' column exists."""
    import re

    rows = _api_map_rows()
    assert len(rows) >= 40
    assert {r[1] for r in rows} <= {"present", "changed", "renamed", "gone"}
    release_column = " ".join(r[0] for r in rows)
    for name in ("save_checkpoint(state, is_best", "copy_state_dict(state_dict, model, strip",
                 "get_scheduler(optimizer, opt)",
                 "Visualizer(opt)", "Preprocessor(", "fdgan.options.Options", "Logger", "evaluate_all",
                 "extract_embeddings", "remove_module_key", "cache_file", "alpha", "top1",
                 "CustomPoseGenerator", "NLayerDiscriminator", "get_norm_layer", "GANLoss", "FDGANModel(opt)",
                 "EltwiseSubEmbed", "SiameseNet", "reid.models.create", "RandomPairSampler"):
        assert name in release_column, name
    checked = 0
    for release, status, here in rows:
        names = re.findall(r"`((?:reid|fdgan)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", release)
        for name in names[:1]:
            exists = _resolve(name) is not None
            assert exists == (status in ("present", "changed")), (name, status)
            checked += 1
        for name in re.findall(r"`((?:reid|fdgan)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", here):
            assert _resolve(name) is not None, name
    assert checked >= 30
