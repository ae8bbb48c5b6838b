"""Reading images with clear errors."""
from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from reid.errors import DatasetError, first_line
from reid.utils.osutils import PathLike


def read_image(path: PathLike) -> Image.Image:
    """Read an image file as an RGB PIL image (grayscale, CMYK, palette and RGBA are converted).

    Raises:
        DatasetError: the file is missing, truncated or not an image.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: unreadable image ({first_line(e)})") from None
