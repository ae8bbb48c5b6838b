"""Devices, seeding and random-number-generator state."""
from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch

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


def unused_gpus_note(device: torch.device, distributed: bool, visible_gpus: int) -> Optional[str]:
    """The start-up line for a plain (not torchrun) CUDA run while several GPUs are visible; None otherwise.

    The release wrapped its networks in DataParallel over every visible GPU; a plain run here
    uses the one GPU ``device``, with all of ``-b`` on it.
    """
    if distributed or device.type != "cuda" or visible_gpus <= 1:
        return None
    return (f"{visible_gpus} GPUs are visible but this run uses only {device} (the whole -b batch on it); "
            f"to use all of them: torchrun --nproc_per_node {visible_gpus} <script> -b <batch per GPU> ... "
            "(docs/distributed.md)")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def configure_backends(device: torch.device, deterministic: bool = False) -> bool:
    """Turn cuDNN autotuning on for a CUDA run unless ``deterministic`` (the release sets
    ``cudnn.benchmark = True``); returns the setting."""
    benchmark = torch.device(device).type == "cuda" and not deterministic
    torch.backends.cudnn.benchmark = benchmark
    return benchmark


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
