"""Stage I (paper) / ``baseline.py``: train and evaluate the Siamese re-ID baseline (the release's
``baseline.py``)."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reid.errors import CheckpointError, ConfigError
from reid.evaluators import RESCORE_TOPK, TEST_RESCORE_TOPK
from reid.models import build_siamese
from reid.models.pretrained import recorded_origin, write_origin
from reid.pipelines.common import (
    chance_on_test, check_test_images, evaluate_on_test, evaluate_on_val, expand_protocols, load_dataset,
    write_results,
)
from reid.pipelines.run import RunConfig, TrainingRun, check_run_folder
from reid.trainers import SiameseTrainer
from reid.utils.data.loaders import build_pair_loader
from reid.utils.distributed import convert_sync_batchnorm
from reid.utils.optim import fused_kwargs, load_optimizer_state
from reid.utils.serialization import copy_state_dict, load_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class BaselineConfig(RunConfig):
    """Settings of a Stage I run: the shared ones plus baseline.py's own flags (those of the
    release's ``baseline.py``)."""

    batch_size: int = 256
    combine_trainval: bool = False
    arch: str = "resnet50"
    lr: float = 0.01
    np_ratio: int = 3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    step_size: int = 40
    resume: str = ""
    evaluate: bool = False
    epochs: int = 50
    eval_step: int = 20
    data_dir: str = "./datasets"
    logs_dir: str = "./checkpoints"
    augment: str = "release"


#: The resume file of a Stage I run (weights, optimiser, epoch, RNG states).
CHECKPOINT_FILE = "checkpoint.pth.tar"
#: Files whose presence means a --logs-dir holds a Stage I run.
RUN_FILES = (CHECKPOINT_FILE, "model_best.pth.tar")


def _continues_run_in(resume: str, folder: str) -> bool:
    """``resume`` is a file of the run in ``folder`` (so training continues that run)."""
    if not resume or not os.path.isdir(folder):
        return False
    return os.path.realpath(os.path.dirname(os.path.abspath(resume))) == os.path.realpath(folder)


def with_module_prefix(model: nn.Module) -> dict:
    """The state dict as the release's DataParallel-wrapped model wrote it (``module.`` keys)."""
    net = model.module if hasattr(model, "module") else model
    return {f"module.{k}": v for k, v in net.state_dict().items()}


def freeze_unused_fc(model: nn.Module) -> nn.Module:
    """Stop tracking gradients of the backbone's ``base.fc``, which a backbone cut at pooling keeps
    (for the release's key names) but never runs; DistributedDataParallel would otherwise wait for
    its gradients. Nothing else changes: that layer never had a gradient, so SGD never moved it."""
    base = getattr(model, "base_model", None)
    if getattr(base, "cut_at_pooling", False) and hasattr(getattr(base, "base", None), "fc"):
        base.base.fc.requires_grad_(False)
    return model


def run_baseline(cfg: BaselineConfig) -> dict:
    """Train (or with ``cfg.evaluate`` only evaluate) the Stage I baseline; returns the test metrics.

    Under torchrun (``WORLD_SIZE`` > 1) every process trains on its share of each step's pairs
    (``cfg.batch_size`` pairs per process) with DistributedDataParallel; rank 0 alone evaluates,
    writes files and returns the metrics (the other processes return ``{}``).
    """
    if cfg.evaluate and not cfg.resume:
        raise ConfigError("--evaluate needs --resume PATH of the checkpoint to evaluate")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"--lr {cfg.lr}: the learning rate must be a finite number > 0")
    if cfg.amp and not cfg.evaluate and cfg.batch_size <= cfg.np_ratio + 1:
        raise ConfigError(
            f"--amp with -b {cfg.batch_size} and --np-ratio {cfg.np_ratio}: each batch's first images are one "
            f"anchor image repeated (it comes with {cfg.np_ratio + 1} pairs), so BatchNorm normalises rounding "
            f"noise, which low precision turns into exploding weights and NaN; use -b {cfg.np_ratio + 2} or more "
            "(pairs per process)")
    if not cfg.evaluate:
        # A kill between the two writes of an epoch can leave model_best alone; it resumes as well.
        resume_from = next((os.path.join(cfg.logs_dir, n) for n in RUN_FILES
                            if os.path.isfile(os.path.join(cfg.logs_dir, n))), "")
        check_run_folder(cfg.logs_dir, RUN_FILES, continuing=_continues_run_in(cfg.resume, cfg.logs_dir),
                         overwrite=cfg.overwrite, resume_hint=f"--resume {resume_from}")
    protocols = expand_protocols(cfg.protocol)
    with TrainingRun(cfg) as run:
        return _run(cfg, protocols, run)


