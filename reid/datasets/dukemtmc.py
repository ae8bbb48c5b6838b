"""DukeMTMC-reID, prepared with ``scripts/prepare_dataset.py dukemtmc``."""
from __future__ import annotations

from typing import Union

from reid.utils.data.dataset import Dataset
from reid.utils.osutils import PathLike


class DukeMTMC(Dataset):
    """DukeMTMC-reID (8 cameras, 702 training / 1110 test identities).

    Args:
        root: the prepared folder, e.g. ``datasets/dukemtmc``.
        split_id: the split to load (the dataset has one).
        num_val: validation identities taken from trainval (count or fraction).
        protocol: ``'openreid'`` (the release) or ``'official'`` (query folder vs bounding_box_test).
        require_poses: also require the ``poses/`` folder (FD-GAN training).
    """

    name = "dukemtmc"

    def __init__(self, root: PathLike, split_id: int = 0, num_val: Union[int, float] = 100,
                 protocol: str = "openreid", require_poses: bool = False) -> None:
        super().__init__(root, split_id=split_id)
        self.check_integrity(require_poses=require_poses)
        self.load(num_val, protocol=protocol)
