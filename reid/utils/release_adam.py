"""Adam as PyTorch 0.3 computed it, the update behind the release's G (and Stage III E)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch


class ReleaseAdam(torch.optim.Adam):
    """``torch.optim.Adam`` with PyTorch 0.3's placement of ``eps``.

    PyTorch 0.3 updated ``p -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)``; modern
    Adam divides by ``sqrt(v) / sqrt(1 - beta2^t) + eps``, so its ``eps`` acts ``sqrt(1 - beta2^t)``
    times smaller (31.6x at ``t = 1`` with ``beta2 = 0.999``). Both are the same update once ``eps`` is
    replaced by ``eps / sqrt(1 - beta2^t)``, which this class does around each step, so the fused and
    foreach kernels still apply. The saved state is that of ``torch.optim.Adam`` (``eps`` as given),
    and a resume continues with each parameter's own step count ``t``.

    Takes the arguments of ``torch.optim.Adam``.
    """

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # The step number t each parameter's update is about to use; parameters that skipped some
        # steps (no gradient) have their own, so one kernel call is made per distinct t.
        next_t: dict[int, list[torch.Tensor]] = {}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p, t in zip(params, _next_steps([self.state.get(p, {}).get("step") for p in params])):
                next_t.setdefault(t, []).append(p)
        if len(next_t) > 1:
            grads = {p: p.grad for ps in next_t.values() for p in ps}
        base_eps = [group["eps"] for group in self.param_groups]
        try:
            for t, params in next_t.items():
                if len(next_t) > 1:
                    chosen = set(params)
                    for p, g in grads.items():
                        p.grad = g if p in chosen else None
                for group, eps in zip(self.param_groups, base_eps):
                    group["eps"] = eps / math.sqrt(1.0 - group["betas"][1] ** t)
                super().step()
        finally:
            for group, eps in zip(self.param_groups, base_eps):
                group["eps"] = eps
            if len(next_t) > 1:
                for p, g in grads.items():
                    p.grad = g
        return loss


def _next_steps(steps: list) -> list[int]:
    """``step + 1`` for each saved step count (a tensor, a number or None for a fresh parameter)."""
    out = [1] * len(steps)
    tensors = [(i, s) for i, s in enumerate(steps) if isinstance(s, torch.Tensor)]
    for i, s in enumerate(steps):
        if s is not None and not isinstance(s, torch.Tensor):
            out[i] = int(s) + 1
    if tensors:
        # One host transfer for all counts (they live on the parameters' device with fused kernels).
        device = tensors[0][1].device
        values = torch.stack([s.detach().reshape(()).to(device, torch.float64) for _, s in tensors]).tolist()
        for (i, _), v in zip(tensors, values):
            out[i] = int(v) + 1
    return out
