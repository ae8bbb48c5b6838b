"""Mixed precision of the training steps (``--amp`` / ``--amp-dtype``)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch

from reid.errors import ConfigError

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class MixedPrecision:
    """Autocast settings of the training steps (``--amp``); the default is plain fp32.

    Attributes:
        enabled: run the forward passes and losses under ``torch.autocast``.
        device_type: ``'cuda'`` or ``'cpu'`` (the autocast device).
        dtype: the low-precision type, ``torch.float16`` or ``torch.bfloat16``.
    """

    enabled: bool = False
    device_type: str = "cpu"
    dtype: torch.dtype = torch.bfloat16

    def autocast(self) -> ContextManager:
        """A context in which the forward pass runs in mixed precision (a no-op when disabled)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def uses_grad_scaler(self) -> bool:
        """fp16 needs loss scaling (its range underflows small gradients); bf16 does not."""
        return self.enabled and self.dtype == torch.float16

    def grad_scaler(self) -> "torch.amp.GradScaler":
        """A GradScaler, enabled only for fp16 (disabled it passes losses and steps through unchanged)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_grad_scaler)


def resolve_mixed_precision(amp: bool, amp_dtype: Optional[str], device: torch.device) -> MixedPrecision:
    """Map ``--amp`` / ``--amp-dtype`` to :class:`MixedPrecision` for ``device``.

    Args:
        amp: mixed precision on.
        amp_dtype: ``'fp16'``, ``'bf16'`` or None (fp16 on CUDA, bf16 on CPU).
        device: the training device.

    Raises:
        ConfigError: ``--amp-dtype`` without ``--amp``, an unknown type, fp16 on CPU, or bf16 on a
            GPU without bf16 support.
    """
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise ConfigError(f"--amp-dtype {amp_dtype}: expected one of {', '.join(AMP_DTYPES)}")
    if not amp:
        if amp_dtype is not None:
            raise ConfigError(f"--amp-dtype {amp_dtype} needs --amp")
        return MixedPrecision(enabled=False, device_type=device.type)
    if device.type == "cuda":
        name = amp_dtype or "fp16"
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--amp-dtype bf16: this GPU has no bfloat16 support (use fp16)")
    elif device.type == "cpu":
        name = amp_dtype or "bf16"
        if name != "bf16":
            raise ConfigError(f"--amp-dtype {name}: on CPU --amp runs in bf16 only (fp16 needs CUDA)")
    else:
        raise ConfigError(f"--amp: unsupported device {device}")
    return MixedPrecision(enabled=True, device_type=device.type, dtype=AMP_DTYPES[name])
