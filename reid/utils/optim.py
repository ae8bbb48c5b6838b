"""Optimiser kernels: PyTorch's fused SGD/Adam where the device has them, kept across resumes."""
from __future__ import annotations

import torch

# Device types for which this project uses ``fused=True`` (PyTorch has fused SGD and Adam there).
FUSED_DEVICE_TYPES = ("cpu", "cuda")
_KERNEL_FLAGS = ("fused", "foreach")


def fused_kwargs(device: torch.device | str, enabled: bool = True) -> dict:
    """Keyword arguments for ``torch.optim.SGD`` / ``Adam`` that pick the fused kernel on ``device``.

    The fused kernel updates every parameter of a group in one call instead of a Python loop over
    the parameters, with the loop's arithmetic up to rounding (it uses multiply-adds: about 1e-7
    relative per step).
    """
    return {"fused": True} if enabled and torch.device(device).type in FUSED_DEVICE_TYPES else {}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping the optimiser's own kernel choice.

    A saved state carries its writer's ``fused`` / ``foreach`` flags, and loading it would switch
    this process to them (a file written without fused kernels would silently slow it down, and one
    written with them could ask for a kernel this device lacks). The file decides the state
    (moments, step counts, learning rates); this process decides how to compute the update.
    """
    mine = optimizer.param_groups
    groups = state.get("param_groups")
    if isinstance(groups, list) and len(groups) == len(mine):
        groups = [{**saved, **{k: own[k] for k in _KERNEL_FLAGS if k in own}} if isinstance(saved, dict) else saved
                  for saved, own in zip(groups, mine)]
        state = {**state, "param_groups": groups}
    optimizer.load_state_dict(state)
