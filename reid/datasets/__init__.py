"""Dataset factory: ``names()`` for argparse choices and ``create(name, root, ...)``."""
from __future__ import annotations

from typing import Any, Dict, List, Type

from reid.datasets.cuhk03 import CUHK03
from reid.datasets.dukemtmc import DukeMTMC
from reid.datasets.market1501 import Market1501
from reid.datasets.synthetic import Synthetic
from reid.errors import ConfigError
from reid.utils.data.dataset import Dataset
from reid.utils.osutils import PathLike

__all__ = ["CUHK03", "DukeMTMC", "Market1501", "Synthetic", "create", "names"]

_FACTORY: Dict[str, Type[Dataset]] = {
    "market1501": Market1501,
    "dukemtmc": DukeMTMC,
    "cuhk03": CUHK03,
    "synthetic": Synthetic,
}


def names() -> List[str]:
    """The dataset names ``create`` accepts, sorted."""
    return sorted(_FACTORY)


def create(name: str, root: PathLike, *args: Any, **kwargs: Any) -> Dataset:
    """Open the prepared dataset ``name`` in folder ``root`` and load a split.

    Args:
        name: one of :func:`names`.
        root: the dataset's own folder (e.g. ``datasets/market1501``).
        *args, **kwargs: passed to the dataset class: ``split_id``, ``num_val``, ``protocol``,
            ``require_poses``.

    Raises:
        ConfigError: an unknown name.
        DatasetError: the folder is missing or malformed.
    """
    if name not in _FACTORY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(names())}")
    return _FACTORY[name](root, *args, **kwargs)