def _run(cfg: BaselineConfig, protocols: list[str], run: TrainingRun) -> dict:
    device, ctx = run.device, run.dist
    dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, cfg.num_val, protocol=protocols[0])
    model = build_siamese(cfg.arch, pretrained=False if cfg.resume else cfg.backbone_init(), num_classes=2).to(device)
    resumed = load_checkpoint(cfg.resume) if cfg.resume else None
    origin = _origin(resumed, cfg.resume) if cfg.resume else model.base_model.backbone_origin
    eval_kwargs = dict(dataset_name=cfg.dataset, data_dir=cfg.data_dir, split_id=cfg.split, protocols=protocols,
                       height=cfg.height, width=cfg.width, batch_size=cfg.batch_size, workers=cfg.workers,
                       device=device, num_val=cfg.num_val, progress=run.progress,
                       k_reciprocal=cfg.rerank == "k-reciprocal")

    if cfg.evaluate:
        if not ctx.is_main:
            return {}
        copy_state_dict(resumed, model, source=cfg.resume)
        topk = cfg.rerank_topk if cfg.rerank_topk is not None else TEST_RESCORE_TOPK
        results = evaluate_on_test(model, rerank_topk=topk, title="[test] ", **eval_kwargs)
        out = os.path.join(cfg.logs_dir, "evaluate_results.json")
        write_results(out, results, checkpoint=os.path.abspath(cfg.resume), dataset=cfg.dataset,
                      split=cfg.split, rerank_topk=topk, backbone=origin,
                      chance=chance_on_test(cfg.dataset, cfg.data_dir, cfg.split, protocols, cfg.num_val))
        logger.info("Metrics written to %s", out)
        return results

    check_test_images(cfg.dataset, cfg.data_dir, cfg.split, protocols, cfg.num_val)
    train_items = dataset.trainval if cfg.combine_trainval else dataset.train
    sampler = run.pair_sampler(train_items, cfg.np_ratio, cfg.batch_size)
    train_loader = build_pair_loader(train_items, dataset.images_dir, cfg.height, cfg.width, cfg.batch_size,
                                     cfg.workers, np_ratio=cfg.np_ratio, pin_memory=device.type == "cuda",
                                     augment=cfg.augment, sampler=sampler,
                                     drop_last=False if sampler is not None else None)
    if ctx.enabled:
        freeze_unused_fc(model)
        if cfg.sync_bn:
            model = convert_sync_batchnorm(model, device)
    param_groups = [
        {"params": model.base_model.parameters(), "lr_mult": 1.0},
        {"params": model.embed_model.parameters(), "lr_mult": 1.0},
    ]
    optimizer = torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                **fused_kwargs(device))
    # DDP wraps the same modules, so ``model`` below is what evaluation and checkpoints use.
    trainer = SiameseTrainer(ctx.wrap(model), nn.CrossEntropyLoss().to(device), device=device,
                             mixed_precision=run.mixed_precision, dist=ctx)

    start_epoch, best_map = 0, -1.0
    if ctx.is_main:
        write_origin(cfg.logs_dir, origin)
    ckpt_path = os.path.join(cfg.logs_dir, CHECKPOINT_FILE)
    best_path = os.path.join(cfg.logs_dir, "model_best.pth.tar")
    # The final test uses model_best only if this run wrote it or continues the run that did,
    # never one an older run left behind (e.g. --epochs 0 --overwrite over an old run).
    own_best = False
    if cfg.resume:
        start_epoch, best_map = _resume(resumed, cfg.resume, model, optimizer, trainer.scaler, run)
        own_best = start_epoch > 0 and _continues_run_in(cfg.resume, cfg.logs_dir)
        if start_epoch >= cfg.epochs:
            logger.info("%s already finished %d epochs; going straight to the final test", cfg.resume, cfg.epochs)

    for epoch in run.epochs(start_epoch, cfg.epochs, sampler):
        lr = cfg.lr * (0.1 ** (epoch // cfg.step_size))
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        trainer.train(epoch, train_loader, optimizer, max_iters=cfg.max_iters_per_epoch, progress=run.progress)
        is_best = False
        if (epoch % cfg.eval_step == 0 or epoch == cfg.epochs - 1) and ctx.is_main:
            val = evaluate_on_val(model, dataset, cfg.height, cfg.width, cfg.batch_size, cfg.workers,
                                  rerank_topk=RESCORE_TOPK, device=device, dataset_name=cfg.dataset,
                                  progress=run.progress)
            val_map = val["second_stage"]["mAP"]
            is_best = val_map > best_map
            best_map = max(best_map, val_map)
            logger.info("Epoch %d: validation mAP %.1f%% (best %.1f%%)%s", epoch, 100 * val_map,
                        100 * best_map, " *" if is_best else "")
        state = {"state_dict": with_module_prefix(model), "epoch": epoch, "best_map": best_map,
                 "optimizer": optimizer.state_dict(), "backbone": origin}
        if trainer.scaler.is_enabled():
            state["scaler"] = trainer.scaler.state_dict()
        run.save_state(state, ckpt_path, is_best=is_best)
        own_best = own_best or is_best

    if not ctx.is_main:
        return {}
    if not own_best or not os.path.isfile(best_path):
        why = (f"no epoch of its validations beat the best mAP of {cfg.resume}" if start_epoch < cfg.epochs
               else f"it trained no epoch: --epochs {cfg.epochs}")
        raise CheckpointError(f"{best_path}: this run saved no best model ({why}); to test a saved model use "
                              "--evaluate --resume FILE")
    copy_state_dict(load_checkpoint(best_path), model, source=best_path)
    topk = cfg.rerank_topk if cfg.rerank_topk is not None else RESCORE_TOPK
    results = evaluate_on_test(model, rerank_topk=topk, title="[test] ", **eval_kwargs)
    out = os.path.join(cfg.logs_dir, "results.json")
    write_results(out, results, checkpoint=os.path.abspath(best_path), dataset=cfg.dataset, split=cfg.split,
                  rerank_topk=topk, best_val_mAP=best_map, backbone=origin,
                  chance=chance_on_test(cfg.dataset, cfg.data_dir, cfg.split, protocols, cfg.num_val))
    logger.info("Metrics written to %s", out)
    return results


def _resume(checkpoint: Any, path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: "torch.amp.GradScaler", run: TrainingRun) -> tuple[int, float]:
    """Load the weights of ``checkpoint`` (read from ``path``); if it is a training state, also the
    optimiser, epoch, RNGs (:meth:`TrainingRun.restore_rng`) and the fp16 loss scale."""
    copy_state_dict(checkpoint, model, source=path)
    if not (isinstance(checkpoint, dict) and "epoch" in checkpoint and "optimizer" in checkpoint):
        logger.info("Loaded weights from %s; training starts at epoch 0", path)
        return 0, -1.0
    try:
        load_optimizer_state(optimizer, checkpoint["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this model ({e})") from None
    run.restore_rng(checkpoint)
    if scaler.is_enabled() and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
    epoch = int(checkpoint["epoch"]) + 1
    best = float(checkpoint.get("best_map", -1.0))
    logger.info("Resumed %s: continuing at epoch %d (best validation mAP %.1f%%)", path, epoch, 100 * max(best, 0))
    return epoch, best


def _origin(checkpoint: Any, checkpoint_path: str) -> dict:
    """Where the backbone of a checkpoint started: its own ``backbone`` entry, else its folder's record."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("backbone"), dict):
        return checkpoint["backbone"]
    return recorded_origin(checkpoint_path)
