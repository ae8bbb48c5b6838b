"""Dataset items: plain re-ID items and FD-GAN's pose-guided items (the release's
``reid/utils/data/preprocessor.py``).

Random draws made here (target choice, pose augmentation, the target/pose-map flip, the eraser)
use Python's :mod:`random` module; the origin's horizontal flip uses torch's generator. PyTorch's
DataLoader seeds both in every worker.
"""
from __future__ import annotations

import functools
import os
import random
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms as T

from reid.errors import ConfigError, DatasetError
from reid.utils.data.images import read_image
from reid.utils.data.pose import read_pose_file, scale_landmarks
from reid.utils.data.transforms import RandomSizedEarser, RectScale, normalize
from reid.utils.osutils import PathLike

POSE_AUG_CHOICES = ("no", "gauss", "erase")
# The release draws its pose maps with sigma 5 px at 256 rows; other sizes scale it with the height.
RELEASE_SIGMA = 5.0
RELEASE_HEIGHT = 256
# --pose-aug gauss: the release's {4, 5, 6} around 5, as factors of the sigma in use.
_GAUSS_FACTORS = (0.8, 1.0, 1.2)
# scipy.ndimage.gaussian_filter's default truncation: the kernel radius is int(4 * sigma + 0.5).
_TRUNCATE = 4.0


@functools.lru_cache(maxsize=32)
def _peak_normalised_profiles(length: int, sigma: float) -> np.ndarray:
    """1-D Gaussian-filtered unit impulses on ``length`` samples, each divided by its maximum.

    Row ``p`` of the returned read-only float32 ``(length, length)`` array is the response to an
    impulse at ``p`` of scipy's ``gaussian_filter1d(sigma)`` with mode 'reflect' (the edge sample
    repeated: d c b a | a b c d | d c b a) and truncate 4.0, divided by its peak. Indices are
    folded with period ``2 * length``, so lines shorter than the kernel reflect repeatedly, as
    scipy does.
    """
    radius = int(_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * offsets.astype(np.float64) ** 2 / (sigma * sigma))
    weights /= weights.sum()
    out_pos = np.arange(length)[:, None]
    folded = np.mod(out_pos + offsets[None, :], 2 * length)
    src = np.where(folded < length, folded, 2 * length - 1 - folded)
    # response[i, p] = sum of the kernel weights w[t] with reflect(i + t) == p.
    response = np.zeros((length, length), dtype=np.float64)
    np.add.at(response, (np.broadcast_to(out_pos, src.shape), src), np.broadcast_to(weights, src.shape))
    profiles = (response / response.max(axis=0, keepdims=True)).T.astype(np.float32)
    profiles.setflags(write=False)
    return profiles


