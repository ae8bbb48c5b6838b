"""Image files: which names count as images, reading, listing, conversion to PIL, and PNG writing.

Torch-free: it is imported by the pose estimator's environment too.
"""
from __future__ import annotations

import os
from typing import List, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from reid.errors import DatasetError, first_line
from reid.utils.osutils import PathLike, atomic_write

__all__ = ["IMAGE_EXTENSIONS", "ImageInput", "read_image", "list_images", "to_pil", "save_image"]

#: File name endings (lower case) that every tool of the project treats as images.
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


# PIL modes of 16-bit (and 32-bit integer) grayscale pixels, e.g. a 16-bit PNG; PIL's own
# conversion to RGB clips them at 255, which turns nearly every pixel white.
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _WIDE_GRAY_MODES:
        gray = np.asarray(img, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return img.convert("RGB")


def read_image(path: PathLike) -> Image.Image:
    """Read an image file as an RGB PIL image (grayscale, 16-bit grayscale, CMYK, palette and RGBA
    are converted).

    Raises:
        DatasetError: the file is missing, truncated or not an image.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: unreadable image ({first_line(e)})") from None


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: PathLike, recursive: bool = False) -> List[str]:
    """The image files of ``folder``, sorted.

    Images are files whose name ends in one of :data:`IMAGE_EXTENSIONS` (any case); hidden files
    and folders (names starting with '.') are skipped.

    Args:
        folder: the folder to list.
        recursive: False: the images directly inside ``folder``, as paths (``folder`` joined with
            the name). True: every image below ``folder``, as '/'-separated paths relative to it.

    Raises:
        DatasetError: ``folder`` is not a folder, or holds no image.
    """
    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: image folder not found")
    if recursive:
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")
                      for n in filenames if _is_image_name(n)]
    else:
        found = [os.path.join(root, n) for n in os.listdir(root)
                 if _is_image_name(n) and os.path.isfile(os.path.join(root, n))]
    if not found:
        raise DatasetError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return sorted(found)


def to_pil(image: ImageInput, what: str = "image") -> Image.Image:
    """An RGB PIL image from a path, a PIL image (converted) or an H x W x 3 uint8 array.

    Args:
        image: the image.
        what: how error messages name it (e.g. ``'source 2'``).

    Raises:
        DatasetError: an unreadable file, an array of another shape or dtype, or another type.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else _to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DatasetError(
                f"{what}: expected an H x W x 3 uint8 array, got shape {image.shape} dtype {image.dtype}"
            )
        return Image.fromarray(np.ascontiguousarray(image))
    raise DatasetError(f"{what}: expected a path, PIL image or uint8 array, got {type(image).__name__}")


def save_image(image: np.ndarray, path: PathLike) -> None:
    """Write an image array to ``path`` as PNG, atomically.

    Args:
        image: an H x W x 3 (RGB) or H x W (grey) uint8 array.
        path: the destination file; its folder is created if missing. The file is always PNG,
            whatever its extension.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"save_image: expected a uint8 array, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"save_image: expected an HxW or HxWx3 array, got shape {array.shape}")
    picture = Image.fromarray(np.ascontiguousarray(array))
    with atomic_write(path, "wb") as f:
        picture.save(f, format="PNG")
