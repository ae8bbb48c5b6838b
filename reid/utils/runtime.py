"""Devices, seeding, random-number-generator state, mixed precision and multi-process runs."""
from __future__ import annotations

import contextlib
import os
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ContextManager, Iterable, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from reid.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``--device auto|cpu|cuda|cuda:N`` to a torch device (auto = CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        return torch.device(name)
    raise ConfigError(f"--device {name}: expected auto, cpu, cuda or cuda:N")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def worker_init_fn(worker_id: int) -> None:
    """Seed Python's and NumPy's generators of a DataLoader worker from torch's per-worker seed."""
    seed = torch.initial_seed() % (2 ** 32)
    random.seed(seed)
    np.random.seed(seed)


def get_rng_state() -> dict:
    """The state of every generator, as tensors and plain containers (loadable with weights_only)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators saved by :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- mixed precision

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


# --------------------------------------------------------------------------- distributed (torchrun)

# Rank 0 evaluates while the other processes wait at a barrier; this bounds that wait.
DIST_TIMEOUT = timedelta(hours=2)
# Gradients are all-reduced in flat buckets of at most this many elements (bounds the extra memory).
_BUCKET_ELEMENTS = 1 << 24


def launcher_rank() -> int:
    """This process's rank as torchrun set it (``RANK``); 0 when not started by torchrun."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass
class DistributedContext:
    """Where this process stands in a torchrun job; a plain run is rank 0 of 1.

    Attributes:
        rank: global rank (torchrun's ``RANK``).
        world_size: number of processes (``WORLD_SIZE``).
        local_rank: rank on this machine (``LOCAL_RANK``); the GPU a CUDA process uses.
        device: this process's device.
        owns_group: the process group was created by :func:`init_distributed`, so :meth:`close`
            destroys it (a group the caller created is left alone).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in a single process)."""
        if not self.enabled:
            return
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel (returned unchanged in a single process).

        Every parameter that requires a gradient must take part in each forward pass (no
        ``find_unused_parameters``); DDP broadcasts rank 0's parameters and buffers when wrapping.
        """
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None)

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every process."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                if t.is_contiguous():
                    dist.broadcast(t.data, src=0)
                else:  # channels-last weights: the collectives want a dense default layout
                    buf = t.detach().contiguous()
                    dist.broadcast(buf, src=0)
                    t.copy_(buf)

    def all_reduce_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace each gradient of ``params`` by its mean over the processes (in place).

        Every process must pass the same parameters, with gradients present on the same ones.
        """
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            bucket: list[torch.Tensor] = []
            size = 0
            for g in group + [None]:
                if g is not None and (not bucket or size + g.numel() <= _BUCKET_ELEMENTS):
                    bucket.append(g)
                    size += g.numel()
                    continue
                flat = torch.cat([b.reshape(-1) for b in bucket])
                dist.all_reduce(flat)
                flat.div_(self.world_size)
                offset = 0
                for b in bucket:
                    b.copy_(flat[offset:offset + b.numel()].view(b.shape))
                    offset += b.numel()
                bucket, size = ([g], g.numel()) if g is not None else ([], 0)

    def mean_values(self, values: Mapping[str, float]) -> "OrderedDict[str, float]":
        """The mean over the processes of each value (same keys and order)."""
        out: "OrderedDict[str, float]" = OrderedDict(values)
        if not self.enabled or not out:
            return out
        t = torch.tensor([float(v) for v in out.values()], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return OrderedDict(zip(out.keys(), (t / self.world_size).tolist()))

    def all_gather_object(self, obj: Any) -> list:
        """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the torchrun job this process belongs to, or describe a plain single-process run.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
    With ``WORLD_SIZE`` > 1 the process group is initialised (``nccl`` on CUDA, ``gloo`` on CPU)
    unless the caller already did; process ``i`` of a machine uses ``cuda:LOCAL_RANK``.

    Args:
        device: ``--device``: auto, cpu or cuda (``cuda:N`` only without torchrun).

    Raises:
        ConfigError: a device that cannot be shared out (``cuda:N``, too few GPUs) or an
            incomplete torchrun environment.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None
    if world <= 1:
        return DistributedContext(device=resolve_device(device))
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ConfigError("WORLD_SIZE > 1 needs RANK (and LOCAL_RANK); start the run with torchrun") from None
    if device in ("auto", "cuda"):
        use_cuda = torch.cuda.is_available()
        if device == "cuda" and not use_cuda:
            raise ConfigError("--device cuda: CUDA is not available on this machine (use --device cpu)")
        dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise ConfigError(f"--device {device} under torchrun: every process would use the same device; "
                          "use --device cuda (process i takes cuda:LOCAL_RANK) or cpu")
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                              "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise ConfigError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not "
                              f"match RANK={rank} WORLD_SIZE={world}")
        return DistributedContext(rank, world, local_rank, dev, owns_group=False)
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ConfigError(f"WORLD_SIZE > 1 but {var} is not set; start the run with torchrun")
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                            timeout=DIST_TIMEOUT)
    return DistributedContext(rank, world, local_rank, dev, owns_group=True)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


class GlooSyncBatchNorm(_BatchNorm):
    """Batch normalisation whose training statistics span all processes, on CPU (gloo).

    torch's ``SyncBatchNorm`` runs on GPUs only; this one computes the same thing with two
    differentiable all-reduces (sums and counts, then squared deviations), so a CPU run with
    ``--sync-bn`` normalises each step's global batch as one process would. In eval mode, or
    without a process group of more than one process, it is a plain BatchNorm. State-dict keys
    are BatchNorm's.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        all_reduce = _AllReduceSum.apply
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # statistics in fp32 at least
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = (1, c) + (1,) * (x.dim() - 2)
        sums = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() // c])]))
        n = sums[c]
        mean = sums[:c] / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.detach().to(self.running_mean.dtype), alpha=f)
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp_min(1))
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm replaced by a synchronised one sharing its parameters.

    CUDA: torch's ``SyncBatchNorm``; CPU: :class:`GlooSyncBatchNorm`. The new layers keep the
    old ones' parameters, buffers and train/eval mode, so optimisers built before stay valid and
    BatchNorm layers frozen in eval mode stay frozen (they never synchronise).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, GlooSyncBatchNorm)):
        new = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, device)
        if converted is not child:
            setattr(module, name, converted)
    return module
