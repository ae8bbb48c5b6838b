"""Adversarial loss (the release's ``fdgan/losses.py``, ``GANLoss``)."""
from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError

# The release swaps the real and fake targets of a discriminator update with this probability
# when label smoothing is on; the caller draws it and passes ``flip=True``.
FLIP_PROBABILITY = 1.0 / 10001

#: PyTorch 0.3's BCELoss adds this to the probabilities inside both logarithms.
RELEASE_BCE_EPS = 1e-12

GAN_LOSS_MODES = ("release", "logits")


class _ReleaseBCE(torch.autograd.Function):
    """PyTorch 0.3's ``BCELoss`` (mean): the loss and the gradient its THNN kernel returned.

    loss = mean(-(t log(x + eps) + (1 - t) log(1 - x + eps))), accumulated in float64 as the
    old kernel did; d loss / dx = -(t - x) / ((1 - x + eps) (x + eps)) / n, which differs from the
    loss's exact derivative by eps (1 - 2t) in the numerator.
    """

    @staticmethod
    def forward(ctx: Any, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, t = probs.double(), target.double()
        ctx.save_for_backward(x, t)
        ctx.dtype = probs.dtype
        eps = RELEASE_BCE_EPS
        loss = -(t * torch.log(x + eps) + (1 - t) * torch.log(1 - x + eps))
        return loss.mean().to(probs.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[torch.Tensor, None]:
        x, t = ctx.saved_tensors
        eps = RELEASE_BCE_EPS
        grad = -(t - x) / ((1 - x + eps) * (x + eps)) * (grad_output.double() / x.numel())
        return grad.to(ctx.dtype), None


class GANLoss(nn.Module):
    """Binary cross-entropy of discriminator logits against a constant real/fake target.

    ``loss = GANLoss(smooth, mode)(logits, target_is_real, flip=False)`` is a scalar, the mean over
    all elements. The target has the logits' shape and one value: 1.0 for real, 0.0 for fake; with
    ``smooth=True`` one scalar is drawn per call from torch's RNG (so ``torch.manual_seed`` makes
    it reproducible): real U(0.7, 1.0), fake U(0.0, 0.3).

    Args:
        smooth: use smoothed random targets (``--smooth-label``; discriminator updates only,
            the generator's adversarial loss uses hard targets).
        mode: ``"release"`` (default): the release's sigmoid followed by PyTorch 0.3's BCELoss with
            its epsilon 1e-12, values and gradients as the paper's code had them, also once the
            float32 sigmoid saturates (|logit| >~ 17: the loss caps near 27.6 and the gradient
            vanishes). ``"logits"``: ``binary_cross_entropy_with_logits``, which keeps a gradient
            of magnitude 1 in saturation.
    """

    def __init__(self, smooth: bool = False, mode: str = "release") -> None:
        super().__init__()
        if mode not in GAN_LOSS_MODES:
            raise ConfigError(f"--gan-loss: unknown mode {mode!r} (choose from {', '.join(GAN_LOSS_MODES)})")
        self.smooth = smooth
        self.mode = mode

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
        if self.mode == "logits":
            return F.binary_cross_entropy_with_logits(logits, target)
        return _ReleaseBCE.apply(torch.sigmoid(logits), target)
