"""Network files that the release (PyTorch 0.3) can load.

PyTorch 0.3 reads only the legacy (non-zip) serialization, rebuilds tensors with
``torch._utils._rebuild_tensor`` (files of PyTorch >= 0.4 name ``_rebuild_tensor_v2``, which it
lacks), has no 0-dimensional tensors, and its strict ``load_state_dict`` rejects keys it does not
know, such as BatchNorm's ``num_batches_tracked``. Its ``InstanceNorm2d`` kept ``running_mean`` /
``running_var`` buffers, which it requires in turn.
"""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any, Mapping

import torch

from reid.errors import CheckpointError
from reid.utils.osutils import PathLike, atomic_write
from reid.utils.serialization import extract_state_dict

# Element types PyTorch 0.3 had storages for; other floating types are written as float32.
_RELEASE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16,
                   torch.int8, torch.uint8)


def release_state_dict(obj: Any, source: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """The state dict inside ``obj`` as the release saved it.

    Keys get the ``module.`` prefix of the release's DataParallel networks, ``num_batches_tracked``
    entries are dropped, and an instance-norm generator or pose discriminator (recognised by the
    convolution biases only ``--norm instance`` gives) gets PyTorch 0.3's instance-norm buffers
    (running mean 0, running variance 1) at each norm position.
    """
    state = extract_state_dict(obj, source)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key} is not a tensor")
        if value.dim() == 0:
            raise CheckpointError(f"{source}: entry {key} is a 0-dimensional tensor, which PyTorch 0.3 cannot hold")
        out[key] = value
    for name, channels in _instance_norm_positions(out).items():
        out.setdefault(f"{name}.running_mean", torch.zeros(channels))
        out.setdefault(f"{name}.running_var", torch.ones(channels))
    return OrderedDict((f"module.{k}", _release_tensor(v)) for k, v in out.items())


def _instance_norm_positions(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, int]":
    """Norm positions (module name -> channels) of an instance-norm G or Dp; empty for other networks."""
    out: "OrderedDict[str, int]" = OrderedDict()
    if "en_conv1.bias" in state:  # G: convolution biases only with instance norm
        for block in ("en_conv2", "en_conv3", "en_conv4", "en_conv5", "en_avg"):
            out[f"{block}.2"] = state[f"{block}.1.weight"].shape[0]
        for block in ("de_avg", "de_conv5", "de_conv4", "de_conv3", "de_conv2"):
            out[f"{block}.2"] = state[f"{block}.1.weight"].shape[1]  # ConvTranspose: (in, out, kh, kw)
    elif "model.2.bias" in state and "model.3.weight" not in state and "model.11.weight" in state:  # Dp
        for conv, norm in ((2, 3), (5, 6), (8, 9)):
            out[f"model.{norm}"] = state[f"model.{conv}.weight"].shape[0]
    return out


def _release_tensor(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    if t.dtype not in _RELEASE_DTYPES:
        if not t.is_floating_point():
            raise CheckpointError(f"a {t.dtype} tensor has no PyTorch 0.3 storage type")
        t = t.float()
    return t.contiguous().clone()


class _ReleasePickler(pickle.Pickler):
    """Pickles tensors with ``torch._utils._rebuild_tensor``, the rebuild function PyTorch 0.3 has."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            storage = torch.storage.TypedStorage(wrap_storage=obj.untyped_storage(), dtype=obj.dtype, _internal=True)
            return torch._utils._rebuild_tensor, (storage, obj.storage_offset(), tuple(obj.size()), obj.stride())
        return NotImplemented


class _ReleasePickleModule:
    """The ``pickle_module`` handed to ``torch.save``: the standard functions, the pickler above."""

    Pickler = _ReleasePickler
    dump = staticmethod(pickle.dump)
    load = staticmethod(pickle.load)
    Unpickler = pickle.Unpickler


def save_release_checkpoint(state: Any, fpath: PathLike) -> None:
    """Write ``state`` (plain containers of tensors) atomically in a form PyTorch 0.3's ``torch.load`` reads."""
    buf = io.BytesIO()
    torch.save(state, buf, pickle_module=_ReleasePickleModule, pickle_protocol=2,
               _use_new_zipfile_serialization=False)
    with atomic_write(fpath, "wb") as f:
        f.write(buf.getbuffer())
