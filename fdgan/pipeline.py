"""Stages II and III of the paper (``train.py --stage 1|2``): the training loop of the release's
``train.py``."""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

from tqdm import tqdm

from fdgan.model import FDGANModel, GANConfig, check_pretrain_files
from fdgan.utils.visualizer import Visualizer
from reid.errors import CheckpointError, ConfigError, NonFiniteLossError
from reid.evaluation_metrics import format_results
from reid.evaluators import RESCORE_TOPK, TEST_RESCORE_TOPK
from reid.models.pretrained import RANDOM, recorded_origin, write_origin
from reid.pipelines.common import (
    chance_on_test, check_test_images, evaluate_on_test, evaluate_on_val, expand_protocols, load_dataset,
    write_results,
)
from reid.pipelines.baseline import CHECKPOINT_FILE
from reid.pipelines.run import RunConfig, TrainingRun, check_run_folder
from reid.utils.data.loaders import build_pose_pair_loader
from reid.utils.serialization import load_checkpoint

logger = logging.getLogger(__name__)

_GAN = GANConfig()

RESUME_FILE = "latest.pth"
#: Files whose presence means a run folder holds a Stage II/III run.
RUN_FILES = (RESUME_FILE, "*_net_*.pth")


def drop_resume_files(run_dir: str) -> None:
    """Remove the resume file of a finished Stage I, II or III run in ``run_dir`` (its weights with
    the optimisers' state, most of the folder's size), for callers that never continue the run;
    the weights files and logs stay."""
    for name in (CHECKPOINT_FILE, RESUME_FILE):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            os.remove(path)


@dataclass
class TrainConfig(RunConfig):
    """Settings of a Stage II/III run: the shared ones plus train.py's own flags (the release's
    ``options.py``); those of the networks, losses and optimisers default to :class:`GANConfig`'s and
    are gathered by :attr:`gan`."""

    stage: int = _GAN.stage
    dataroot: str = "./datasets/"
    checkpoints: str = "./checkpoints/"
    name: str = "FD-GAN"
    netE_pretrain: str = _GAN.netE_pretrain
    netG_pretrain: str = _GAN.netG_pretrain
    netDp_pretrain: str = _GAN.netDp_pretrain
    netDi_pretrain: str = _GAN.netDi_pretrain
    arch: str = _GAN.arch
    norm: str = _GAN.norm
    drop: float = _GAN.drop
    connect_layers: int = _GAN.connect_layers
    fuse_mode: str = _GAN.fuse_mode
    pose_feature_size: int = _GAN.pose_feature_size
    noise_feature_size: int = _GAN.noise_feature_size
    pose_aug: str = "no"
    batch_size: int = 16
    niter: int = _GAN.niter
    niter_decay: int = _GAN.niter_decay
    lr: float = _GAN.lr
    save_step: int = 5
    eval_step: int = 10
    display_port: int = 6006
    display_id: int = 1
    display_winsize: int = 256
    display_freq: int = 10
    display_single_pane_ncols: int = 0
    update_html_freq: int = 100
    no_html: bool = False
    print_freq: int = 10
    lambda_recon: float = _GAN.lambda_recon
    lambda_veri: float = _GAN.lambda_veri
    lambda_sp: float = _GAN.lambda_sp
    smooth_label: bool = _GAN.smooth_label
    # Beyond the release.
    gan_loss: str = _GAN.gan_loss
    apply_lr_mult: bool = _GAN.apply_lr_mult
    resume: bool = False
    dry_run: bool = False

    @property
    def gan(self) -> GANConfig:
        """The model's settings (see :meth:`GANConfig.from_options`)."""
        return GANConfig.from_options(self)

    @property
    def save_dir(self) -> str:
        return os.path.join(self.checkpoints, self.name)


def check_train_folder(cfg: TrainConfig) -> None:
    """Refuse a new run in ``<checkpoints>/<name>`` when it holds one (see :func:`check_run_folder`).

    Raises:
        ConfigError: the folder holds a run, and neither ``resume`` nor ``overwrite`` is set.
    """
    check_run_folder(cfg.save_dir, RUN_FILES, continuing=cfg.resume, overwrite=cfg.overwrite,
                     resume_hint="the same command plus --resume")


