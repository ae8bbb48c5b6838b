"""Converters of the official downloads into the prepared open-reid layout (what open-reid's
dataset classes' ``download`` did; :mod:`reid.utils.data.dataset` reads it).

Each converter reads the download as it was fetched (a zip or tar archive, or the extracted
folder: the inner folder is found by its contents), writes ``images/`` (``PPPPPPPP_CC_NNNN.jpg``),
``meta.json`` and ``splits.json`` into ``<dst>.partial`` and renames that folder to ``dst`` at the
end. A re-run after an interruption resumes in ``<dst>.partial``: images written before are kept
(every file is written atomically, so a present file is complete).

On top of the release's keys, ``meta.json`` holds ``original_names`` (new file name -> where the
image came from in the download) and, for Market-1501, DukeMTMC-reID and generic folders, each
split holds ``official_query`` and ``official_gallery``: the images of the official query folder
and of the official gallery folder (junk, pid -1, removed), for the official protocol.

Modules: ``sources`` (reading the download), ``writing`` (the prepared folder and its resume),
``folders`` (Market-1501, DukeMTMC-reID, generic folders), ``cuhk03`` (``cuhk-03.mat``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from reid.datasets.converters.cuhk03 import convert_cuhk03, plan_cuhk03
from reid.datasets.converters.folders import (
    convert_dukemtmc,
    convert_generic,
    convert_market1501,
    plan_dukemtmc,
    plan_generic,
    plan_market1501,
    plan_named_folders,
)
from reid.datasets.converters.sources import IMAGE_EXTENSIONS, OFFICIAL_MD5, file_md5, find_inner_folder
from reid.datasets.converters.writing import JPEG_QUALITY, ConversionPlan, new_image_name
from reid.errors import ConfigError
from reid.utils.osutils import PathLike

__all__ = [
    "CONVERTERS", "IMAGE_EXTENSIONS", "JPEG_QUALITY", "OFFICIAL_MD5", "ConversionPlan", "convert", "convert_cuhk03",
    "convert_dukemtmc", "convert_generic", "convert_market1501", "file_md5", "find_inner_folder", "new_image_name",
    "plan_cuhk03", "plan_dukemtmc", "plan_generic", "plan_market1501", "plan_named_folders",
]


CONVERTERS: Dict[str, Callable[..., str]] = {
    "market1501": convert_market1501,
    "dukemtmc": convert_dukemtmc,
    "cuhk03": convert_cuhk03,
    "generic": convert_generic,
}


def convert(dataset: str, src: PathLike, dst: PathLike, **kwargs: Any) -> str:
    """Run the converter ``dataset`` (one of ``CONVERTERS``); extra keyword arguments go to it.

    Raises:
        ConfigError: an unknown converter name.
    """
    if dataset not in CONVERTERS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(sorted(CONVERTERS))}")
    return CONVERTERS[dataset](src, dst, **kwargs)
