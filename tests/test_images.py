"""reid.utils.data.images: which files are images, listing them (flat and recursive), to_pil."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from reid.errors import DatasetError
from reid.utils.data.images import IMAGE_EXTENSIONS, list_images, to_pil


def test_list_images_is_sorted_and_skips_other_files(tmp_path) -> None:
    for name in ["b.jpg", "a.PNG", "c.jpeg", "notes.txt", ".hidden.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()  # a folder named like an image
    paths = list_images(tmp_path)
    assert [os.path.basename(p) for p in paths] == ["a.PNG", "b.jpg", "c.jpeg"]
    assert paths[0] == os.path.join(str(tmp_path), "a.PNG")  # flat listing: full paths


def test_list_images_recursive_gives_relative_names(tmp_path) -> None:
    (tmp_path / "cam2" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ["b.png", "cam2/c.TIF", "cam2/deeper/d.webp", ".hidden/x.png", "cam2/notes.txt"]:
        (tmp_path / rel).write_bytes(b"x")
    assert list_images(tmp_path, recursive=True) == ["b.png", "cam2/c.TIF", "cam2/deeper/d.webp"]
    assert list_images(tmp_path) == [os.path.join(str(tmp_path), "b.png")]


def test_list_images_errors(tmp_path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("x")
    for recursive in (False, True):
        with pytest.raises(DatasetError, match="no image files"):
            list_images(tmp_path, recursive=recursive)


def test_image_extensions_are_lower_case_suffixes() -> None:
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp"} <= set(IMAGE_EXTENSIONS)


def test_to_pil_accepts_paths_pil_and_arrays(tmp_path) -> None:
    array = np.zeros((4, 2, 3), np.uint8)
    array[1, 0] = (200, 10, 30)
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    grey = Image.fromarray(array[:, :, 0])  # mode 'L'
    for image in (str(path), path, Image.fromarray(array), array):
        out = to_pil(image)
        assert out.mode == "RGB" and out.size == (2, 4)
        np.testing.assert_array_equal(np.asarray(out), array)
    np.testing.assert_array_equal(np.asarray(to_pil(grey))[1, 0], [200, 200, 200])


def test_to_pil_errors(tmp_path) -> None:
    with pytest.raises(DatasetError, match="source 3: expected an H x W x 3 uint8 array"):
        to_pil(np.zeros((4, 2, 3), np.float32), "source 3")
    with pytest.raises(DatasetError, match="expected an H x W x 3"):
        to_pil(np.zeros((4, 2), np.uint8))
    with pytest.raises(DatasetError, match="got list"):
        to_pil([1, 2, 3])
    with pytest.raises(DatasetError, match="image file not found"):
        to_pil(tmp_path / "missing.png")
