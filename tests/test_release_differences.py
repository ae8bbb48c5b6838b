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
