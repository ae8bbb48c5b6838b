"""CUHK03, prepared with ``scripts/prepare_dataset.py cuhk03``."""
from __future__ import annotations

from typing import Union

from reid.errors import ConfigError
from reid.utils.data.dataset import Dataset
from reid.utils.osutils import PathLike


class CUHK03(Dataset):
    """CUHK03 under the old protocol: 20 splits of 1367 trainval / 100 test identities, labeled and
    detected images mixed, 2 cameras.

    Args:
        root: the prepared folder, e.g. ``datasets/cuhk03``.
        split_id: which of the 20 splits to load.
        num_val: validation identities taken from trainval (count or fraction).
        protocol: only ``'openreid'``; CUHK03 has no official query/gallery folders.
        require_poses: also require the ``poses/`` folder (FD-GAN training).
    """

    name = "cuhk03"

    def __init__(self, root: PathLike, split_id: int = 0, num_val: Union[int, float] = 100,
                 protocol: str = "openreid", require_poses: bool = False) -> None:
        if protocol == "official":
            raise ConfigError("protocol 'official': CUHK03 has only the old (1367/100) protocol; "
                              "use the openreid protocol")
        super().__init__(root, split_id=split_id)
        self.check_integrity(require_poses=require_poses)
        self.load(num_val, protocol=protocol)
