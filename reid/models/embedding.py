"""Verification head on a pair of feature vectors (the release's ``reid/models/embedding.py``,
``EltwiseSubEmbed``), and its square form folded into one weighted squared distance."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError

_NONLINEARITIES = ("square", "abs")


class EltwiseSubEmbed(nn.Module):
    """Score a pair of features from their element-wise difference.

    ``x = x1 - x2``, then ``x ** 2`` (``'square'``) or ``|x|`` (``'abs'``), then BatchNorm1d
    ``bn`` if enabled, then Linear ``classifier`` if enabled, otherwise the sum over features.

    Args:
        nonlinearity: ``'square'`` or ``'abs'``.
        use_batch_norm: apply BatchNorm1d (weight 1, bias 0 at start) to the difference.
        use_classifier: map to ``num_classes`` logits with a Linear layer (weight N(0, 0.001),
            bias 0); otherwise return the sum over features (one value per pair).
        num_features: size of the input features, i.e. the backbone's ``num_features``
            (2048 for ResNet-50, 512 for ResNet-18); needed by the BN and the classifier.
            The release hard-coded 2048; here the caller passes it.
        num_classes: number of logits: 2 for the verification head of E (index 1 = same
            identity), 1 for the identity discriminator Di.
    """

    def __init__(
        self,
        nonlinearity: str = "square",
        use_batch_norm: bool = False,
        use_classifier: bool = False,
        num_features: int = 0,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if nonlinearity not in _NONLINEARITIES:
            raise ConfigError(f"unknown nonlinearity {nonlinearity!r} (choices: {', '.join(_NONLINEARITIES)})")
        if (use_batch_norm or use_classifier) and num_features <= 0:
            raise ConfigError(f"num_features must be > 0 with batch norm or classifier (got {num_features})")
        if use_classifier and num_classes <= 0:
            raise ConfigError(f"num_classes must be > 0 with a classifier (got {num_classes})")
        self.nonlinearity = nonlinearity
        self.use_batch_norm = use_batch_norm
        self.use_classifier = use_classifier
        self.num_features = num_features
        self.num_classes = num_classes
        if use_batch_norm:
            self.bn = nn.BatchNorm1d(num_features)
            nn.init.ones_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)
        if use_classifier:
            self.classifier = nn.Linear(num_features, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Return N x num_classes logits (or N sums) for features ``x1``, ``x2`` (N x num_features).

        Under mixed precision (autocast) the head runs in float32 on float32 copies of the features:
        in bf16 the difference of two close features keeps almost no significant bits, and BatchNorm
        then divides that noise by a batch variance computed in bf16.
        """
        device_type = x1.device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self._head(x1.float(), x2.float())
        return self._head(x1, x2)

    def _head(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x = x1 - x2
        x = x.pow(2) if self.nonlinearity == "square" else x.abs()
        if self.use_batch_norm:
            x = self.bn(x)
        if self.use_classifier:
            return self.classifier(x)
        return x.sum(dim=1)


def default_embed_dist_fn(logits: torch.Tensor) -> torch.Tensor:
    """Probability of 'different identity' from the verification head's 2-way logits."""
    return F.softmax(logits, dim=1)[:, 0]


def folded_head(embed_model: nn.Module, embed_dist_fn: Callable[[torch.Tensor], torch.Tensor]
                ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(v, c)`` with ``embed_dist_fn(embed_model(q, g)) = sigmoid(sum_d v_d (q_d - g_d)^2 + c)``,
    or None when the head or the function has another form."""
    if embed_dist_fn is not default_embed_dist_fn or not isinstance(embed_model, EltwiseSubEmbed):
        return None
    if embed_model.training or embed_model.nonlinearity != "square":
        return None
    classifier = getattr(embed_model, "classifier", None)
    if classifier is None or classifier.weight.shape[0] != 2:
        return None
    weight = classifier.weight.detach().double()
    bias = classifier.bias.detach().double() if classifier.bias is not None else torch.zeros(2, dtype=torch.float64)
    dims = weight.shape[1]
    scale = torch.ones(dims, dtype=torch.float64)
    shift = torch.zeros(dims, dtype=torch.float64)
    bn = getattr(embed_model, "bn", None)
    if bn is not None:
        if not isinstance(bn, nn.BatchNorm1d) or bn.running_mean is None:
            return None
        ones, zeros = torch.ones(dims, dtype=torch.float64), torch.zeros(dims, dtype=torch.float64)
        gamma = bn.weight.detach().double() if bn.weight is not None else ones
        beta = bn.bias.detach().double() if bn.bias is not None else zeros
        scale = gamma * torch.rsqrt(bn.running_var.detach().double() + bn.eps)
        shift = beta - bn.running_mean.detach().double() * scale
    w = weight[0] - weight[1]
    return (w * scale).float(), (w @ shift + bias[0] - bias[1]).float()
