"""Benchmark: one Stage II (or III) iteration (FDGANModel stage=1 or 2, optimize_parameters) here.

For each configuration (ResNet-18 / ResNet-50 at 128 x 64 / 256 x 128), two models with the
same weights take the same steps on the same random pose-pair batches under the same seeds. They
start, as a real Stage II run does, from a Stage I checkpoint of E (written to a temp dir): a
randomly initialised Siamese network whose BatchNorm statistics were estimated on random images
(with the initial statistics, mean 0 and variance 1, a frozen-BN ResNet-50's activations grow
layer by layer and Di's loss reaches thousands). With ``--stage 2`` (paper Stage III, E trained
too) they start from the four networks of a stage 1 model saved from that file. The variants:

* release: the release's update sequence, written out below (:class:`ReleaseStep`, not imported
  from the library): Di runs its full Siamese network on (origin, target) and on (origin, fake),
  and again on (origin, fake) in G's step, which also computes Di's and Dp's weight gradients and
  back-propagates through E, frozen in stage 1; the optimisers loop over the parameters;
* ours: ``FDGANModel.optimize_parameters``: Di's frozen-BN backbone runs once over the origins per
  update (target and fake share one batch, the origins need no gradient in G's step), G's step
  computes no gradients that no optimiser uses (Di's, Dp's, and in stage 1 the frozen E's), and
  the optimisers use PyTorch's fused kernels.

The variants take turns step by step so machine load hits them alike. Two times are reported per
variant, each the best of the timed steps: wall-clock seconds (images/s = 2 images per pair over
it), and the process's CPU seconds, which other processes sharing the cores disturb much less
(with --threads 1 it is the cost of the step on one core). Before every step the variants are
reset to the release model's state (networks and optimisers), so each step's 7 reported losses
are compared from the same state: the largest |loss difference| from the release is reported
(absolute, and relative to the loss), and the script exits with status 1 when a relative
difference exceeds 1e-5. Without the reset, GAN training amplifies the rounding differences of
batched convolutions from step to step.

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
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from fdgan.model import LOSS_NAMES, NET_NAMES, FDGANModel, GANConfig  # noqa: E402
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


#: Largest relative loss difference from the release that counts as equal (float rounding).
MAX_RELATIVE_DIFF = 1e-5


class ReleaseStep:
    """The release's ``FDGANModel.optimize_parameters`` (its fdgan/model.py), written out, on the
    networks, inputs and losses of ``model`` (hard discriminator targets, no autocast).

    The optimisers are ``model``'s, rebuilt without the fused kernels (the release's loop over the
    parameters). In stage 1 E takes gradients again: the release back-propagates G's loss through
    the frozen E, then never uses the result.
    """

    def __init__(self, model: FDGANModel) -> None:
        self.model = model
        model.net_E.requires_grad_(True)
        for name, opt in model.optimizers.items():
            groups = [{k: v for k, v in g.items() if k != "fused"} for g in opt.param_groups]
            model.optimizers[name] = type(opt)(groups, **{k: v for k, v in opt.defaults.items() if k != "fused"})
        self.losses: Dict[str, float] = {}

    def optimize_parameters(self) -> None:
        m, c, b = self.model, self.model.config, self.model.batch_pairs
        origin, target, posemap, label = m.origin, m.target, m.posemap, m.label
        f1, f2, id_score = m.net_E(origin[:b], origin[b:])
        fake = m.net_G(posemap, torch.cat([f1, f2]).view(2 * b, -1, 1, 1), m.noise)

        m.optimizers["Di"].zero_grad(set_to_none=True)
        loss_di = 0.5 * (m.criterion_gan_d(m.net_Di(origin, target)[2], True)
                         + m.criterion_gan_d(m.net_Di(origin, fake.detach())[2], False))
        loss_di.backward()
        m.optimizers["Di"].step()

        m.optimizers["Dp"].zero_grad(set_to_none=True)
        loss_dp = 0.5 * (m.criterion_gan_d(m.net_Dp(torch.cat([posemap, target], 1)), True)
                         + m.criterion_gan_d(m.net_Dp(torch.cat([posemap, fake.detach()], 1)), False))
        loss_dp.backward()
        m.optimizers["Dp"].step()

        m.optimizers["G"].zero_grad(set_to_none=True)
        loss_gan_di = m.criterion_gan_g(m.net_Di(origin, fake)[2], True)
        loss_gan_dp = m.criterion_gan_g(m.net_Dp(torch.cat([posemap, fake], 1)), True)
        loss_r = F.l1_loss(fake, target)
        loss_v = F.cross_entropy(id_score, label)
        pos = label.bool()
        loss_sp = F.l1_loss(fake[:b][pos], fake[b:][pos]) if bool(pos.any()) else torch.zeros((), device=m.device)
        loss = loss_gan_di + loss_gan_dp + c.lambda_recon * loss_r + c.lambda_veri * loss_v + c.lambda_sp * loss_sp
        loss.backward()
        m.optimizers["G"].step()
        if m.stage == 1:  # frees the frozen E's gradients, which nothing uses
            m.net_E.zero_grad(set_to_none=True)
        self.losses = dict(G_v=loss_v.item(), G_r=loss_r.item(), G_sp=loss_sp.item(), G_gan_Di=loss_gan_di.item(),
                           G_gan_Dp=loss_gan_dp.item(), D_i=loss_di.item(), D_p=loss_dp.item())

    def get_current_errors(self) -> "OrderedDict[str, float]":
        return OrderedDict((k, self.losses[k]) for k in LOSS_NAMES)


VARIANTS = ("release", "ours")


def build(arch: str, height: int, width: int, netE: str, stage: int = 1) -> FDGANModel:
    """A model of ``stage`` 1 from the Stage I file ``netE``, or of stage 2 from the four files of a
    stage 1 model saved next to it (written on the first call)."""
    torch.manual_seed(0)  # G and Dp initialisation
    if stage == 1:
        model = FDGANModel(GANConfig(stage=1, arch=arch, height=height, width=width, netE_pretrain=netE))
    else:
        folder = os.path.dirname(netE)
        files = {f"net{n}_pretrain": os.path.join(folder, f"stage1_net_{n}.pth") for n in NET_NAMES}
        if not os.path.exists(files["netE_pretrain"]):
            build(arch, height, width, netE).save(folder, "stage1")
        model = FDGANModel(GANConfig(stage=2, arch=arch, height=height, width=width, **files))
    model.train_mode()
    return model


def run_config(arch: str, height: int, width: int, pairs: int, steps: int,
               stage: int = 1) -> Dict[str, Tuple[float, ...]]:
    """{variant: (best wall s, best CPU s, max |loss diff|, max relative loss diff)} per step."""
    with tempfile.TemporaryDirectory() as folder:
        netE = make_stage1_checkpoint(arch, height, width, folder)
        variants = {name: build(arch, height, width, netE, stage) for name in VARIANTS}
    steps_of = {"release": ReleaseStep(variants["release"]), "ours": variants["ours"]}
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
            steps_of[name].optimize_parameters()
            if step:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
            losses[name] = steps_of[name].get_current_errors()
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
    equal = True
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
                equal = equal and rel <= MAX_RELATIVE_DIFF
            print(line)
        sys.stdout.flush()
    print("losses equal to the release's" if equal else
          f"losses differ from the release's by more than {MAX_RELATIVE_DIFF:g} relative")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
