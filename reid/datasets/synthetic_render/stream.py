"""An unlimited stream of freshly rendered persons, for pre-training a backbone by identity.

Every sample is a new rendering: a random camera of a private camera pool, pose, facing,
lighting, background and blur, for a fixed appearance per identity. The appearances come from
their own random stream (tag 6 of the seed sequence), which the dataset writer never uses, so the
pre-training identities are not any dataset's identities even with the same seed.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from reid.datasets.synthetic_render.appearance import Appearance, _pick, random_appearance, random_camera, random_view
from reid.datasets.synthetic_render.dataset import _rng
from reid.datasets.synthetic_render.drawing import render_person
from reid.utils.data.transforms import build_test_transform

# Tags of the seed sequence: (seed, tag, ...). The dataset writer uses 0-4.
_APPEARANCE, _CAMERA, _SAMPLE = 6, 7, 8

Key = Tuple[int, int]  # (identity, draw)


class RenderedIdentities(Dataset):
    """Map-style dataset: key ``(identity, draw)`` -> ``(normalised image tensor, identity)``.

    Args:
        num_ids: identities 0 .. num_ids - 1.
        num_cams: size of the camera pool each sample draws its camera from.
        height, width: image size in pixels.
        seed: the root of every random draw; the same key always gives the same image.
        split: 0 for training draws, 1 for held-out draws (another random stream, so held-out
            images are never training images).
    """

    def __init__(self, num_ids: int, num_cams: int, height: int, width: int, seed: int, split: int = 0) -> None:
        self.num_ids, self.num_cams = num_ids, num_cams
        self.height, self.width, self.seed, self.split = height, width, seed, split
        self.cameras = [random_camera(_rng(seed, _CAMERA, c)) for c in range(num_cams)]
        self._appearances: Dict[int, Appearance] = {}
        self.transform = build_test_transform(height, width)

    def appearance(self, pid: int) -> Appearance:
        if pid not in self._appearances:
            self._appearances[pid] = random_appearance(_rng(self.seed, _APPEARANCE, pid))
        return self._appearances[pid]

    def render(self, key: Key) -> np.ndarray:
        """The H x W x 3 uint8 image of ``key``."""
        pid, draw = key
        rng = _rng(self.seed, _SAMPLE, self.split, pid, draw)
        camera = self.cameras[int(rng.integers(self.num_cams))]
        yaw = float(_pick(rng, camera.yaw_modes)) if rng.random() < 0.85 else float(rng.uniform(-math.pi, math.pi))
        view = random_view(rng, camera, base_yaw=yaw)
        return render_person(self.appearance(pid), camera, view, self.height, self.width).image

    def __getitem__(self, key: Key) -> Tuple[torch.Tensor, int]:
        image = Image.fromarray(self.render(key))
        if key[1] % 2:  # a mirrored person is the same person
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return self.transform(image), key[0]

    def __len__(self) -> int:
        raise TypeError("RenderedIdentities is unlimited; index it with (identity, draw) keys")


class IdentityBatchSampler(Sampler[List[Key]]):
    """``iterations`` batches of ``ids_per_batch`` random identities x ``images_per_id`` new draws
    each (the P x K batches of batch-hard triplet training); every draw number is used once."""

    def __init__(self, num_ids: int, ids_per_batch: int, images_per_id: int, iterations: int, seed: int) -> None:
        if ids_per_batch > num_ids:
            raise ValueError(f"ids_per_batch {ids_per_batch} exceeds num_ids {num_ids}")
        self.num_ids, self.p, self.k, self.iterations, self.seed = num_ids, ids_per_batch, images_per_id, iterations, seed

    def __iter__(self) -> Iterator[List[Key]]:
        g = torch.Generator().manual_seed(self.seed)
        for it in range(self.iterations):
            pids = torch.randperm(self.num_ids, generator=g)[: self.p].tolist()
            yield [(pid, it * self.k + k) for pid in pids for k in range(self.k)]

    def __len__(self) -> int:
        return self.iterations
