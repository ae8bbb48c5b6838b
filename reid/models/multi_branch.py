"""Two-branch network with shared backbone weights (the release's ``reid/models/multi_branch.py``, ``SiameseNet``)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class SiameseNet(nn.Module):
    """Run one backbone on both images of a pair and score the pair with an embedding head.

    Args:
        base_model: the backbone, e.g. ``reid.models.create('resnet50', cut_at_pooling=True)``;
            its weights are shared by both branches.
        embed_model: a pair head, e.g. :class:`reid.models.embedding.EltwiseSubEmbed`, called as
            ``embed_model(f1, f2)``.
    """

    def __init__(self, base_model: nn.Module, embed_model: nn.Module) -> None:
        super().__init__()
        self.base_model = base_model
        self.embed_model = embed_model

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(f1, f2, embed_model(f1, f2))`` with ``f = base_model(x)`` for images ``x1``, ``x2``."""
        f1 = self.base_model(x1)
        f2 = self.base_model(x2)
        return f1, f2, self.embed_model(f1, f2)