def draw_pose_maps(keypoints: torch.Tensor, height: int, width: int, sigma: Union[float, torch.Tensor],
                   flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gaussian heat maps of a batch of integer keypoints, on the keypoints' device (CPU or GPU).

    Each map equals the release's (up to float32 rounding): a zero array with a single 1 at
    (row, col) through ``scipy.ndimage.gaussian_filter(sigma)`` (mode 'reflect', truncate 4.0),
    divided by its maximum. That filter is separable, so a map is the outer product of two 1-D
    filtered impulses, each divided by its own peak; the 1-D profiles are cached per
    (length, sigma), and every map of the batch is one broadcast multiply.

    Args:
        keypoints: int64 ``(B, K, 2)`` (row, col) pixels; a keypoint with a negative coordinate or
            outside ``[0, height) x [0, width)`` gives an all-zero map.
        height: map height in pixels.
        width: map width in pixels.
        sigma: Gaussian standard deviation in pixels: one for the batch, or a ``(B,)`` tensor.
        flip: optional bool ``(B,)``: mirror those items' maps left-right (channels not swapped).

    Returns:
        float32 ``(B, K, height, width)`` on ``keypoints.device``.
    """
    if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must have shape (B, K, 2), got {tuple(keypoints.shape)}")
    dev = keypoints.device
    batch = keypoints.shape[0]
    sigmas = sigma.reshape(-1).tolist() if isinstance(sigma, torch.Tensor) else [float(sigma)] * batch
    if len(sigmas) != batch:
        raise ValueError(f"got {len(sigmas)} sigmas for {batch} items")
    if height <= 0 or width <= 0 or not all(s > 0 for s in sigmas):
        raise ValueError(f"need positive height, width and sigma, got {height}, {width}, {sorted(set(sigmas))}")
    rows, cols = keypoints[..., 0], keypoints[..., 1]
    present = (rows >= 0) & (cols >= 0) & (rows < height) & (cols < width)
    row_idx, col_idx = torch.where(present, rows, 0), torch.where(present, cols, 0)
    if flip is not None:
        col_idx = torch.where(flip.to(dev).view(-1, 1), width - 1 - col_idx, col_idx)
    row_profiles = torch.empty(*rows.shape, height, dtype=torch.float32, device=dev)
    col_profiles = torch.empty(*cols.shape, width, dtype=torch.float32, device=dev)
    for s in sorted(set(sigmas)):  # at most three with --pose-aug gauss
        items = torch.tensor([v == s for v in sigmas], device=dev)
        row_table = torch.from_numpy(_peak_normalised_profiles(height, s).copy()).to(dev)
        col_table = torch.from_numpy(_peak_normalised_profiles(width, s).copy()).to(dev)
        row_profiles[items] = row_table[row_idx[items]]
        col_profiles[items] = col_table[col_idx[items]]
    row_profiles = torch.where(present[..., None], row_profiles, 0.0)
    return row_profiles[..., :, None] * col_profiles[..., None, :]


def generate_pose_map(landmarks: Union[np.ndarray, Sequence[Sequence[float]]], height: int, width: int,
                      sigma: float = 5) -> np.ndarray:
    """Gaussian heat maps of one image's keypoints, equal to the release's (:func:`draw_pose_maps`).

    Args:
        landmarks: ``(K, 2)`` (row, col) pixel coordinates (K = 18 for COCO-18); non-integer values
            are truncated toward zero. A keypoint with a negative coordinate is missing, and one
            outside ``[0, height) x [0, width)`` is dropped: both give an all-zero map.
        height: map height in pixels.
        width: map width in pixels.
        sigma: Gaussian standard deviation in pixels.

    Returns:
        float32 array of shape ``(K, height, width)``; each present keypoint's map peaks at 1.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"landmarks must have shape (K, 2), got {points.shape}")
    if height <= 0 or width <= 0 or not sigma > 0:
        raise ValueError(f"need positive height, width and sigma, got {height}, {width}, {sigma}")
    rows, cols = points[:, 0], points[:, 1]
    # NaN fails every comparison, so it counts as missing too.
    present = (rows >= 0) & (cols >= 0) & (rows < height) & (cols < width)
    keypoints = np.where(present[:, None], np.where(present[:, None], points, 0).astype(np.int64), -1)
    return draw_pose_maps(torch.from_numpy(keypoints)[None], height, width, float(sigma))[0].numpy()


def pose_sigma(height: int, sigma_at_256: float = RELEASE_SIGMA) -> float:
    """Pose-map sigma in pixels at ``height`` rows: ``sigma_at_256`` scaled with the height.

    At 256 rows this is ``sigma_at_256`` itself (the release's 5 px); at 64 rows it is a quarter
    of it, so the 18 Gaussians stay as distinct relative to the body as in the release.
    """
    if height <= 0:
        raise ValueError(f"need a positive height, got {height}")
    return float(sigma_at_256) * height / RELEASE_HEIGHT


class Preprocessor(TorchDataset):
    """Turn ``(fname, pid, cam)`` samples into training or evaluation items.

    Plain items (``with_pose=False``): ``(image, fname, pid, cam)`` with ``transform`` applied to
    the image. Pose-guided items (``with_pose=True``, train.py): a dict with

    - ``'origin'``: the image through RectScale, RandomSizedEarser, random horizontal flip,
      ToTensor and ImageNet normalisation;
    - ``'target'``: a random OTHER image of the same label (the same one only when the label has
      a single image) through RectScale, ToTensor and normalisation;
    - ``'posemap'``: ``(18, height, width)`` float32 maps of the target's pose
      (:func:`generate_pose_map`), its pose file's coordinates scaled to ``height`` x ``width``
      and truncated to int;
    - ``'pid'``: the label (int).

    With ``draw_maps=False`` the item carries what the maps are drawn from instead of
    ``'posemap'`` (a few hundred bytes instead of 2.4 MB at 256 x 128): ``'keypoints'`` (int64
    ``(18, 2)``, after ``--pose-aug erase``), ``'sigma'`` (after ``--pose-aug gauss``) and
    ``'flip'``; :func:`batch_pose_maps` draws the maps of a batch on the training device.

    With probability 0.5 the target and the pose maps are mirrored left-right together (keypoint
    channels are not swapped, as in the release). Indexing with a tuple or list of indices gives
    the list of their items, so the pairs of :class:`RandomPairSampler` collate to
    ``[first members, second members]``.

    Args:
        dataset: the samples, ``(fname, pid_or_label, cam)`` each.
        root: folder the file names are relative to (None: names are used as given).
        transform: transform of plain items' images (unused with ``with_pose``).
        with_pose: make pose-guided items.
        pose_root: folder of the pose files ``<stem>.txt`` (required with ``with_pose``).
        pid_imgs: label -> list of file names of that label (built from ``dataset`` when None).
        height: output height of pose-guided images and maps.
        width: output width of pose-guided images and maps.
        pose_aug: ``--pose-aug``: ``'no'``; ``'gauss'`` draws sigma per item uniformly from
            {0.8, 1, 1.2} x sigma (the release's {4, 5, 6} at 256 rows); ``'erase'`` zeroes
            the map of one keypoint index drawn uniformly from 0..17.
        sigma: Gaussian standard deviation of the pose maps in pixels; None: :func:`pose_sigma`
            of ``height`` (5 at 256 rows, 1.25 at 64).
        draw_maps: pose-guided items carry their maps (True) or the keypoints to draw them from.

    Raises:
        ConfigError: ``pose_aug`` is not one of no, gauss, erase.
    """

    def __init__(self, dataset: Sequence[Tuple[str, int, int]], root: Optional[PathLike] = None,
                 transform: Optional[Any] = None, with_pose: bool = False,
                 pose_root: Optional[PathLike] = None,
                 pid_imgs: Optional[Mapping[int, Sequence[str]]] = None, height: int = 256,
                 width: int = 128, pose_aug: str = "no", sigma: Optional[float] = None,
                 draw_maps: bool = True) -> None:
        if pose_aug not in POSE_AUG_CHOICES:
            raise ConfigError(f"--pose-aug: invalid choice {pose_aug!r} (choose from {', '.join(POSE_AUG_CHOICES)})")
        if with_pose and pose_root is None:
            raise ValueError("Preprocessor(with_pose=True) needs pose_root")
        self.dataset = dataset
        self.root = root
        self.transform = transform
        self.with_pose = with_pose
        self.pose_root = pose_root
        self.height = height
        self.width = width
        self.pose_aug = pose_aug
        self.draw_maps = draw_maps
        self.sigma = pose_sigma(height) if sigma is None else float(sigma)
        if with_pose and pid_imgs is None:
            built: Dict[int, List[str]] = {}
            for fname, pid, _ in dataset:
                built.setdefault(pid, []).append(fname)
            pid_imgs = built
        self.pid_imgs = pid_imgs
        self.origin_transform = T.Compose([
            RectScale(height, width), RandomSizedEarser(), T.RandomHorizontalFlip(), T.ToTensor(), normalize(),
        ])
        self.target_transform = T.Compose([RectScale(height, width), T.ToTensor(), normalize()])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Union[int, Sequence[int]]) -> Any:
        """The item of ``index``, or a list of items when ``index`` is a tuple or list."""
        if isinstance(index, (tuple, list)):
            return [self._get_single(int(i)) for i in index]
        return self._get_single(int(index))

    def _get_single(self, index: int) -> Any:
        if self.with_pose:
            return self._get_pose_item(index)
        fname, pid, cam = self.dataset[index]
        img = read_image(self._image_path(fname))
        if self.transform is not None:
            img = self.transform(img)
        return img, fname, pid, cam

    def _image_path(self, fname: str) -> str:
        return fname if self.root is None else os.path.join(self.root, fname)

    def _pose_path(self, fname: str) -> str:
        stem = os.path.splitext(os.path.basename(fname))[0]
        return os.path.join(self.pose_root, stem + ".txt")

    def _pick_target(self, fname: str, pid: int) -> str:
        """A random other file of label ``pid`` (``fname`` itself when it is the only one)."""
        try:
            files = self.pid_imgs[pid]
        except KeyError:
            raise DatasetError(f"{fname}: label {pid} has no entry in the label -> images map") from None
        others = [f for f in files if f != fname]
        return random.choice(others) if others else fname

    def _get_pose_item(self, index: int) -> Dict[str, Any]:
        fname, pid, _ = self.dataset[index]
        origin = self.origin_transform(read_image(self._image_path(fname)))

        target_fname = self._pick_target(fname, pid)
        target_img = read_image(self._image_path(target_fname))
        img_w, img_h = target_img.size
        landmarks = scale_landmarks(read_pose_file(self._pose_path(target_fname)), (img_h, img_w),
                                    (self.height, self.width))
        target = self.target_transform(target_img)

        sigma = self.sigma
        if self.pose_aug == "gauss":
            sigma = random.choice(tuple(sigma * f for f in _GAUSS_FACTORS))
        elif self.pose_aug == "erase":
            landmarks[random.randrange(len(landmarks))] = -1
        flip = random.random() < 0.5
        if flip:
            target = torch.flip(target, dims=[-1])
        item = {"origin": origin, "target": target, "pid": int(pid)}
        if not self.draw_maps:
            item.update(keypoints=torch.from_numpy(landmarks), sigma=torch.tensor(sigma, dtype=torch.float64),
                        flip=torch.tensor(flip))
            return item
        posemap = draw_pose_maps(torch.from_numpy(landmarks)[None], self.height, self.width, sigma)[0]
        item["posemap"] = torch.flip(posemap, dims=[-1]) if flip else posemap
        return item


def batch_pose_maps(half: Mapping[str, torch.Tensor], height: int, width: int,
                    device: Union[torch.device, str] = "cpu") -> torch.Tensor:
    """The ``(B, 18, height, width)`` pose maps of a collated batch of pose-guided items, on ``device``.

    Items of ``Preprocessor(draw_maps=False)`` carry their keypoints; their maps are drawn here in
    one call (:func:`draw_pose_maps`), equal to the maps the items would otherwise carry.
    """
    if "posemap" in half:
        return half["posemap"].to(device)
    return draw_pose_maps(half["keypoints"].to(device), height, width, half["sigma"], flip=half["flip"])
