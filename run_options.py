"""The run flags baseline.py and train.py share, defined once; they fill
:class:`reid.pipelines.run.RunConfig`. Kept apart from options.py (train.py's options) so that
baseline.py does not load the GAN package."""
from __future__ import annotations

import argparse

from reid import datasets
from reid.evaluators import RESCORE_TOPK, TEST_RESCORE_TOPK
from reid.pipelines.run import RunConfig
from reid.utils.argtypes import non_negative_int, positive_int

_R = RunConfig()


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Add the flags of :class:`RunConfig` (shared by baseline.py and train.py) to ``p``."""
    p.add_argument("-d", "--dataset", type=str, default=_R.dataset, choices=datasets.names())
    p.add_argument("-j", "--workers", type=non_negative_int, default=_R.workers)
    p.add_argument("--height", type=int, default=_R.height)
    p.add_argument("--width", type=int, default=_R.width)
    p.add_argument("--split", type=int, default=_R.split)
    p.add_argument("--seed", type=int, default=_R.seed)
    # Beyond the release.
    p.add_argument("--num-val", type=float, default=_R.num_val,
                   help="validation identities: a count, or a fraction if < 1 (dataset default)")
    p.add_argument("--device", type=str, default=_R.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random initialisation instead of ImageNet weights (train.py: stage 1 without "
                        "--netE-pretrain; tests only)")
    p.add_argument("--pretrained-weights", type=str, default=_R.pretrained_weights, metavar="PATH",
                   help="start E's backbone from this local torchvision-format weights file instead of "
                        "downloading ImageNet's (e.g. a copied ImageNet file, or scripts/pretrain_backbone.py's)")
    p.add_argument("--max-iters-per-epoch", type=positive_int, default=_R.max_iters_per_epoch,
                   help="cap iterations (quick runs)")
    p.add_argument("--protocol", type=str, default=_R.protocol, choices=["openreid", "official", "both"],
                   help="query/gallery protocol of the test (openreid: the release's; official: the benchmark's)")
    p.add_argument("--rerank-topk", type=positive_int, default=_R.rerank_topk,
                   help=f"second-stage candidates of the test (default: {TEST_RESCORE_TOPK}; "
                        f"baseline.py after training: {RESCORE_TOPK})")
    p.add_argument("--rerank", type=str, default=_R.rerank, choices=["none", "k-reciprocal"],
                   help="also report k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) of the first stage")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (exact resume)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over all processes (SyncBatchNorm)")
    p.add_argument("--amp", action="store_true",
                   help="mixed-precision training: fp16 with loss scaling on CUDA, bf16 on CPU")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run the output folder already holds (otherwise such a folder is refused)")
    p.add_argument("--amp-dtype", type=str, default=_R.amp_dtype, choices=["fp16", "bf16"],
                   help="with --amp: fp16 (CUDA default) or bf16 (the only type on CPU)")
