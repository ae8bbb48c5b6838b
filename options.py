"""train.py's command-line options (the release's options.py) translated into a
:class:`TrainConfig`; the run flags both CLIs share come from :func:`run_options.add_run_flags`."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional, Sequence

from fdgan.losses import GAN_LOSS_MODES
from fdgan.pipeline import TrainConfig
from reid import models
from reid.utils.argtypes import non_negative_int, positive_float, positive_int
from reid.utils.osutils import atomic_write_text
from run_options import add_run_flags

_D = TrainConfig()


class Options:
    """Builds the parser, parses, and prints/saves the effective options (CycleGAN's ``opt.txt``)."""

    def __init__(self) -> None:
        p = argparse.ArgumentParser(description="FD-GAN Stages II and III (train.py --stage 1|2)")
        p.add_argument("--stage", type=int, default=_D.stage, choices=[1, 2],
                       help="1: GAN pre-training with E frozen (paper Stage II); 2: global fine-tuning (Stage III)")
        p.add_argument("--dataroot", type=str, default=_D.dataroot, help="folder holding <dataset>/")
        p.add_argument("--checkpoints", type=str, default=_D.checkpoints, help="runs are saved in <checkpoints>/<name>")
        p.add_argument("--name", type=str, default=_D.name, help="name of the run")
        p.add_argument("--netE-pretrain", dest="netE_pretrain", type=str, default="", metavar="PATH",
                       help="encoder E: Stage I model_best.pth.tar (stage 1) or <epoch>_net_E.pth (stage 2)")
        p.add_argument("--netG-pretrain", dest="netG_pretrain", type=str, default="", metavar="PATH")
        p.add_argument("--netDp-pretrain", dest="netDp_pretrain", type=str, default="", metavar="PATH")
        p.add_argument("--netDi-pretrain", dest="netDi_pretrain", type=str, default="", metavar="PATH")
        p.add_argument("--arch", type=str, default=_D.arch, choices=models.names())
        p.add_argument("--norm", type=str, default=_D.norm, choices=["batch", "instance", "none"])
        p.add_argument("--drop", type=float, default=_D.drop, help="dropout of G's decoder")
        p.add_argument("--connect-layers", type=int, default=_D.connect_layers, choices=range(6),
                       help="skip connections between G's encoder and decoder")
        p.add_argument("--fuse-mode", type=str, default=_D.fuse_mode, choices=["cat", "add"])
        p.add_argument("--pose-feature-size", type=int, default=_D.pose_feature_size)
        p.add_argument("--noise-feature-size", type=int, default=_D.noise_feature_size)
        p.add_argument("--pose-aug", type=str, default=_D.pose_aug, choices=["no", "erase", "gauss"])
        p.add_argument("-b", "--batch-size", type=positive_int, default=_D.batch_size, help="pairs per batch")
        p.add_argument("--niter", type=non_negative_int, default=_D.niter, help="epochs at the initial learning rate")
        p.add_argument("--niter-decay", type=non_negative_int, default=_D.niter_decay, help="epochs of linear decay to zero")
        p.add_argument("--lr", type=positive_float, default=_D.lr)
        p.add_argument("--save-step", type=positive_int, default=_D.save_step, help="save <epoch>_net_*.pth every N epochs")
        p.add_argument("--eval-step", type=positive_int, default=_D.eval_step, help="stage 2: validate every N epochs")
        p.add_argument("--display-port", type=int, default=_D.display_port, help="visdom server port")
        p.add_argument("--display-id", type=int, default=_D.display_id, help="visdom window id (0: no visdom)")
        p.add_argument("--display-winsize", type=int, default=_D.display_winsize)
        p.add_argument("--display-freq", type=positive_int, default=_D.display_freq, help="show visuals every N samples")
        p.add_argument("--display-single-pane-ncols", type=int, default=_D.display_single_pane_ncols)
        p.add_argument("--update-html-freq", type=positive_int, default=_D.update_html_freq,
                       help="save visuals into the HTML page every N samples")
        p.add_argument("--no_html", action="store_true", help="do not write <checkpoints>/<name>/web/")
        p.add_argument("--print-freq", type=positive_int, default=_D.print_freq, help="log losses every N samples")
        p.add_argument("--lambda-recon", type=float, default=_D.lambda_recon)
        p.add_argument("--lambda-veri", type=float, default=_D.lambda_veri)
        p.add_argument("--lambda-sp", type=float, default=_D.lambda_sp)
        p.add_argument("--smooth-label", action="store_true", help="smoothed discriminator targets")
        # Beyond the release.
        p.add_argument("--gan-loss", type=str, default=_D.gan_loss, choices=list(GAN_LOSS_MODES),
                       help="GAN loss: release = sigmoid then BCE with PyTorch 0.3's epsilon (default); "
                            "logits = BCE with logits")
        p.add_argument("--apply-lr-mult", action="store_true",
                       help="stage 2: apply the per-group lr multipliers the release defines but ignores")
        p.add_argument("--resume", action="store_true", help="continue <checkpoints>/<name>/latest.pth")
        p.add_argument("--dry-run", action="store_true", help="build data and networks, then stop")
        add_run_flags(p)
        self.parser = p

    def parse(self, argv: Optional[Sequence[str]] = None) -> TrainConfig:
        """Parse ``argv`` into a :class:`TrainConfig`."""
        args = self.parser.parse_args(argv)
        return TrainConfig(**vars(args))

    def format(self, cfg: TrainConfig) -> str:
        """The options one per line, non-defaults marked with their default."""
        lines = ["------------ Options -------------"]
        for f in dataclasses.fields(cfg):
            value, default = getattr(cfg, f.name), getattr(_D, f.name)
            mark = "" if value == default else f"\t[default: {default}]"
            lines.append(f"{f.name}: {value}{mark}")
        lines.append("-------------- End ----------------")
        return "\n".join(lines)

    def save(self, cfg: TrainConfig) -> str:
        """Write ``<checkpoints>/<name>/opt.txt`` (this run's command line and options), replacing any
        earlier one; returns its path."""
        path = os.path.join(cfg.save_dir, "opt.txt")
        atomic_write_text(path, f"command: {' '.join(sys.argv)}\n{self.format(cfg)}\n")
        return path
