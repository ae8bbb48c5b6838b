"""CUHK03, prepared with ``scripts/prepare_dataset.py cuhk03``."""
from __future__ import annotations

from typing import Optional, Union

from reid.datasets.base import PreparedDataset
from reid.errors import ConfigError
from reid.utils.osutils import PathLike


class CUHK03(PreparedDataset):
    """CUHK03 under the old protocol: 20 splits of 1367 trainval / 100 test identities, labeled and
    detected images mixed, 2 cameras. Arguments as :class:`~reid.datasets.base.PreparedDataset`;
    ``split_id`` chooses one of the 20 splits and ``protocol`` must be ``'openreid'`` (CUHK03 has no
    official query/gallery folders).
    """

    name = "cuhk03"

    def __init__(self, root: PathLike, split_id: int = 0, num_val: Optional[Union[int, float]] = None,
                 protocol: str = "openreid", require_poses: bool = False) -> None:
        if protocol == "official":
            raise ConfigError("protocol 'official': CUHK03 has only the old (1367/100) protocol; "
                              "use the openreid protocol")
        super().__init__(root, split_id=split_id, num_val=num_val, protocol=protocol, require_poses=require_poses)
