"""Pose items that carry keypoints (``draw_maps=False``) give, once drawn, exactly the maps that
items carrying maps hold: under every ``--pose-aug`` and both flips, with keypoints on and beyond
every border, per item sigmas in one batched call; FDGANModel.set_input takes either form and
builds the same input. The reference for single maps is scipy's gaussian_filter (the release's
construction, tests/test_posemap.py's ``release_map``)."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fdgan.model import FDGANModel, GANConfig
from reid import datasets
from reid.utils.data.preprocessor import Preprocessor, batch_pose_maps, draw_pose_maps, generate_pose_map
from test_posemap import release_map

H, W = 64, 32


def _items(root: str, draw_maps: bool, pose_aug: str, n: int, seed: int = 0) -> list:
    ds = datasets.create("synthetic", root, require_poses=True)
    pre = Preprocessor(ds.trainval, root=ds.images_dir, with_pose=True, pose_root=ds.poses_dir,
                       pid_imgs=ds.trainval_pid2files, height=H, width=W, pose_aug=pose_aug, draw_maps=draw_maps)
    torch.manual_seed(seed)
    random.seed(seed)
    loader = DataLoader(pre, batch_size=n, shuffle=False, num_workers=0)
    return next(iter(loader))


@pytest.mark.parametrize("pose_aug", ["no", "gauss", "erase"])
def test_keypoint_items_draw_the_maps_map_items_carry(synthetic_root, pose_aug):
    maps = _items(synthetic_root, True, pose_aug, 24)
    kp = _items(synthetic_root, False, pose_aug, 24)
    assert "posemap" not in kp and set(kp) == {"origin", "target", "pid", "keypoints", "sigma", "flip"}
    assert torch.equal(kp["target"], maps["target"]) and torch.equal(kp["origin"], maps["origin"])
    flips = kp["flip"].tolist()
    assert 0 < sum(flips) < len(flips)  # both branches of the flip are exercised
    if pose_aug == "gauss":
        assert len(set(kp["sigma"].tolist())) > 1
    if pose_aug == "erase":
        assert ((kp["keypoints"] < 0).all(dim=-1).sum(dim=1) >= 1).all()  # one keypoint erased per item
    drawn = batch_pose_maps(kp, H, W)
    assert drawn.dtype == torch.float32 and torch.equal(drawn, maps["posemap"])
    # Bytes per item: 18 x 2 int64 keypoints, a sigma and a flag instead of 18 float32 maps.
    kp_bytes = sum(kp[k][0].numel() * kp[k][0].element_size() for k in ("keypoints", "sigma", "flip"))
    assert kp_bytes == 18 * 2 * 8 + 8 + 1 and maps["posemap"][0].numel() * 4 == 18 * H * W * 4


def test_batched_drawing_at_the_borders_with_per_item_sigma_and_flip():
    rows = [0, 1, 2, H // 2, H - 3, H - 2, H - 1, -1, H, 5]
    cols = [0, W - 1, 1, W - 2, W // 2, 0, W - 1, 3, 2, W]
    points = torch.tensor(list(zip(rows, cols)) * 2).view(2, 10, 2)  # two items, same keypoints
    sigmas = torch.tensor([1.25, 6.0], dtype=torch.float64)
    flips = torch.tensor([False, True])
    maps = draw_pose_maps(points, H, W, sigmas, flip=flips)
    assert maps.shape == (2, 10, H, W)
    for item in range(2):
        for k, (r, c) in enumerate(zip(rows, cols)):
            got = maps[item, k].numpy()
            if not (0 <= r < H and 0 <= c < W):  # missing or beyond the border: all zero
                assert not got.any()
                continue
            if flips[item]:
                got = got[:, ::-1]
            np.testing.assert_allclose(got, release_map(r, c, H, W, float(sigmas[item])), rtol=0, atol=1e-6)
    # The single-image CPU entry is the same function: bit-equal.
    assert np.array_equal(maps[0].numpy(), generate_pose_map(points[0].numpy(), H, W, 1.25))


def test_set_input_builds_the_same_batch_from_keypoints(synthetic_root):
    kw = dict(arch="resnet18", height=H, width=W, pose_feature_size=8, noise_feature_size=8, pretrained=False)
    model = FDGANModel(GANConfig(stage=1, **kw))
    built = []
    for draw_maps in (True, False):
        items = _items(synthetic_root, draw_maps, "gauss", 12)
        halves = [{k: v[:6] for k, v in items.items()}, {k: v[6:].clone() for k, v in items.items()}]
        halves[1]["pid"][:3] = halves[0]["pid"][:3]  # three positive pairs: their maps are the first's
        halves[1]["pid"][3:] = 1000
        torch.manual_seed(0)
        model.set_input(halves)
        built.append((model.posemap.clone(), model.target.clone(), model.label.clone()))
    (maps_a, target_a, label_a), (maps_b, target_b, label_b) = built
    assert label_a.tolist() == [1, 1, 1, 0, 0, 0] and torch.equal(label_a, label_b)
    assert torch.equal(maps_a, maps_b) and torch.equal(target_a, target_b)
    assert torch.equal(maps_b[6:9], maps_b[:3]) and not torch.equal(maps_b[9:], maps_b[3:6])
