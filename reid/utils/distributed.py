"""Multi-process runs under torchrun: joining the process group, gradient averaging, SyncBatchNorm."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reid.errors import ConfigError
from reid.utils.runtime import resolve_device

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
                dist.broadcast(t.data, src=0)

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


def check_sync_bn(device: torch.device) -> None:
    """Raise :class:`ConfigError` unless ``--sync-bn`` can run on ``device`` (PyTorch: CUDA / nccl only)."""
    if device.type != "cuda":
        raise ConfigError(f"--sync-bn: PyTorch's SyncBatchNorm needs CUDA processes; this run uses {device.type} "
                          "(drop --sync-bn)")


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm replaced by ``torch.nn.SyncBatchNorm`` sharing its parameters.

    The new layers keep the old ones' parameters, buffers and train/eval mode, so optimisers built
    before stay valid and BatchNorm layers frozen in eval mode stay frozen (they never synchronise).

    Raises:
        ConfigError: ``device`` is not a GPU (PyTorch's SyncBatchNorm runs on CUDA / nccl only).
    """
    check_sync_bn(device)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


# Words of gloo's / nccl's errors when a peer process of the job is gone.
_LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective operation failing because another process of the torchrun job
    ended (its own error, already printed by that process, is the one that matters)."""
    backend_error = getattr(dist, "DistBackendError", ())
    if backend_error and isinstance(err, backend_error):
        return True
    return isinstance(err, RuntimeError) and any(w in str(err) for w in _LOST_PEER)
