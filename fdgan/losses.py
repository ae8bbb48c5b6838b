"""Adversarial loss (spec section 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The release swaps the real and fake targets of a discriminator update with this probability
# when label smoothing is on; the caller draws it and passes ``flip=True``.
FLIP_PROBABILITY = 1.0 / 10001


class GANLoss(nn.Module):
    """Binary cross-entropy of discriminator logits against a constant real/fake target.

    ``loss = GANLoss(smooth)(logits, target_is_real, flip=False)`` is the mean over all
    elements of BCE(sigmoid(logits), target), computed from the logits (numerically safe).
    The target has the logits' shape and one value: 1.0 for real, 0.0 for fake; with
    ``smooth=True`` one scalar is drawn per call from torch's RNG (so ``torch.manual_seed``
    makes it reproducible): real U(0.7, 1.0), fake U(0.0, 0.3).

    Args:
        smooth: use smoothed random targets (``--smooth-label``; discriminator updates only,
            the generator's adversarial loss uses hard targets).
    """

    def __init__(self, smooth: bool = False) -> None:
        super().__init__()
        self.smooth = smooth

    def target_value(self, target_is_real: bool) -> float:
        """Return the target value of one call (draws a random value when smoothing)."""
        if not self.smooth:
            return 1.0 if target_is_real else 0.0
        u = float(torch.rand(()))
        return 0.7 + 0.3 * u if target_is_real else 0.3 * u

    def forward(self, logits: torch.Tensor, target_is_real: bool, flip: bool = False) -> torch.Tensor:
        """Return the scalar loss.

        Args:
            logits: discriminator outputs (any shape, no sigmoid applied).
            target_is_real: whether ``logits`` were computed on real data.
            flip: swap the real and fake targets (the release does so with probability
                :data:`FLIP_PROBABILITY` per discriminator update when smoothing).
        """
        value = self.target_value(bool(target_is_real) != bool(flip))
        target = torch.full_like(logits, value)
        return F.binary_cross_entropy_with_logits(logits, target)
