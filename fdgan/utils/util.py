"""Image helpers for the training visuals: tensors to uint8 arrays, and PNG files.

Every image tensor the FD-GAN model handles lives in the ImageNet-normalised space: the input and
target images are normalised by the data pipeline, and the generator, although its last layer is a
Tanh, is trained with an L1 loss against the normalised target, so its output approximates a
normalised image too (clipped to [-1, 1]). All three are therefore shown by undoing the ImageNet
normalisation, as the release does. The pose map is an 18-channel stack of peaks in [0, 1] and is
shown as the grey image of its channel sum clipped at 1. :func:`save_image` (PNG files) is
:func:`reid.utils.data.images.save_image`.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from reid.utils.data.images import save_image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "tensor2im", "posemap2im", "save_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ArrayOrTensor = Union[torch.Tensor, np.ndarray]


def _first_image(image: ArrayOrTensor, name: str) -> np.ndarray:
    """Return the first image of a CHW or NCHW tensor/array as a float64 CHW numpy array."""
    if isinstance(image, torch.Tensor):
        array = image.detach().to("cpu", torch.float64).numpy()
    else:
        array = np.asarray(image, dtype=np.float64)
    if array.ndim == 4:
        if array.shape[0] == 0:
            raise ValueError(f"{name}: the batch is empty")
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a CHW or NCHW tensor, got shape {tuple(array.shape)}")
    return array


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to uint8 by rounding; NaN becomes 0."""
    unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def tensor2im(
    image_tensor: ArrayOrTensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Turn the first image of a normalised batch into a displayable uint8 array.

    Args:
        image_tensor: a 3 x H x W or N x 3 x H x W tensor (or array) normalised as
            ``(x - mean) / std`` per channel; only the first image of a batch is used.
        mean: the per-channel mean the image was normalised with (ImageNet by default).
        std: the per-channel standard deviation the image was normalised with.

    Returns:
        An H x W x 3 uint8 array: ``x * std + mean`` clipped to [0, 1] and scaled to 0..255.
    """
    image = _first_image(image_tensor, "tensor2im")
    if image.shape[0] != len(mean) or image.shape[0] != len(std):
        raise ValueError(
            f"tensor2im: image has {image.shape[0]} channels but mean/std have "
            f"{len(mean)}/{len(std)} values"
        )
    mean_arr = np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)
    std_arr = np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)
    image = image * std_arr + mean_arr
    return _to_uint8(image.transpose(1, 2, 0))


def posemap2im(posemap_tensor: ArrayOrTensor) -> np.ndarray:
    """Turn the first pose map of a batch into a grey uint8 image.

    Args:
        posemap_tensor: a K x H x W or N x K x H x W tensor (or array) of keypoint maps with
            values in [0, 1] (K = 18 for the COCO keypoints); only the first map of a batch is used.

    Returns:
        An H x W x 3 uint8 array whose three channels are equal: the sum over the K maps,
        clipped to [0, 1] and scaled to 0..255 (white where a keypoint is).
    """
    posemap = _first_image(posemap_tensor, "posemap2im")
    grey = _to_uint8(posemap.sum(axis=0))
    return np.repeat(grey[:, :, None], 3, axis=2)
