"""DukeMTMC-reID, prepared with ``scripts/prepare_dataset.py dukemtmc``."""
from __future__ import annotations

from reid.datasets.base import PreparedDataset


class DukeMTMC(PreparedDataset):
    """DukeMTMC-reID (8 cameras, 702 training / 1110 test identities; one split); arguments as
    :class:`~reid.datasets.base.PreparedDataset`."""

    name = "dukemtmc"
