"""Benchmark: one Stage II (or III) iteration (FDGANModel stage=1 or 2, optimize_parameters) here.

For each configuration (ResNet-18 / ResNet-50 at 128 x 64 / 256 x 128), four models with the
same weights take the same steps on the same random pose-pair batches under the same seeds. They
start, as a real Stage II run does, from a Stage I checkpoint of E (written to a temp dir): a
randomly initialised Siamese network whose BatchNorm statistics were estimated on random images
(with the initial statistics, mean 0 and variance 1, a frozen-BN ResNet-50's activations grow
layer by layer and Di's loss reaches thousands). With ``--stage 2`` (paper Stage III, E trained
too) they start from the four networks of a stage 1 model saved from that file. The variants:

* release: ``share_di_features=False, skip_unused_grads=False, fused_optimizers=False``, the
  release's update sequence (Di runs its full Siamese network on (origin, target) and on
  (origin, fake), and again on (origin, fake) in G's step, which also computes Di's and Dp's weight
  gradients and back-propagates through E, frozen in stage 1; the optimisers loop over the
  parameters);
* shared: ``share_di_features=True``, otherwise the release's (Di's frozen-BN backbone runs once
  over the origins per update, target and fake share one batch, the origins need no gradient in
  G's step);
* ours: the defaults: shared, G's step computes no gradients that no optimiser uses (Di's, Dp's,
  and in stage 1 the frozen E's), and the optimisers use PyTorch's fused kernels.

The variants take turns step by step so machine load hits them alike. Two times are reported per
variant, each the best of the timed steps: wall-clock seconds (images/s = 2 images per pair over
it), and the process's CPU seconds, which other processes sharing the cores disturb much less
(with --threads 1 it is the cost of the step on one core). Before every step the variants are
reset to the release model's state (networks and optimisers), so each step's 7 reported losses
are compared from the same state: the largest |loss difference| from the release is reported
(absolute, and relative to the loss). Without the reset, GAN training amplifies the rounding
differences of batched convolutions from step to step.

Usage: python scripts/bench/bench_train_step.py [--quick] [--batch-size PAIRS] [--steps N] [--threads N]
       [--stage {1,2}] [--config resnet18:256x128 ...]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from fdgan.model import LOSS_NAMES, NET_NAMES, FDGANModel  # noqa: E402
from reid.models import build_siamese  # noqa: E402
from reid.utils.serialization import save_checkpoint  # noqa: E402

CONFIGS = [("resnet18", 128, 64), ("resnet18", 256, 128), ("resnet50", 128, 64), ("resnet50", 256, 128)]


def make_batch(pairs: int, height: int, width: int, seed: int) -> list:
    """A pose-pair batch like the pose loader's: every other pair is positive."""
    gen = torch.Generator().manual_seed(seed)
    pids1 = torch.arange(pairs)
    pids2 = torch.where(pids1 % 2 == 0, pids1, pids1 + pairs)

    def half(pids: torch.Tensor) -> dict:
        n = len(pids)
        return {"origin": torch.randn(n, 3, height, width, generator=gen).clamp(-2, 2),
                "target": torch.randn(n, 3, height, width, generator=gen).clamp(-2, 2),
                "posemap": torch.rand(n, 18, height, width, generator=gen), "pid": pids}
    return [half(pids1), half(pids2)]


