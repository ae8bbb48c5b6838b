"""Checkpoint reading and writing.

Reads every checkpoint form the release wrote (``baseline.py``'s ``save_checkpoint`` and
``FDGANModel.save``): a plain state dict or
``{'state_dict': ...}``, with or without ``module.`` prefixes (DataParallel / DDP), with or
without BatchNorm ``num_batches_tracked`` entries (PyTorch 0.3 files lack them). Files are always
read with ``torch.load(weights_only=True)`` so a checkpoint from an untrusted source cannot run
code. Writes are atomic.
"""
from __future__ import annotations

import io
import os
import pickle
import warnings
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn

from reid.errors import CheckpointError, first_line
from reid.utils.osutils import PathLike, atomic_write

_PREFIXES = ("module.", "_orig_mod.")
# Lines of torch's weights_only error that give advice rather than say what was refused.
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def load_checkpoint(fpath: PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint file safely (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or would need to run
            arbitrary code to load.
    """
    fpath = os.fspath(fpath)
    if not os.path.isfile(fpath):
        raise CheckpointError(f"{fpath}: checkpoint file not found")
    try:
        with warnings.catch_warnings():
            # Files pickled with protocol > 2 draw a UserWarning; the unpickler below decides anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message opens with advice to pass weights_only=False (which would run the code);
        # report the sentence that says what was refused instead.
        reason = _refusal_reason(str(e))
        if "GLOBAL" in reason:
            raise CheckpointError(
                f"{fpath}: refused to load: the file holds objects other than tensors and plain "
                f"containers, which could run code on load ({reason})"
            ) from None
        raise CheckpointError(f"{fpath}: not a readable checkpoint (truncated, corrupt, or holding objects "
                              f"other than tensors and plain containers): {reason}") from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the unpickler raise
        raise CheckpointError(f"{fpath}: not a readable checkpoint (truncated or corrupt?): {first_line(e)}") from None


def _refusal_reason(text: str) -> str:
    """The sentence of torch's weights_only error that names what it refused."""
    for line in text.splitlines():
        i = line.find("nsupported")
        if i >= 1:
            start = line.rfind(": ", 0, i)  # drop a "WeightsUnpickler error: " lead
            sentence = line[start + 2 if start >= 0 else 0:].strip()
            return sentence.split(". ")[0].rstrip(".")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_TORCH_ADVICE)]
    return lines[0] if lines else "unsupported content"


def extract_state_dict(obj: Any, source: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """Return the state dict inside a loaded checkpoint with wrapper prefixes removed.

    Accepts a plain state dict or a dict holding one under ``'state_dict'``.
    """
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{source}: does not contain a state dict")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in obj.items():
        stripped = key
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if stripped.startswith(prefix):
                    stripped = stripped[len(prefix):]
                    changed = True
        out[stripped] = value
    return out


def copy_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, strict: bool = True, source: str = "checkpoint"
) -> nn.Module:
    """Copy ``state_dict`` into ``model`` (unwrapping DataParallel/DDP first).

    Missing ``num_batches_tracked`` buffers are tolerated (files from PyTorch 0.3), and so are the
    ``running_mean`` / ``running_var`` that PyTorch 0.3's ``InstanceNorm2d`` kept (a release
    generator or pose discriminator trained with ``--norm instance``): they are dropped where this
    model has an instance norm without running statistics, or the identity that stands in for one
    on a 1 x 1 map; such a stand-in is then switched to the release's output for one value (zeros,
    as PyTorch 0.3 computed it) and keeps the buffers. Any other
    missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError` naming them
    when ``strict``; otherwise those keys are skipped. A value that is not a tensor, or a tensor
    holding NaN or infinite numbers, is always a :class:`CheckpointError` (:func:`check_tensors`).
    """
    target = model.module if hasattr(model, "module") else model
    state_dict = extract_state_dict(state_dict, source)
    check_tensors(state_dict, source)
    _follow_release_single_value_norms(state_dict, target)
    state_dict = _drop_instance_norm_statistics(state_dict, target)
    own = target.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    if strict and (missing or unexpected or mismatched):
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch {_short(mismatched)}")
        raise CheckpointError(
            f"{source}: does not fit {type(target).__name__} (wrong network or options?): " + "; ".join(parts)
        )
    merged = dict(own)
    bad = set(unexpected) | {m.split(" ")[0] for m in mismatched}
    for k, v in state_dict.items():
        if k not in bad:
            merged[k] = v
    target.load_state_dict(merged, strict=True)
    return model


def check_tensors(state_dict: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the first entry of ``state_dict`` that is
    not a tensor or holds a NaN or infinite number (weights that would give NaN features)."""
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: '{key}' holds a {type(value).__name__}, not a tensor "
                                  "(not a state dict of weights?)")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: tensor '{key}' holds {bad} NaN or infinite value(s) "
                                  "(the run that wrote it diverged?)")


def _follow_release_single_value_norms(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Switch each stand-in for an instance norm of one value (``stands_in_for_instance_norm``, e.g.
    :class:`fdgan.networks.SingleValueInstanceNorm`) to the release's zeros where ``state_dict``
    holds PyTorch 0.3's instance-norm buffers for it."""
    for name, m in model.named_modules():
        if getattr(m, "stands_in_for_instance_norm", False) and \
                f"{name}.running_mean" in state_dict and f"{name}.running_var" in state_dict:
            m.follow_release()


def _drop_instance_norm_statistics(
    state_dict: "OrderedDict[str, torch.Tensor]", model: nn.Module
) -> "OrderedDict[str, torch.Tensor]":
    """``state_dict`` without the running statistics of ``model``'s statistics-free instance norms."""
    stat_free = {
        name for name, m in model.named_modules()
        if (isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats)
        or isinstance(m, nn.Identity)
    }
    own = model.state_dict()

    def release_only(key: str) -> bool:
        module, _, buffer = key.rpartition(".")
        return buffer in ("running_mean", "running_var") and module in stat_free and key not in own

    return OrderedDict((k, v) for k, v in state_dict.items() if not release_only(k))


def save_checkpoint(state: Any, fpath: PathLike, is_best: bool = False, best_name: str = "model_best.pth.tar") -> None:
    """Write ``state`` with ``torch.save`` atomically; with ``is_best`` also to ``best_name`` beside it.

    The best copy is written first, so an interruption between the two writes leaves a resume
    file that redoes the epoch rather than one that claims a best model that was never written.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    if is_best:
        best = os.path.join(os.path.dirname(os.fspath(fpath)), best_name)
        with atomic_write(best, "wb") as f:
            f.write(buf.getbuffer())
    with atomic_write(fpath, "wb") as f:
        f.write(buf.getbuffer())


def _short(items: list, n: int = 5) -> str:
    head = ", ".join(items[:n])
    return f"[{head}{', ...' if len(items) > n else ''}] ({len(items)} in all)"
