"""Transforms of the release's reid/utils/data/transforms.py: RectScale, RandomSizedRectCrop,
RandomSizedEarser, pipelines."""
import math
import random

import numpy as np
import torch
from PIL import Image

from reid.utils.data.transforms import (
    RandomSizedEarser,
    RandomSizedRectCrop,
    RectScale,
    build_test_transform,
    build_train_transform,
)


def gradient_image(width, height):
    """An RGB image whose pixel (x, y) is (x, y, 7): positions can be read back from colours."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    arr = np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# ------------------------------------------------------------------------------- RectScale

def test_rect_scale_is_a_no_op_at_the_exact_size():
    img = gradient_image(32, 64)
    out = RectScale(64, 32)(img)
    assert out.size == (32, 64)
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_rect_scale_resizes_to_height_by_width():
    img = Image.new("RGB", (50, 70), (10, 200, 30))
    out = RectScale(256, 128)(img)
    assert out.size == (128, 256)
    # A constant image stays constant under bilinear resizing.
    assert np.all(np.asarray(out) == np.array([10, 200, 30], dtype=np.uint8))


# --------------------------------------------------------------------- RandomSizedRectCrop

def crop_box_from_output(out):
    """Recover (left, top, width, height) of the crop from an upsampled gradient crop."""
    arr = np.asarray(out).astype(int)
    left, right = arr[..., 0].min(), arr[..., 0].max()
    top, bottom = arr[..., 1].min(), arr[..., 1].max()
    return left, top, right - left + 1, bottom - top + 1


def test_crop_area_and_aspect_ranges():
    # Image 60 x 200 (area 12000): boxes of area 0.64..1.0 and aspect 2..3 have width 51..77,
    # so some tries fit (width <= 60) and some do not. The output (128 x 256 with nearest
    # resampling) is larger than any crop, so every source pixel shows up in it.
    img = gradient_image(60, 200)
    crop = RandomSizedRectCrop(256, 128, interpolation=Image.NEAREST)
    random.seed(3)
    seen_w, seen_left = set(), set()
    for _ in range(300):
        out = crop(img)
        assert out.size == (128, 256)
        left, top, w, h = crop_box_from_output(out)
        if (w, h) == (60, 200):
            continue  # fallback to RectScale (or a box of the full image)
        assert 0 <= left and left + w <= 60 and 0 <= top and top + h <= 200
        # Rounding each side to an integer moves the ratios slightly past the drawn ranges.
        assert 0.64 - 0.03 <= w * h / 12000 <= 1.0
        assert 2.0 - 0.05 <= h / w <= 3.0 + 0.07
        seen_w.add(w)
        seen_left.add(left)
    assert len(seen_w) > 3 and len(seen_left) > 3


def test_crop_replays_its_draws():
    img = gradient_image(60, 200)
    crop = RandomSizedRectCrop(256, 128, interpolation=Image.NEAREST)
    for seed in range(20):
        random.seed(seed)
        out = crop(img)
        random.seed(seed)
        expected = None
        for _ in range(10):
            area = random.uniform(0.64, 1.0) * 12000
            aspect = random.uniform(2, 3)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w <= 60 and h <= 200:
                left = random.randint(0, 60 - w)
                top = random.randint(0, 200 - h)
                expected = (left, top, w, h)
                break
        if expected is None:
            expected = (0, 0, 60, 200)
        assert crop_box_from_output(out) == expected


def test_crop_falls_back_to_rect_scale_when_no_box_fits():
    # A wide 200 x 50 image: aspect >= 2 with area >= 6400 needs a box >= 256 px tall.
    img = gradient_image(200, 50)
    random.seed(0)
    out = RandomSizedRectCrop(256, 128)(img)
    assert np.array_equal(np.asarray(out), np.asarray(RectScale(256, 128)(img)))


# ----------------------------------------------------------------------- RandomSizedEarser

def replay_eraser(img, sl=0.02, sh=0.2, asratio=0.3, p=0.5):
    """Recompute the eraser's draws from the current `random` state; return the expected array."""
    arr = np.asarray(img).copy()
    if random.uniform(-1, 1) > p:
        return arr, None
    W, H = img.size
    while True:
        area = random.uniform(sl, sh) * W * H
        aspect = random.uniform(asratio, 1 / asratio)
        bh, bw = math.sqrt(area * aspect), math.sqrt(area / aspect)
        x, y = random.uniform(0, W - bw), random.uniform(0, H - bh)
        if x > 0 and y > 0 and x + bw <= W and y + bh <= H:
            left, top = math.ceil(x), math.ceil(y)
            right, bottom = math.floor(left + bw), math.floor(top + bh)
            colour = [random.randint(0, 255) for _ in range(3)]
            arr[top:bottom, left:right] = colour
            return arr, (left, top, right, bottom)


def test_eraser_paints_the_box_at_the_chosen_corner():
    img = gradient_image(32, 64)
    before = np.asarray(img).copy()
    eraser = RandomSizedEarser()
    erased = 0
    for seed in range(60):
        random.seed(seed)
        out = eraser(img)
        random.seed(seed)
        expected, box = replay_eraser(img)
        assert np.array_equal(np.asarray(out), expected), f"seed {seed}, box {box}"
        if box is not None:
            erased += 1
            left, top, right, bottom = box
            # The painted region is exactly the box: one colour inside, untouched outside.
            changed = np.any(np.asarray(out) != before, axis=-1)
            ys, xs = np.nonzero(changed)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (left, top, right, bottom)
    assert 30 < erased < 60
    # The input image is never modified.
    assert np.array_equal(np.asarray(img), before)


def test_eraser_probability_is_three_quarters():
    img = Image.new("RGB", (16, 32), (0, 0, 0))
    eraser = RandomSizedEarser()
    random.seed(1234)
    n = 4000
    changed = sum(np.asarray(eraser(img)).any() for _ in range(n))
    # Binomial(4000, 0.75): standard deviation 0.0068; allow 4 of them.
    assert abs(changed / n - 0.75) < 0.028


def test_eraser_p_bounds():
    img = Image.new("RGB", (16, 32), (0, 0, 0))
    random.seed(5)
    assert not any(np.asarray(RandomSizedEarser(p=-1.0)(img)).any() for _ in range(200))
    assert all(np.asarray(RandomSizedEarser(p=1.0)(img)).any() for _ in range(200))


def test_eraser_box_area_fraction_range():
    img = Image.new("RGB", (64, 128), (0, 0, 0))
    eraser = RandomSizedEarser(p=1.0)
    random.seed(9)
    for _ in range(200):
        painted = np.asarray(eraser(img)).any(axis=-1).sum()
        # The box sides are floored, so the area can fall below sl by up to one row and column.
        assert 0.02 * 8192 - (64 + 128) <= painted <= 0.2 * 8192


# ------------------------------------------------------------------------------- pipelines

def test_test_transform_normalises_with_imagenet_statistics():
    img = Image.new("RGB", (30, 60), (255, 0, 51))
    out = build_test_transform(64, 32)(img)
    assert out.shape == (3, 64, 32) and out.dtype == torch.float32
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    for c in range(3):
        assert torch.allclose(out[c], torch.full((64, 32), expected[c]), atol=1e-5)


def test_train_transform_output_and_steps():
    tf = build_train_transform(64, 32)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["RandomSizedRectCrop", "RandomSizedEarser", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    random.seed(0)
    torch.manual_seed(0)
    out = tf(gradient_image(40, 100))
    assert out.shape == (3, 64, 32)
