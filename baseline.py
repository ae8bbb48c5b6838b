#!/usr/bin/env python
"""Stage I of the paper: train / evaluate the Siamese ResNet re-ID baseline.

    python baseline.py -b 256 -j 4 -d market1501 -a resnet50 --combine-trainval --lr 0.01 \
        --epochs 100 --step-size 40 --eval-step 5 --logs-dir DIR
    python baseline.py -b 256 -d market1501 -a resnet50 --evaluate --resume DIR/model_best.pth.tar

Several GPUs (``-b`` is per process; see docs/distributed.md):

    torchrun --nproc_per_node 4 baseline.py -b 64 ... --sync-bn
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from run_options import add_run_flags
from reid import models
from reid.errors import FDGANError
from reid.pipelines.baseline import BaselineConfig, run_baseline
from reid.utils.argtypes import non_negative_int, positive_float, positive_int
from reid.utils.distributed import launcher_rank, lost_peer
from reid.utils.logging import setup_logging
from reid.utils.osutils import folder_lock

_D = BaselineConfig()
# As the release: the default folders sit beside this script, wherever it is started from.
_HERE = os.path.dirname(os.path.abspath(__file__))


def build_parser() -> argparse.ArgumentParser:
    """The release's flags (same names and defaults) plus this project's extras."""
    p = argparse.ArgumentParser(description="Stage I: Siamese re-ID baseline (train or --evaluate)")
    p.add_argument("-b", "--batch-size", type=positive_int, default=_D.batch_size, help="pairs per batch (2x images)")
    p.add_argument("--combine-trainval", action="store_true", help="train on train+val")
    p.add_argument("-a", "--arch", type=str, default=_D.arch, choices=models.names())
    p.add_argument("--lr", type=positive_float, default=_D.lr)
    p.add_argument("--np-ratio", type=int, default=_D.np_ratio, help="negative pairs per positive pair")
    p.add_argument("--momentum", type=float, default=_D.momentum)
    p.add_argument("--weight-decay", type=float, default=_D.weight_decay)
    p.add_argument("--step-size", type=positive_int, default=_D.step_size, help="epochs between lr x0.1 steps")
    p.add_argument("--resume", type=str, default=_D.resume, metavar="PATH",
                   help="weights to evaluate, or a checkpoint.pth.tar whose training run to continue")
    p.add_argument("--evaluate", action="store_true", help="evaluation only (needs --resume)")
    p.add_argument("--epochs", type=non_negative_int, default=_D.epochs)
    p.add_argument("--eval-step", type=positive_int, default=_D.eval_step)
    p.add_argument("--data-dir", type=str, metavar="PATH", default=os.path.join(_HERE, "datasets"),
                   help="folder holding <dataset>/ (default: datasets/ beside baseline.py)")
    p.add_argument("--logs-dir", type=str, metavar="PATH", default=os.path.join(_HERE, "checkpoints"),
                   help="checkpoints and logs (default: checkpoints/ beside baseline.py)")
    # Beyond the release.
    p.add_argument("--augment", type=str, default=_D.augment, choices=["release", "flip", "none"],
                   help="training augmentation: release = crop + erasing + flip; flip; none (quick runs)")
    add_run_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> BaselineConfig:
    """Translate parsed flags into a :class:`BaselineConfig`."""
    return BaselineConfig(**vars(args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Everything is written to --logs-dir; --evaluate only reads the --resume file.
    log_file = os.path.join(args.logs_dir, "log_test.txt" if args.evaluate else "log.txt")
    try:
        if launcher_rank() == 0:
            setup_logging(log_file)
        else:  # torchrun's other processes: no log file, only warnings and errors on the console
            setup_logging(None, level=logging.WARNING)
    except OSError as e:
        print(f"error: {log_file}: cannot write the log file ({e.strerror or e})", file=sys.stderr)
        return 2
    log = logging.getLogger("baseline")
    log.info("Command: %s", " ".join(sys.argv))
    try:
        # One training run per folder at a time (rank 0 writes every file).
        locked = launcher_rank() == 0 and not args.evaluate
        with folder_lock(args.logs_dir) if locked else contextlib.nullcontext():
            run_baseline(config_from_args(args))
    except FDGANError as e:
        log.error("error: %s", e)
        return 2
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        log.error("error: another process of this torchrun job stopped (its error is above); stopping too")
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; continue with --resume %s", os.path.join(args.logs_dir, "checkpoint.pth.tar"))
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
