"""The base of every named dataset: open a prepared folder, check it, load a split."""
from __future__ import annotations

from typing import Optional, Union

from reid.utils.data.dataset import Dataset
from reid.utils.osutils import PathLike


class PreparedDataset(Dataset):
    """A folder made by ``scripts/prepare_dataset.py`` (or the synthetic renderer), loaded on creation.

    Args:
        root: the prepared folder, e.g. ``datasets/market1501``.
        split_id: the split to load.
        num_val: validation identities taken from trainval (count or fraction); None for the
            class's ``default_num_val``.
        protocol: ``'openreid'`` (the release) or ``'official'`` (query folder vs bounding_box_test).
        require_poses: also require the ``poses/`` folder (FD-GAN training).
    """

    #: validation identities when ``num_val`` is not given
    default_num_val: Union[int, float] = 100

    def __init__(self, root: PathLike, split_id: int = 0, num_val: Optional[Union[int, float]] = None,
                 protocol: str = "openreid", require_poses: bool = False) -> None:
        super().__init__(root, split_id=split_id)
        self.check_integrity(require_poses=require_poses)
        self.load(self.default_num_val if num_val is None else num_val, protocol=protocol)
