"""Image transforms of the release's ``reid/utils/data/transforms.py`` (PIL image in, PIL image
out) and the two standard pipelines.

Every random draw of the classes here uses Python's :mod:`random` module (the pipelines' flip,
torchvision's ``RandomHorizontalFlip``, uses torch's generator). PyTorch's DataLoader seeds both
:mod:`random` and torch in each worker from its base seed, so a run seeded with ``random.seed``
and ``torch.manual_seed`` is reproducible with any number of workers.
"""
from __future__ import annotations

import math
import random
from typing import Tuple

from PIL import Image
from torchvision import transforms as T

from reid.errors import ConfigError

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


class RectScale:
    """Resize an image to exactly ``height`` x ``width``.

    Args:
        height: output height in pixels.
        width: output width in pixels.
        interpolation: a PIL resampling filter (bilinear by default).
    """

    def __init__(self, height: int, width: int, interpolation: int = Image.BILINEAR) -> None:
        self.height = height
        self.width = width
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        """Return ``img`` itself when it already has the target size, else a resized copy."""
        if img.size == (self.width, self.height):
            return img
        return img.resize((self.width, self.height), self.interpolation)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(height={self.height}, width={self.width})"


class RandomSizedRectCrop:
    """Crop a random tall box and resize it to ``height`` x ``width``.

    Up to 10 tries: the box covers a fraction U(0.64, 1.0) of the image area with aspect ratio
    (box height / box width) U(2, 3); the first box that fits is taken at a uniformly random
    position. When none fits, the whole image is resized (:class:`RectScale`).

    Args:
        height: output height in pixels.
        width: output width in pixels.
        interpolation: a PIL resampling filter (bilinear by default).
    """

    MAX_TRIES = 10
    AREA_RANGE = (0.64, 1.0)
    ASPECT_RANGE = (2.0, 3.0)

    def __init__(self, height: int, width: int, interpolation: int = Image.BILINEAR) -> None:
        self.height = height
        self.width = width
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        """Return the resized random crop of ``img`` (a new image)."""
        img_w, img_h = img.size
        for _ in range(self.MAX_TRIES):
            area = random.uniform(*self.AREA_RANGE) * img_w * img_h
            aspect = random.uniform(*self.ASPECT_RANGE)
            box_h = int(round(math.sqrt(area * aspect)))
            box_w = int(round(math.sqrt(area / aspect)))
            if box_w <= img_w and box_h <= img_h:
                left = random.randint(0, img_w - box_w)
                top = random.randint(0, img_h - box_h)
                crop = img.crop((left, top, left + box_w, top + box_h))
                return crop.resize((self.width, self.height), self.interpolation)
        return RectScale(self.height, self.width, self.interpolation)(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(height={self.height}, width={self.width})"


class RandomSizedEarser:
    """Random erasing: fill one random box of the image with one random RGB colour.

    A draw p1 ~ U(-1, 1) decides: when p1 > ``p`` the image is returned unchanged (so with the
    default p = 0.5 an image is erased with probability 0.75). Otherwise boxes are drawn until one
    lies strictly inside the image: area fraction U(sl, sh), aspect ratio (height / width)
    U(asratio, 1 / asratio), top-left corner (x, y) uniform; the box is the pixel range
    ``[ceil(x), floor(ceil(x) + box width))`` by ``[ceil(y), floor(ceil(y) + box height))``.
    The colour is painted at that corner (the release pasted it at offset (box width,
    box height) instead; fixed here). After 100 rejected boxes (only possible for degenerate,
    e.g. 1-pixel-wide, images, where the release looped forever) the image is returned unchanged.

    Args:
        sl: smallest erased area fraction.
        sh: largest erased area fraction.
        asratio: smallest aspect ratio; the largest is its inverse.
        p: threshold on p1 ~ U(-1, 1); the erase probability is (p + 1) / 2.
    """

    MAX_TRIES = 100

    def __init__(self, sl: float = 0.02, sh: float = 0.2, asratio: float = 0.3, p: float = 0.5) -> None:
        self.sl = sl
        self.sh = sh
        self.asratio = asratio
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        """Return ``img`` unchanged or an erased copy (the input is never modified)."""
        if random.uniform(-1.0, 1.0) > self.p:
            return img
        img_w, img_h = img.size
        area = img_w * img_h
        for _ in range(self.MAX_TRIES):
            erase_area = random.uniform(self.sl, self.sh) * area
            aspect = random.uniform(self.asratio, 1.0 / self.asratio)
            box_h = math.sqrt(erase_area * aspect)
            box_w = math.sqrt(erase_area / aspect)
            x = random.uniform(0, img_w - box_w)
            y = random.uniform(0, img_h - box_h)
            if x > 0 and y > 0 and x + box_w <= img_w and y + box_h <= img_h:
                left, top = math.ceil(x), math.ceil(y)
                right, bottom = math.floor(left + box_w), math.floor(top + box_h)
                colour = (random.randint(0, 255), random.randint(0, 255), random.randint(0, 255))
                out = img.convert("RGB") if img.mode != "RGB" else img.copy()
                if right > left and bottom > top:
                    out.paste(colour, (left, top, right, bottom))
                return out
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sl={self.sl}, sh={self.sh}, asratio={self.asratio}, p={self.p})"


def normalize() -> T.Normalize:
    """The ImageNet mean/std normalisation every tensor of the project goes through."""
    return T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)


AUGMENT_CHOICES = ("release", "flip", "none")


def build_train_transform(height: int, width: int, augment: str = "release") -> T.Compose:
    """baseline.py's training pipeline.

    Args:
        height: output image height.
        width: output image width.
        augment: ``release`` = random crop, random erasing, random flip (the release's pipeline);
            ``flip`` = resize and random flip only; ``none`` = the test pipeline. The lighter ones
            exist for short runs from random weights (the demo, the tests), which the release's
            augmentation slows down a lot.
    """
    _check_size(height, width)
    if augment == "release":
        steps = [RandomSizedRectCrop(height, width), RandomSizedEarser(), T.RandomHorizontalFlip()]
    elif augment == "flip":
        steps = [RectScale(height, width), T.RandomHorizontalFlip()]
    elif augment == "none":
        steps = [RectScale(height, width)]
    else:
        raise ConfigError(f"--augment {augment}: expected one of {', '.join(AUGMENT_CHOICES)}")
    return T.Compose([*steps, T.ToTensor(), normalize()])


def build_test_transform(height: int, width: int) -> T.Compose:
    """The evaluation pipeline: resize to ``height`` x ``width``, tensor, normalise.

    Args:
        height: output image height.
        width: output image width.
    """
    _check_size(height, width)
    return T.Compose([RectScale(height, width), T.ToTensor(), normalize()])


def _check_size(height: int, width: int) -> None:
    if not (height > 0 and width > 0):
        raise ConfigError(f"--height {height} --width {width}: the image size must be positive")
