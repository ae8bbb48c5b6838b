"""Market-1501, prepared with ``scripts/prepare_dataset.py market1501``."""
from __future__ import annotations

from reid.datasets.base import PreparedDataset


class Market1501(PreparedDataset):
    """Market-1501 (6 cameras, 751 training / 750 test identities plus distractors; one split);
    arguments as :class:`~reid.datasets.base.PreparedDataset`."""

    name = "market1501"