def run_training(cfg: TrainConfig) -> dict:
    """Run Stage II (``stage=1``) or Stage III (``stage=2``); returns the final test metrics (stage 2).

    Under torchrun (``WORLD_SIZE`` > 1) every process trains on its share of each step's pairs
    (``cfg.batch_size`` pairs per process; gradients averaged, see :meth:`FDGANModel.distribute`);
    rank 0 alone logs, shows visuals, evaluates, writes files and returns the metrics (the other
    processes return ``{}``).
    """
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"--lr {cfg.lr}: the learning rate must be a finite number > 0")
    if cfg.niter + cfg.niter_decay < 1 and not cfg.dry_run:
        raise ConfigError(f"--niter {cfg.niter} --niter-decay {cfg.niter_decay}: no epoch to train "
                          "(their sum must be at least 1)")
    check_train_folder(cfg)
    check_pretrain_files(cfg.gan)
    protocols = expand_protocols(cfg.protocol)
    with TrainingRun(cfg) as run:
        return _train(cfg, protocols, run)


def _train(cfg: TrainConfig, protocols: list[str], run: TrainingRun) -> dict:
    device, ctx = run.device, run.dist
    dataset = load_dataset(cfg.dataset, cfg.dataroot, cfg.split, cfg.num_val, require_poses=True)
    sampler = run.pair_sampler(dataset.trainval, 3, cfg.batch_size)
    loader = build_pose_pair_loader(
        dataset.trainval, dataset.trainval_pid2files, dataset.images_dir, dataset.poses_dir, cfg.height, cfg.width,
        cfg.batch_size, cfg.workers, pose_aug=cfg.pose_aug, pin_memory=device.type == "cuda",
        sampler=sampler, drop_last=False if sampler is not None else None,
        draw_maps=device.type != "cuda",  # on a GPU, items carry keypoints and set_input draws the maps there
    )
    if cfg.stage == 2:
        check_test_images(cfg.dataset, cfg.dataroot, cfg.split, protocols, cfg.num_val)
    model = FDGANModel(cfg.gan, device=device, mixed_precision=run.mixed_precision)
    model.distribute(ctx, sync_bn=cfg.sync_bn)
    if cfg.dry_run:
        logger.info("Dry run: data and networks built; stopping before training")
        return {}
    visualizer = None
    if ctx.is_main:
        visualizer = Visualizer(
            name=cfg.name, checkpoints_dir=cfg.checkpoints, display_id=cfg.display_id,
            display_port=cfg.display_port, display_winsize=cfg.display_winsize,
            display_single_pane_ncols=cfg.display_single_pane_ncols, use_html=not cfg.no_html,
        )
    eval_args = dict(height=cfg.height, width=cfg.width, batch_size=cfg.batch_size, workers=cfg.workers,
                     device=device, progress=run.progress)
    # Samples per step over all processes (equal to -b in a single process).
    step_size = cfg.batch_size * ctx.world_size
    resume_path = os.path.join(cfg.save_dir, RESUME_FILE)
    start_epoch, total_steps, best_map = 1, 0, -1.0
    # Where E's backbone started (ImageNet, a file, the substitute, random), carried from Stage I's folder.
    origin = recorded_origin(cfg.netE_pretrain) if cfg.netE_pretrain else dict(RANDOM)
    if ctx.is_main:
        write_origin(cfg.save_dir, origin)
    if cfg.resume and os.path.isfile(resume_path):
        state = load_checkpoint(resume_path)
        model.load_state_dict(state["model"], source=resume_path)
        run.restore_rng(state)
        start_epoch, total_steps, best_map = state["epoch"] + 1, state["total_steps"], state["best_map"]
        logger.info("Resumed %s: continuing at epoch %d", resume_path, start_epoch)
    elif cfg.resume:
        logger.warning("--resume: no %s yet; starting from the beginning", resume_path)
    elif cfg.stage == 2:
        if visualizer is not None:
            base = evaluate_on_val(model.net_E, dataset, rerank_topk=RESCORE_TOPK, dataset_name=cfg.dataset,
                                   **eval_args)
            visualizer.log_reid("Loaded encoder before Stage III:\n"
                                + format_results(base["second_stage"], "validation"))
            # As the release: the loaded encoder's test numbers open every Stage III log.
            loaded = evaluate_on_test(model.net_E, dataset_name=cfg.dataset, data_dir=cfg.dataroot,
                                      split_id=cfg.split, protocols=protocols, rerank_topk=TEST_RESCORE_TOPK,
                                      num_val=cfg.num_val, title="[test, loaded E] ", **eval_args)
            for protocol, res in loaded.items():
                visualizer.log_reid(f"Test of the loaded encoder ({protocol} protocol, top-k {TEST_RESCORE_TOPK}):\n"
                                    + format_results(res["first_stage"], "first stage") + "\n"
                                    + format_results(res["second_stage"], "second stage"))
        ctx.barrier()

    last_epoch = cfg.niter + cfg.niter_decay
    for epoch in run.epochs(start_epoch, last_epoch + 1, sampler):
        model.train_mode()
        epoch_start, n_iters = time.time(), len(loader)
        if cfg.max_iters_per_epoch is not None:
            n_iters = min(n_iters, cfg.max_iters_per_epoch)
        bar = tqdm(total=n_iters, desc=f"Epoch {epoch}/{last_epoch}", leave=False, dynamic_ncols=True,
                   disable=not run.progress)
        for i, data in enumerate(loader):
            if i >= n_iters:
                break
            iter_start = time.time()
            total_steps += step_size
            model.set_input(data)
            model.optimize_parameters()
            # With several processes: means over all of them, so every process sees a bad loss.
            errors = ctx.mean_values(model.get_current_errors())
            bad = [k for k, v in errors.items() if not math.isfinite(v)]
            if bad:
                raise NonFiniteLossError(
                    f"epoch {epoch} iteration {i}: loss {', '.join(bad)} is not finite; stopped, the last good "
                    f"checkpoint in {cfg.save_dir} is kept (lower --lr?)")
            if visualizer is not None and total_steps % cfg.display_freq == 0:
                save_result = total_steps % cfg.update_html_freq == 0
                visualizer.display_current_results(model.get_current_visuals(), epoch, save_result)
            if visualizer is not None and total_steps % cfg.print_freq == 0:
                t = (time.time() - iter_start) / step_size
                visualizer.print_current_errors(epoch, (i + 1) * step_size, errors, t)
                visualizer.plot_current_errors(epoch, (i + 1) / n_iters, errors)
            bar.update(1)
            bar.set_postfix(G_r=f"{errors['G_r']:.3f}", D_i=f"{errors['D_i']:.3f}", D_p=f"{errors['D_p']:.3f}")
        bar.close()
        logger.info("End of epoch %d / %d (%.0f s)", epoch, last_epoch, time.time() - epoch_start)

        if epoch % cfg.save_step == 0 and ctx.is_main:
            model.save(cfg.save_dir, epoch)
        if cfg.stage == 2 and epoch % cfg.eval_step == 0 and visualizer is not None:
            val = evaluate_on_val(model.net_E, dataset, rerank_topk=RESCORE_TOPK, dataset_name=cfg.dataset, **eval_args)
            val_map = val["second_stage"]["mAP"]
            visualizer.log_reid(f"Epoch {epoch}:\n" + format_results(val["first_stage"], "validation, first stage")
                                + "\n" + format_results(val["second_stage"], "validation, second stage"))
            if val_map > best_map:
                best_map = val_map
                model.save(cfg.save_dir, "best")
                logger.info("Epoch %d: new best validation mAP %.1f%%", epoch, 100 * val_map)
        model.update_learning_rate()
        run.save_state({"model": model.state_dict(), "epoch": epoch, "total_steps": total_steps,
                        "best_map": best_map, "backbone": origin}, resume_path)

    if cfg.stage != 2 or not ctx.is_main:
        return {}
    best_e = os.path.join(cfg.save_dir, "best_net_E.pth")
    if not os.path.isfile(best_e):
        raise CheckpointError(f"{best_e}: no best encoder was saved (no evaluation epoch ran; check --eval-step)")
    model.load_network("E", best_e)
    topk = cfg.rerank_topk if cfg.rerank_topk is not None else TEST_RESCORE_TOPK
    results = evaluate_on_test(model.net_E, dataset_name=cfg.dataset, data_dir=cfg.dataroot, split_id=cfg.split,
                               protocols=protocols, rerank_topk=topk, num_val=cfg.num_val,
                               title="[test, best E] ", k_reciprocal=cfg.rerank == "k-reciprocal", **eval_args)
    for protocol, res in results.items():
        visualizer.log_reid(f"Test of the best encoder ({protocol} protocol):\n"
                            + format_results(res["first_stage"], "first stage") + "\n"
                            + format_results(res["second_stage"], "second stage"))
    out = os.path.join(cfg.save_dir, "results.json")
    write_results(out, results, checkpoint=os.path.abspath(best_e), dataset=cfg.dataset, split=cfg.split,
                  rerank_topk=topk, best_val_mAP=best_map, backbone=origin,
                  chance=chance_on_test(cfg.dataset, cfg.dataroot, cfg.split, protocols, cfg.num_val))
    logger.info("Metrics written to %s", out)
    return results

