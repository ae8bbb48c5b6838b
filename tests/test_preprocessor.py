"""Preprocessor (plain and pose-guided items) and RandomPairSampler (the release's
reid/utils/data/preprocessor.py and sampler.py)."""
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader

from reid.errors import ConfigError, DatasetError
from reid.utils.data.pose import write_pose_file
from reid.utils.data.preprocessor import Preprocessor, generate_pose_map, pose_sigma
from reid.utils.data.sampler import RandomPairSampler
from reid.utils.data.transforms import build_test_transform

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
H, W = 128, 64  # output size of the pose-guided items in these tests


def normalised(arr):
    """(h, w, 3) uint8 -> (3, h, w) float tensor, normalised by hand."""
    return torch.from_numpy(((arr / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32))


def release_map(row, col, height, width, sigma):
    delta = np.zeros((height, width))
    delta[row, col] = 1.0
    filtered = gaussian_filter(delta, sigma)
    return filtered / filtered.max()


def save_image(root, name, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint8), "RGB").save(root / "images" / name)


def constant(h, w, colour):
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3))


def asymmetric(h, w):
    """Red rises from left to right, green from top to bottom: any mirror image differs."""
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([xs * 255 // (w - 1), ys * 255 // (h - 1), np.full_like(xs, 90)], axis=-1)


FULL_POSE = np.array([[8 + 3 * k, 2 + (k % 9) * 3] for k in range(18)], dtype=float)  # in a 64 x 32 image


@pytest.fixture
def data_root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "poses").mkdir()
    return tmp_path


def make_pose_preprocessor(root, dataset, **kwargs):
    # These tests pin the release's maps at its sigma of 5 px; the default scales with the height.
    kwargs.setdefault("sigma", 5)
    return Preprocessor(dataset, root=str(root / "images"), with_pose=True, pose_root=str(root / "poses"),
                        height=H, width=W, **kwargs)


def split_flip(item, target_unflipped):
    """Return (flipped?, posemap as if not flipped), checking target and maps were mirrored together."""
    target = item["target"]
    if torch.allclose(target, target_unflipped, atol=1e-5):
        return False, item["posemap"].numpy()
    assert torch.allclose(target, torch.flip(target_unflipped, dims=[-1]), atol=1e-5)
    return True, item["posemap"].numpy()[..., ::-1]


@pytest.fixture
def pair_fixture(data_root):
    """Identity 0: a.png (origin) and b.png (the only possible target, asymmetric, full pose)."""
    save_image(data_root, "a.png", constant(64, 32, (200, 10, 10)))
    save_image(data_root, "b.png", asymmetric(64, 32))
    write_pose_file(data_root / "poses" / "a.txt", FULL_POSE)
    write_pose_file(data_root / "poses" / "b.txt", FULL_POSE)
    dataset = [("a.png", 0, 0), ("b.png", 0, 1)]
    target = normalised(np.asarray(Image.fromarray(asymmetric(64, 32).astype(np.uint8)).resize((W, H), Image.BILINEAR)))
    # The 64 x 32 image is scaled by 2 to 128 x 64: pose coordinates double.
    landmarks = (FULL_POSE * 2).astype(int)
    return data_root, dataset, target, landmarks


# ----------------------------------------------------------------------------- plain items

def test_plain_item_with_transform(data_root):
    save_image(data_root, "x.png", constant(20, 10, (255, 0, 51)))
    dataset = [("x.png", 7, 3)]
    pre = Preprocessor(dataset, root=str(data_root / "images"), transform=build_test_transform(H, W))
    assert len(pre) == 1
    img, fname, pid, cam = pre[0]
    assert (fname, pid, cam) == ("x.png", 7, 3)
    assert img.shape == (3, H, W)
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    for c in range(3):
        assert torch.allclose(img[c], torch.full((H, W), expected[c]), atol=1e-5)


def test_plain_item_without_transform_is_the_pil_image(data_root):
    arr = asymmetric(20, 10).astype(np.uint8)
    save_image(data_root, "x.png", arr)
    img, _, _, _ = Preprocessor([("x.png", 0, 0)], root=str(data_root / "images"))[0]
    assert np.array_equal(np.asarray(img), arr)


def test_tuple_index_returns_the_list_of_items(data_root):
    for name, colour in (("p.png", (10, 20, 30)), ("q.png", (40, 50, 60))):
        save_image(data_root, name, constant(8, 4, colour))
    pre = Preprocessor([("p.png", 1, 0), ("q.png", 2, 1)], root=str(data_root / "images"))
    items = pre[(1, 0)]
    assert [it[1:] for it in items] == [("q.png", 2, 1), ("p.png", 1, 0)]
    assert np.asarray(items[0][0])[0, 0].tolist() == [40, 50, 60]


def test_pair_sampler_batches_collate_to_first_and_second_members(data_root):
    dataset = []
    for i in range(6):
        name = f"{i}.png"
        save_image(data_root, name, constant(8, 4, (i * 10, 0, 0)))
        dataset.append((name, i // 2, 0))
    pre = Preprocessor(dataset, root=str(data_root / "images"), transform=build_test_transform(8, 4))
    expected_pairs = list(RandomPairSampler(dataset, 1, generator=torch.Generator().manual_seed(4)))
    sampler = RandomPairSampler(dataset, 1, generator=torch.Generator().manual_seed(4))
    loader = DataLoader(pre, batch_size=4, sampler=sampler)
    got = []
    for first, second in loader:
        assert first[0].shape == (len(first[1]), 3, 8, 4)
        got += list(zip(first[1], second[1]))
        # pid of each member travels with its image
        assert torch.equal(first[2], torch.tensor([dataset[int(f[0])][1] for f in first[1]]))
    assert got == [(f"{i}.png", f"{j}.png") for i, j in expected_pairs]


# ----------------------------------------------------------------------- pose-guided items

def test_pose_item_contents_and_scaling(pair_fixture):
    root, dataset, target, landmarks = pair_fixture
    pre = make_pose_preprocessor(root, dataset)
    random.seed(0)
    torch.manual_seed(0)
    item = pre[0]
    assert set(item) == {"origin", "target", "posemap", "pid"}
    assert item["pid"] == 0
    assert item["origin"].shape == (3, H, W) and item["target"].shape == (3, H, W)
    assert item["posemap"].shape == (18, H, W) and item["posemap"].dtype == torch.float32
    # The origin is a.png: the eraser covers at most 20% of it, the rest keeps a.png's colour.
    colour = normalised(constant(1, 1, (200, 10, 10)))[:, 0, 0]
    assert (item["origin"] - colour[:, None, None]).abs().amax(0).lt(1e-5).float().mean() >= 0.8
    _, maps = split_flip(item, target)
    for k in (0, 9, 17):
        r, c = landmarks[k]
        np.testing.assert_allclose(maps[k], release_map(r, c, H, W, 5), atol=1e-6)


def test_pose_file_coordinates_scaled_by_hand(data_root):
    # Target image 48 x 20 (h x w) -> 128 x 64: rows x 128/48, cols x 64/20, truncated.
    save_image(data_root, "s.png", constant(48, 20, (0, 0, 0)))
    pose = np.full((18, 2), -1.0)
    pose[0] = (11.3, 4.1)    # -> (30.13, 13.12) -> (30, 13)
    pose[1] = (47.5, 19.9)   # -> (126.67, 63.68) -> (126, 63)
    pose[2] = (0.2, 0.1)     # -> (0.53, 0.32) -> (0, 0)
    write_pose_file(data_root / "poses" / "s.txt", pose)
    pre = make_pose_preprocessor(data_root, [("s.png", 5, 0)])
    random.seed(1)
    item = pre[0]
    maps = item["posemap"].numpy()
    # A constant target says nothing about the flip; the map of keypoint 2 (at column 0) does.
    if maps[2][0, 0] != 1.0:
        maps = maps[..., ::-1]
    for k, (r, c) in enumerate([(30, 13), (126, 63), (0, 0)]):
        np.testing.assert_allclose(maps[k], release_map(r, c, H, W, 5), atol=1e-6)
    assert not maps[3:].any()
    assert item["pid"] == 5


def test_doubling_a_64_by_32_image(pair_fixture):
    root, dataset, target, _ = pair_fixture
    pose = np.full((18, 2), -1.0)
    pose[4] = (10.7, 5.9)    # -> (21.4, 11.8) -> (21, 11)
    pose[5] = (63.99, 31.5)  # -> (127.98, 63.0) -> (127, 63)
    write_pose_file(root / "poses" / "b.txt", pose)
    pre = make_pose_preprocessor(root, dataset)
    random.seed(2)
    _, maps = split_flip(pre[0], target)
    np.testing.assert_allclose(maps[4], release_map(21, 11, H, W, 5), atol=1e-6)
    np.testing.assert_allclose(maps[5], release_map(127, 63, H, W, 5), atol=1e-6)
    assert not np.delete(maps, [4, 5], axis=0).any()


def test_keypoints_outside_the_image_do_not_crash(pair_fixture):
    root, dataset, target, _ = pair_fixture
    pose = FULL_POSE.copy()
    pose[0] = (70.0, 10.0)   # row 140 >= 128 after scaling
    pose[1] = (10.0, 40.0)   # col 80 >= 64
    pose[2] = (-1, -1)       # missing
    write_pose_file(root / "poses" / "b.txt", pose)
    pre = make_pose_preprocessor(root, dataset)
    random.seed(3)
    _, maps = split_flip(pre[0], target)
    assert not maps[:3].any()
    assert np.all(maps[3:].max(axis=(1, 2)) == 1.0)


def test_flip_mirrors_target_and_maps_together(pair_fixture):
    root, dataset, target, landmarks = pair_fixture
    expected = generate_pose_map(landmarks, H, W, 5)
    pre = make_pose_preprocessor(root, dataset)
    flips = []
    for seed in range(24):
        random.seed(seed)
        torch.manual_seed(seed)
        flipped, maps = split_flip(pre[0], target)
        np.testing.assert_allclose(maps, expected, atol=1e-6)
        flips.append(flipped)
    # Every channel k of a mirrored item is keypoint k's map mirrored (compared above), so the
    # left/right channels (2 and 5, at different places here) were not swapped.
    assert any(flips) and not all(flips)


def test_pose_aug_erase_removes_exactly_one_map(pair_fixture):
    root, dataset, target, landmarks = pair_fixture
    expected = generate_pose_map(landmarks, H, W, 5)
    pre = make_pose_preprocessor(root, dataset, pose_aug="erase")
    erased = set()
    for seed in range(30):
        random.seed(seed)
        _, maps = split_flip(pre[0], target)
        empty = [k for k in range(18) if not maps[k].any()]
        assert len(empty) == 1
        kept = [k for k in range(18) if k != empty[0]]
        np.testing.assert_allclose(maps[kept], expected[kept], atol=1e-6)
        erased.add(empty[0])
    assert len(erased) > 8 and erased <= set(range(18))


def test_pose_aug_gauss_draws_sigma_from_4_5_6(pair_fixture):
    root, dataset, target, landmarks = pair_fixture
    # Keypoint 0 of each candidate sigma, built by the release's method.
    r, c = landmarks[0]
    candidates = {s: release_map(r, c, H, W, s) for s in (4, 5, 6)}
    pre = make_pose_preprocessor(root, dataset, pose_aug="gauss")
    seen = Counter()
    for seed in range(30):
        random.seed(seed)
        _, maps = split_flip(pre[0], target)
        matches = [s for s, ref in candidates.items() if np.abs(maps[0] - ref).max() < 1e-6]
        assert len(matches) == 1
        np.testing.assert_allclose(maps, generate_pose_map(landmarks, H, W, matches[0]), atol=1e-6)
        seen[matches[0]] += 1
    assert set(seen) == {4, 5, 6}


def test_pose_aug_no_keeps_sigma_5(pair_fixture):
    root, dataset, target, landmarks = pair_fixture
    pre = make_pose_preprocessor(root, dataset, pose_aug="no")
    r, c = landmarks[3]
    for seed in range(5):
        random.seed(seed)
        _, maps = split_flip(pre[0], target)
        np.testing.assert_allclose(maps[3], release_map(r, c, H, W, 5), atol=1e-6)


def test_target_is_another_image_of_the_same_label(data_root):
    colours = {"a.png": (250, 0, 0), "b.png": (0, 250, 0), "c.png": (0, 0, 250), "d.png": (120, 120, 0)}
    for name, colour in colours.items():
        save_image(data_root, name, constant(64, 32, colour))
        write_pose_file(data_root / "poses" / (name[0] + ".txt"), FULL_POSE)
    dataset = [("a.png", 0, 0), ("b.png", 0, 1), ("c.png", 0, 2), ("d.png", 1, 0)]
    pre = make_pose_preprocessor(data_root, dataset)
    by_colour = {name: normalised(constant(1, 1, col))[:, 0, 0] for name, col in colours.items()}

    def target_name(item):
        centre = item["target"][:, H // 2, W // 2]
        return next(n for n, v in by_colour.items() if torch.allclose(centre, v, atol=1e-5))

    random.seed(0)
    targets = Counter(target_name(pre[0]) for _ in range(40))
    assert set(targets) == {"b.png", "c.png"}
    assert target_name(pre[3]) == "d.png"  # a single-image identity is its own target
    assert pre[3]["pid"] == 1


def test_pid_imgs_argument_restricts_targets(pair_fixture):
    root, dataset, target, _ = pair_fixture
    pre = make_pose_preprocessor(root, dataset, pid_imgs={0: ["a.png"]})
    random.seed(0)
    # a.png is the only listed file of label 0, so a.png's item targets a.png itself.
    item = pre[0]
    colour = normalised(constant(1, 1, (200, 10, 10)))[:, 0, 0]
    assert torch.allclose(item["target"], colour[:, None, None].expand(3, H, W), atol=1e-5)


def test_pose_items_collate_over_pairs(pair_fixture):
    root, dataset, _, _ = pair_fixture
    pre = make_pose_preprocessor(root, dataset)
    sampler = RandomPairSampler(dataset, 0, generator=torch.Generator().manual_seed(0))
    first, second = next(iter(DataLoader(pre, batch_size=2, sampler=sampler)))
    assert first["posemap"].shape == (2, 18, H, W) and second["target"].shape == (2, 3, H, W)
    assert first["pid"].tolist() == [0, 0] and first["pid"].dtype == torch.int64


def test_bad_pose_aug_is_a_config_error(data_root):
    with pytest.raises(ConfigError, match=r"--pose-aug.*no, gauss, erase"):
        Preprocessor([], with_pose=True, pose_root=str(data_root / "poses"), pose_aug="blur")


def test_missing_pose_file_is_a_dataset_error(data_root):
    save_image(data_root, "z.png", constant(64, 32, (1, 2, 3)))
    pre = make_pose_preprocessor(data_root, [("z.png", 0, 0)])
    with pytest.raises(DatasetError, match="z.txt"):
        pre[0]


# ----------------------------------------------------------------------- RandomPairSampler

LABELLED = [(f"{i}.jpg", label, 0) for i, label in enumerate([0, 0, 0, 1, 1, 2, 3])]


@pytest.mark.parametrize("ratio", [0, 1, 3])
def test_sampler_length_and_pair_structure(ratio):
    sampler = RandomPairSampler(LABELLED, ratio)
    torch.manual_seed(0)
    pairs = list(sampler)
    assert len(sampler) == len(pairs) == 7 * (1 + ratio)
    blocks = [pairs[i:i + 1 + ratio] for i in range(0, len(pairs), 1 + ratio)]
    assert sorted(b[0][0] for b in blocks) == list(range(7))
    for block in blocks:
        anchor = block[0][0]
        assert all(a == anchor for a, _ in block)
        label = LABELLED[anchor][1]
        pos = block[0][1]
        assert LABELLED[pos][1] == label
        single = sum(1 for it in LABELLED if it[1] == label) == 1
        assert (pos == anchor) == single
        for _, neg in block[1:]:
            assert LABELLED[neg][1] != label
        assert all(isinstance(i, int) for pair in block for i in pair)


def test_sampler_is_reproducible_under_torch_seed():
    sampler = RandomPairSampler(LABELLED, 3)
    torch.manual_seed(11)
    first = list(sampler)
    torch.manual_seed(11)
    assert list(sampler) == first
    torch.manual_seed(12)
    assert list(sampler) != first


def test_sampler_generator_argument():
    a = list(RandomPairSampler(LABELLED, 3, generator=torch.Generator().manual_seed(5)))
    state = torch.get_rng_state()
    b = list(RandomPairSampler(LABELLED, 3, generator=torch.Generator().manual_seed(5)))
    assert a == b
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not used


def test_sampler_draws_are_uniform():
    data = [(f"{i}.jpg", label, 0) for i, label in enumerate(["x", "x", "x", "y", "y", "z"])]
    sampler = RandomPairSampler(data, 2, generator=torch.Generator().manual_seed(0))
    positives, negatives = Counter(), Counter()
    epochs = 600
    for _ in range(epochs):
        for k, (a, j) in enumerate(sampler):
            if a == 0:
                (positives if k % 3 == 0 else negatives)[j] += 1
    # Anchor 0: positive uniform over {1, 2}; negatives uniform over {3, 4, 5}.
    assert set(positives) == {1, 2} and set(negatives) == {3, 4, 5}
    assert abs(positives[1] - epochs / 2) < 4 * np.sqrt(epochs / 4)
    n = 2 * epochs
    for j in (3, 4, 5):
        assert abs(negatives[j] - n / 3) < 4 * np.sqrt(n * 2 / 9)


def test_sampler_draws_each_anchors_negatives_without_replacement():
    """As the release: an anchor's negatives are distinct, and every unordered set of them is equally likely."""
    data = [(f"{i}.jpg", label, 0) for i, label in enumerate(["x", "x", "y", "y", "z", "w"])]
    sampler = RandomPairSampler(data, 3, generator=torch.Generator().manual_seed(1))
    sets = Counter()
    epochs = 800
    for _ in range(epochs):
        pairs = list(sampler)
        for b in range(0, len(pairs), 4):
            negs = [j for _, j in pairs[b + 1:b + 4]]
            assert len(set(negs)) == 3, negs
            if pairs[b][0] == 0:
                sets[frozenset(negs)] += 1
    # Anchor 0 (label x): 3 of the 4 samples {2, 3, 4, 5}; 4 possible sets, each with probability 1/4
    # (with replacement, a repeat would occur in 1 - 4*3*2/64 = 62.5 % of the blocks).
    assert set(sets) == {frozenset(c) for c in ((2, 3, 4), (2, 3, 5), (2, 4, 5), (3, 4, 5))}
    for count in sets.values():
        assert abs(count - epochs / 4) < 4 * np.sqrt(epochs * 3 / 16)
    # Fewer negatives than the ratio (anchor of label 0 below has 2): repeats only there.
    few = [(f"{i}.jpg", label, 0) for i, label in enumerate([0, 0, 0, 1, 2])]
    pairs = list(RandomPairSampler(few, 3, generator=torch.Generator().manual_seed(2)))
    for b in range(0, len(pairs), 4):
        negs = [j for _, j in pairs[b + 1:b + 4]]
        assert all(few[j][1] != few[pairs[b][0]][1] for j in negs)
        if few[pairs[b][0]][1] != 0:
            assert len(set(negs)) == 3


def test_sampler_rejects_bad_configurations():
    with pytest.raises(ConfigError, match="--np-ratio"):
        RandomPairSampler(LABELLED, -1)
    with pytest.raises(ConfigError, match="--np-ratio"):
        RandomPairSampler(LABELLED, 1.5)
    with pytest.raises(ConfigError, match="two identities"):
        RandomPairSampler([("a", 0, 0), ("b", 0, 1)], 1)
    one_label = RandomPairSampler([("a", 0, 0), ("b", 0, 1)], 0)
    torch.manual_seed(0)
    assert sorted(one_label) == [(0, 1), (1, 0)]
    assert len(RandomPairSampler([], 3)) == 0 and list(RandomPairSampler([], 3)) == []


# ----------------------------------------------------------------------------- sigma scaling

@pytest.mark.parametrize("height,width,sigma", [(256, 128, 5.0), (128, 64, 2.5), (64, 32, 1.25)])
def test_default_sigma_scales_with_the_height(data_root, height, width, sigma):
    # 5 px at 256 rows (the release), 5 * height / 256 elsewhere.
    assert pose_sigma(height) == sigma
    save_image(data_root, "t.png", constant(64, 32, (0, 0, 0)))
    pose = np.full((18, 2), -1.0)
    pose[0] = (0.0, 0.0)     # the corner: unchanged by the flip test below
    pose[1] = (32.0, 16.0)   # the middle: (height / 2, width / 2)
    write_pose_file(data_root / "poses" / "t.txt", pose)
    pre = Preprocessor([("t.png", 1, 0)], root=str(data_root / "images"), with_pose=True,
                       pose_root=str(data_root / "poses"), height=height, width=width)
    assert pre.sigma == sigma
    random.seed(0)
    maps = pre[0]["posemap"].numpy()
    if maps[0][0, 0] != 1.0:
        maps = maps[..., ::-1]
    np.testing.assert_allclose(maps[0], release_map(0, 0, height, width, sigma), atol=1e-6)
    np.testing.assert_allclose(maps[1], release_map(height // 2, width // 2, height, width, sigma), atol=1e-6)
    # The middle keypoint's map about 4 sigma below it, inside the kernel: exp(-d^2 / 2 sigma^2).
    r, c, step = height // 2, width // 2, int(sigma * 4)
    assert maps[1][r + step, c] == pytest.approx(np.exp(-0.5 * (step / sigma) ** 2), abs=1e-6)


def test_pose_aug_gauss_scales_with_the_height(pair_fixture):
    root, dataset, target, landmarks = pair_fixture
    # 128 rows: sigma 2.5, and gauss draws from {2, 2.5, 3} (the release's {4, 5, 6} at 256 rows).
    r, c = landmarks[0]
    candidates = {s: release_map(r, c, H, W, s) for s in (2.0, 2.5, 3.0)}
    pre = make_pose_preprocessor(root, dataset, pose_aug="gauss", sigma=None)
    seen = Counter()
    for seed in range(30):
        random.seed(seed)
        _, maps = split_flip(pre[0], target)
        matches = [s for s, ref in candidates.items() if np.abs(maps[0] - ref).max() < 1e-6]
        assert len(matches) == 1
        seen[matches[0]] += 1
    assert set(seen) == {2.0, 2.5, 3.0}


def test_pose_sigma_rejects_a_non_positive_height():
    with pytest.raises(ValueError):
        pose_sigma(0)
