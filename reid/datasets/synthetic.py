"""The synthetic pedestrian dataset made by ``scripts/make_synthetic_dataset.py``."""
from __future__ import annotations

from typing import Union

from reid.utils.data.dataset import Dataset
from reid.utils.osutils import PathLike

#: Default validation share: a fraction, so that the small demo sizes keep enough training ids
#: (10 of the 50 trainval identities at the default 100 identities).
SYNTHETIC_NUM_VAL = 0.2


class Synthetic(Dataset):
    """Rendered pedestrians with exact pose files (see :mod:`reid.datasets.synthetic_render`).

    Args:
        root: the folder made by ``scripts/make_synthetic_dataset.py``, e.g. ``datasets/synthetic``.
        split_id: the split to load (the dataset has one).
        num_val: validation identities taken from trainval; the default 0.2 is a fraction (the
            benchmarks' 100 would exceed the small default trainval set).
        protocol: ``'openreid'`` or ``'official'`` (one query image per camera and test identity).
        require_poses: also require the ``poses/`` folder (FD-GAN training).
    """

    name = "synthetic"

    def __init__(self, root: PathLike, split_id: int = 0, num_val: Union[int, float] = SYNTHETIC_NUM_VAL,
                 protocol: str = "openreid", require_poses: bool = False) -> None:
        super().__init__(root, split_id=split_id)
        self.check_integrity(require_poses=require_poses)
        self.load(num_val, protocol=protocol)
