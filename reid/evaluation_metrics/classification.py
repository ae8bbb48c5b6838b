"""Classification metric: precision@k of a batch of class scores."""
from __future__ import annotations

from typing import Any, List, Sequence

import torch

__all__ = ["accuracy"]


def _as_tensor(x: Any) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def accuracy(output: Any, target: Any, topk: Sequence[int] = (1,)) -> List[float]:
    """Fraction of samples whose target class is among the k highest scores, for each k.

    Args:
        output: (batch, num_classes) scores (tensor or array); higher is more likely.
        target: (batch,) integer class of each sample.
        topk: the values of k.

    Returns:
        One float in [0, 1] per entry of ``topk``. Equal scores are ordered as ``torch.topk``
        orders them.
    """
    output, target = _as_tensor(output), _as_tensor(target)
    if output.dim() != 2:
        raise ValueError(f"output must be 2-D (batch x classes), got shape {tuple(output.shape)}")
    batch, num_classes = output.shape
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(f"target must be 1-D of length {batch}, got shape {tuple(target.shape)}")
    if batch == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    ks = [int(k) for k in topk]
    if not ks or min(ks) < 1 or max(ks) > num_classes:
        raise ValueError(f"topk values must lie in 1..{num_classes}, got {list(topk)}")
    _, pred = output.topk(max(ks), dim=1, largest=True, sorted=True)
    hit = pred.eq(target.to(pred.device).view(-1, 1))  # (batch, maxk), at most one True per row
    hits_within = hit.cumsum(dim=1).sum(dim=0).double()  # samples hit within the first k, per k
    return [float(hits_within[k - 1]) / batch for k in ks]
