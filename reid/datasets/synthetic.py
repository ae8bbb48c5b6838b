"""The synthetic pedestrian dataset made by ``scripts/make_synthetic_dataset.py``."""
from __future__ import annotations

from reid.datasets.base import PreparedDataset

#: Default validation share: a fraction, so that the small demo sizes keep enough training ids
#: (10 of the 50 trainval identities at the default 100 identities).
SYNTHETIC_NUM_VAL = 0.2


class Synthetic(PreparedDataset):
    """Rendered pedestrians with exact pose files (see :mod:`reid.datasets.synthetic_render`); one
    split; the official protocol has one query image per camera and test identity. Arguments as
    :class:`~reid.datasets.base.PreparedDataset`; ``num_val`` defaults to the fraction 0.2 (the
    benchmarks' 100 would exceed the small default trainval set)."""

    name = "synthetic"
    default_num_val = SYNTHETIC_NUM_VAL
