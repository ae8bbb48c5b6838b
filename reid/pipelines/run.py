"""What every training run shares: its settings beyond the stage, and the process-level skeleton
(device, torchrun group, seeds, mixed precision, the per-epoch resume file with its RNG states)."""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch

from reid.errors import ConfigError
from reid.utils.amp import resolve_mixed_precision
from reid.utils.data.sampler import DistributedRandomPairSampler
from reid.utils.distributed import check_sync_bn, init_distributed
from reid.utils.runtime import configure_backends, get_rng_state, seed_everything, set_rng_state, unused_gpus_note
from reid.utils.serialization import save_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Settings both CLIs share (defined once in run_options.py's ``add_run_flags``).

    Attributes:
        dataset, workers, height, width, split, seed: the release's flags of the same names.
        num_val: validation identities: a count, or a fraction if < 1 (None: the dataset's default).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        pretrained: ImageNet weights for a backbone that starts from no file.
        pretrained_weights: a local torchvision-format file to start that backbone from instead
            (a copy of the ImageNet file, or the substitute of scripts/pretrain_backbone.py).
        max_iters_per_epoch: cap on the iterations of an epoch (quick runs).
        protocol: query/gallery protocol of the test: ``openreid``, ``official`` or ``both``.
        rerank_topk: second-stage candidates of the test (None: the stage's default).
        rerank: ``k-reciprocal`` also reports k-reciprocal re-ranking of the first stage.
        deterministic: deterministic kernels (exact resume).
        progress: progress bars.
        sync_bn: BatchNorm statistics over all processes (CUDA only).
        amp, amp_dtype: mixed precision and its type (``fp16`` / ``bf16``; None: the device's).
        overwrite: replace the run a folder already holds (see :func:`check_run_folder`).
    """

    dataset: str = "market1501"
    workers: int = 4
    height: int = 256
    width: int = 128
    split: int = 0
    seed: int = 1
    num_val: Optional[float] = None
    device: str = "auto"
    pretrained: bool = True
    pretrained_weights: str = ""
    max_iters_per_epoch: Optional[int] = None
    protocol: str = "openreid"
    rerank_topk: Optional[int] = None
    rerank: str = "none"
    deterministic: bool = False
    progress: bool = True
    sync_bn: bool = False
    amp: bool = False
    amp_dtype: Optional[str] = None
    overwrite: bool = False

    def backbone_init(self) -> "bool | str":
        """What ``reid.models.create(pretrained=...)`` gets for a backbone that starts from no checkpoint."""
        return self.pretrained_weights or self.pretrained

    def plain(self) -> dict:
        """The settings whose values are plain scalars (what a checkpoint records)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, (int, float, str, bool))}


def check_run_folder(folder: str, run_files: Sequence[str], continuing: bool, overwrite: bool,
                     resume_hint: str) -> None:
    """Refuse to start a new run in a folder that already holds one.

    Args:
        folder: the run's output folder.
        run_files: file-name patterns (``fnmatch``) whose presence means the folder holds a run.
        continuing: this run continues the one in the folder (``--resume``).
        overwrite: the user asked to replace it (``--overwrite``).
        resume_hint: how to continue that run, for the message.

    Raises:
        ConfigError: ``folder`` holds a run, and this run neither continues nor replaces it.
    """
    if continuing or overwrite or not os.path.isdir(folder):
        return
    found = sorted(n for n in os.listdir(folder) if any(fnmatch.fnmatchcase(n, p) for p in run_files))
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ConfigError(f"{folder}: already holds a run ({shown}); continue it with {resume_hint}, choose "
                          "another folder, or pass --overwrite to replace it")


class TrainingRun:
    """One process of a training run; a context manager that leaves the torchrun group on exit.

    On entry: joins the torchrun job (if any), checks ``--sync-bn`` and ``--amp`` against the
    device, and seeds every generator with ``seed + rank`` (different augmentation, noise and
    dropout per process; the networks start from rank 0's weights).

    Attributes:
        cfg: the run's settings.
        dist: the torchrun context (rank 0 of 1 in a plain run).
        device: this process's device.
        mixed_precision: autocast settings of the training steps.
        progress: show progress bars (rank 0 only).
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.dist = init_distributed(cfg.device)
        self.device = self.dist.device
        try:
            if cfg.sync_bn:
                check_sync_bn(self.device)
            self.mixed_precision = resolve_mixed_precision(cfg.amp, cfg.amp_dtype, self.device)
        except BaseException:
            self.dist.close()
            raise
        if cfg.sync_bn and not self.dist.enabled:
            logger.info("--sync-bn: a single process, nothing to synchronise")
        note = unused_gpus_note(self.device, self.dist.enabled, torch.cuda.device_count())
        if note:
            logger.warning(note)
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)
        configure_backends(self.device, cfg.deterministic)
        self.progress = cfg.progress and self.dist.is_main

    def __enter__(self) -> "TrainingRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.dist.close()

    def pair_sampler(self, items: Sequence, np_ratio: int, batch_size: int) -> Optional[DistributedRandomPairSampler]:
        """This process's share of each step's pairs under torchrun; None in a plain run (the loader's own)."""
        if not self.dist.enabled:
            return None
        return DistributedRandomPairSampler(items, np_ratio, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                            batch_size=batch_size, seed=self.cfg.seed)

    def epochs(self, start: int, stop: int, sampler: Optional[DistributedRandomPairSampler]) -> Iterator[int]:
        """The epochs ``start .. stop - 1``, telling the distributed sampler (if any) each one."""
        for epoch in range(start, stop):
            if sampler is not None:
                sampler.set_epoch(epoch)
            yield epoch

    def save_state(self, state: dict, path: str, is_best: bool = False) -> None:
        """Rank 0 writes ``state`` plus every process's RNG state and the settings to ``path``.

        Every process must call it (it gathers the RNG states, which also holds the others until
        rank 0 is done with the epoch).
        """
        rng_states = self.dist.all_gather_object(get_rng_state())
        if not self.dist.is_main:
            return
        state = {**state, "rng": rng_states[0], "config": self.cfg.plain()}
        if self.dist.enabled:
            state["rng_per_rank"] = rng_states
        save_checkpoint(state, path, is_best=is_best)

    def restore_rng(self, state: Mapping) -> None:
        """Restore the RNG states of a file :meth:`save_state` wrote: each process its own when the
        file holds one per process of the same count; otherwise rank 0 the saved one, and the
        other processes keep their fresh seeds."""
        per_rank = state.get("rng_per_rank")
        if isinstance(per_rank, list) and len(per_rank) == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank])
        elif "rng" in state and self.dist.is_main:
            set_rng_state(state["rng"])
