"""Metric-learning losses used to pre-train a backbone (the paper's stages use fdgan.losses)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet Loss").

    For every anchor, the farthest sample of its identity and the nearest sample of another
    identity in the batch (Euclidean distance) give ``max(0, d(a, p) - d(a, n) + margin)``; the
    mean over anchors is returned. Anchors without a positive or a negative in the batch count 0.

    Args:
        features: N x D feature vectors.
        labels: N identity labels.
        margin: the margin (0.3 as in "Bag of Tricks", Luo et al. 2019).
    """
    sq = features.pow(2).sum(1)
    # sqrt of a clamped square: finite gradients where two features coincide (the diagonal).
    dist = (sq[:, None] + sq[None, :] - 2 * features @ features.t()).clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    hardest_pos = dist.masked_fill(~same, float("-inf")).max(dim=1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(dim=1).values
    valid = torch.isfinite(hardest_pos) & torch.isfinite(hardest_neg) & (same.sum(1) > 1)
    losses = F.relu(hardest_pos - hardest_neg + margin)
    return torch.where(valid, losses, torch.zeros_like(losses)).mean()