def make_stage1_checkpoint(arch: str, height: int, width: int, folder: str) -> str:
    """A Stage I checkpoint of a random Siamese net with BN statistics estimated on random images."""
    torch.manual_seed(0)
    net = build_siamese(arch, pretrained=False, num_classes=2)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
            m.reset_running_stats()
    net.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, height, width, generator=gen), torch.randn(8, 3, height, width, generator=gen))
    path = os.path.join(folder, f"{arch}_{height}x{width}_model_best.pth.tar")
    save_checkpoint({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


VARIANTS = {"release": dict(share_di_features=False, skip_unused_grads=False, fused_optimizers=False),
            "shared": dict(share_di_features=True, skip_unused_grads=False, fused_optimizers=False),
            "ours": dict(share_di_features=True, skip_unused_grads=True, fused_optimizers=True)}


def build(arch: str, height: int, width: int, netE: str, stage: int = 1, **flags: bool) -> FDGANModel:
    """A model of ``stage`` 1 from the Stage I file ``netE``, or of stage 2 from the four files of a
    stage 1 model saved next to it (written on the first call)."""
    torch.manual_seed(0)  # G and Dp initialisation
    if stage == 1:
        model = FDGANModel(stage=1, arch=arch, height=height, width=width, netE_pretrain=netE, **flags)
    else:
        folder = os.path.dirname(netE)
        files = {f"net{n}_pretrain": os.path.join(folder, f"stage1_net_{n}.pth") for n in NET_NAMES}
        if not os.path.exists(files["netE_pretrain"]):
            build(arch, height, width, netE).save(folder, "stage1")
        model = FDGANModel(stage=2, arch=arch, height=height, width=width, **files, **flags)
    model.train_mode()
    return model


def run_config(arch: str, height: int, width: int, pairs: int, steps: int,
               stage: int = 1) -> Dict[str, Tuple[float, ...]]:
    """{variant: (best wall s, best CPU s, max |loss diff|, max relative loss diff)} per step."""
    with tempfile.TemporaryDirectory() as folder:
        netE = make_stage1_checkpoint(arch, height, width, folder)
        variants = {name: build(arch, height, width, netE, stage, **flags) for name, flags in VARIANTS.items()}
    for model in variants.values():
        for name in NET_NAMES:
            for key, value in model.net(name).state_dict().items():
                if not torch.equal(value, variants["release"].net(name).state_dict()[key]):
                    raise RuntimeError(f"net_{name}.{key} differs between the variants at the start")
    times: Dict[str, List[float]] = {k: [] for k in variants}
    cpu_times: Dict[str, List[float]] = {k: [] for k in variants}
    diffs: Dict[str, float] = {k: 0.0 for k in variants}
    rel_diffs: Dict[str, float] = {k: 0.0 for k in variants}
    for step in range(steps + 1):  # step 0 warms up
        batch = make_batch(pairs, height, width, seed=step)
        losses = {}
        state = copy.deepcopy(variants["release"].state_dict())
        for name, model in variants.items():
            model.load_state_dict(copy.deepcopy(state))  # optimisers keep (and update) its tensors
            torch.manual_seed(1000 + step)  # noise and G's dropout
            model.set_input(batch)
            start, cpu_start = time.perf_counter(), time.process_time()
            model.optimize_parameters()
            if step:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
            losses[name] = model.get_current_errors()
        for name in variants:
            for k in LOSS_NAMES:
                ref = losses["release"][k]
                diff = abs(losses[name][k] - ref)
                diffs[name] = max(diffs[name], diff)
                rel_diffs[name] = max(rel_diffs[name], diff / max(abs(ref), 1e-12))
    return {name: (min(times[name]), min(cpu_times[name]), diffs[name], rel_diffs[name]) for name in variants}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 at 128 x 64 only, 2 timed steps")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch (2 images each)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1,
                        help="train.py's --stage: 1 = paper Stage II (default), 2 = Stage III (E trained too)")
    parser.add_argument("--config", action="append", choices=[f"{a}:{h}x{w}" for a, h, w in CONFIGS],
                        help="run only this configuration (repeatable; default: all four)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = CONFIGS[:1] if args.quick else CONFIGS
    if args.config:
        configs = [c for c in CONFIGS if f"{c[0]}:{c[1]}x{c[2]}" in args.config]
    steps = 2 if args.quick else args.steps
    paper_stage = "Stage II" if args.stage == 1 else "Stage III"
    print(f"{paper_stage} step (--stage {args.stage}), {args.batch_size} pairs ({2 * args.batch_size} images), "
          f"best of {steps} steps; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for arch, height, width in configs:
        res = run_config(arch, height, width, args.batch_size, steps, args.stage)
        images = 2 * args.batch_size
        print(f"{arch} {height}x{width}:")
        for name in VARIANTS:
            wall, cpu, diff, rel = res[name]
            line = f"  {name:8s} wall {wall:7.2f} s ({images / wall:5.2f} img/s)  CPU {cpu:7.2f} s"
            if name != "release":
                target = " (target >= 1.3x)" if args.stage == 1 else ""
                line += (f"  ratio wall {res['release'][0] / wall:.2f}x, CPU {res['release'][1] / cpu:.2f}x"
                         f"{target}  max |loss diff| {diff:.2e} (relative {rel:.1e})")
            print(line)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
