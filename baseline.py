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
import logging
import os
import sys

from reid import datasets, models
from reid.errors import FDGANError
from reid.pipelines.baseline import BaselineConfig, run_baseline
from reid.utils.argtypes import non_negative_int, positive_int
from reid.utils.logging import setup_logging
from reid.utils.runtime import launcher_rank


def build_parser() -> argparse.ArgumentParser:
    """The release's flags (same names and defaults) plus this project's extras."""
    p = argparse.ArgumentParser(description="Stage I: Siamese re-ID baseline (train or --evaluate)")
    p.add_argument("-d", "--dataset", type=str, default="market1501", choices=datasets.names())
    p.add_argument("-b", "--batch-size", type=positive_int, default=256, help="pairs per batch (2x images)")
    p.add_argument("-j", "--workers", type=non_negative_int, default=4)
    p.add_argument("--split", type=int, default=0)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--combine-trainval", action="store_true", help="train on train+val")
    p.add_argument("-a", "--arch", type=str, default="resnet50", choices=models.names())
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--np-ratio", type=int, default=3, help="negative pairs per positive pair")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--step-size", type=positive_int, default=40, help="epochs between lr x0.1 steps")
    p.add_argument("--resume", type=str, default="", metavar="PATH",
                   help="weights to evaluate, or a checkpoint.pth.tar whose training run to continue")
    p.add_argument("--evaluate", action="store_true", help="evaluation only (needs --resume)")
    p.add_argument("--epochs", type=non_negative_int, default=50)
    p.add_argument("--eval-step", type=positive_int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-dir", type=str, metavar="PATH", default="./datasets")
    p.add_argument("--logs-dir", type=str, metavar="PATH", default="./checkpoints")
    # Beyond the release.
    p.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet weights")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--protocol", type=str, default="openreid", choices=["openreid", "official", "both"],
                   help="query/gallery protocol of the test (spec section 7)")
    p.add_argument("--rerank-topk", type=int, default=None,
                   help="second-stage candidates (default 75 after training, 100 with --evaluate)")
    p.add_argument("--num-val", type=float, default=None,
                   help="validation identities: a count, or a fraction if < 1 (dataset default)")
    p.add_argument("--max-iters-per-epoch", type=int, default=None, help="cap iterations (quick runs)")
    p.add_argument("--augment", type=str, default="release", choices=["release", "flip", "none"],
                   help="training augmentation: release = crop + erasing + flip; flip; none (quick runs)")
    p.add_argument("--rerank", type=str, default="none", choices=["none", "k-reciprocal"],
                   help="also report k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) of the first stage")
    p.add_argument("--compile-rescoring", action="store_true",
                   help="second stage through a torch.compile kernel (for GPUs and many evaluations; compiling takes seconds)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (exact resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over all processes (SyncBatchNorm)")
    p.add_argument("--amp", action="store_true",
                   help="mixed-precision training: fp16 with loss scaling on CUDA, bf16 on CPU")
    p.add_argument("--amp-dtype", type=str, default=None, choices=["fp16", "bf16"],
                   help="with --amp: fp16 (CUDA default) or bf16 (the only type on CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for images and weights")
    return p


def config_from_args(args: argparse.Namespace) -> BaselineConfig:
    """Translate parsed flags into a :class:`BaselineConfig`."""
    fields = {k: v for k, v in vars(args).items() if k in BaselineConfig.__dataclass_fields__}
    return BaselineConfig(**fields, pretrained=not args.no_pretrained, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.evaluate and args.resume:
        log_file = os.path.join(os.path.dirname(os.path.abspath(args.resume)), "log_test.txt")
    else:
        log_file = os.path.join(args.logs_dir, "log.txt")
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
        run_baseline(config_from_args(args))
    except FDGANError as e:
        log.error("error: %s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; continue with --resume %s", os.path.join(args.logs_dir, "checkpoint.pth.tar"))
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
