"""Is this project ready for the GPU at hand? One command: ``make gpu-check`` (docs/gpu.md).

Renders a synthetic set, then runs, in this order (each check a dict with ``name`` and ``ok`` in
``<out>/results.json``; ``ok`` is null for a check that cannot run here, e.g. two processes on one
GPU):

* ``cuda_tests``: the tests marked ``cuda`` (pytest ``-m cuda``; they skip without CUDA);
* ``stage1_*``, ``stage2_*``, ``stage3_*``: baseline.py and train.py --stage 1 / 2 as
  subprocesses, in fp32 and with ``--amp`` (fp16 with its GradScaler on CUDA, and bf16 where the
  GPU supports it; bf16 on the CPU); every logged loss must be finite;
* ``amp_step_*``: one step of each stage in mixed precision from the same state and batch as an
  fp32 step; every loss within ``AMP_RTOL`` relative (or ``AMP_ATOL`` absolute) of fp32's;
* ``torchrun_backend``: a process group of the device's backend (nccl on CUDA, gloo on the CPU)
  all-reduces; ``torchrun_1proc``: train.py under torchrun with one process logs the losses and
  saves the weights of the plain run; ``torchrun_2proc``: two processes run (where two GPUs exist;
  always on the CPU);
* ``throughput_stage*``: images per second of Stage I and of the Stage II and III steps
  (2 images per pair), fp32 and fp16 (fp32 only on the CPU);
* ``memory_stage*``: peak memory of one step at two batch sizes (on the CPU a stand-in, see
  :func:`peak_bytes`); the difference over the difference in pairs is the memory per pair, and
  the largest batch that fits 11, 24, 40 and 80 GiB follows (``MEMORY_USABLE`` of the card for the step, the rest kept for the CUDA context
  and the allocator's fragmentation);
* ``loader``: items per second of the Stage II/III pose-pair loader with ``-j`` workers against
  the items per second the fastest Stage II step consumes.

Writes ``results.json`` and ``results.md``; exits 1 when any check failed.

Usage: python scripts/gpu_check.py [--device cuda|cpu] [--quick] [--out DIR] [-j N] [--pairs N]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts", "bench"))

from bench_loader import images_per_second  # noqa: E402
from fdgan.model import FDGANModel, GANConfig  # noqa: E402
from fdgan.pipeline import drop_resume_files  # noqa: E402
from reid.datasets.synthetic_render import SyntheticConfig, generate_synthetic_dataset  # noqa: E402
from reid.errors import ConfigError  # noqa: E402
from reid.models import build_siamese  # noqa: E402
from reid.pipelines.common import load_dataset  # noqa: E402
from reid.trainers import SiameseTrainer  # noqa: E402
from reid.utils.amp import resolve_mixed_precision  # noqa: E402
from reid.utils.data.loaders import build_pair_loader, build_pose_pair_loader  # noqa: E402
from reid.utils.logging import setup_logging  # noqa: E402
from reid.utils.osutils import atomic_write_text  # noqa: E402
from reid.utils.runtime import configure_backends, resolve_device  # noqa: E402
from reid.utils.serialization import copy_state_dict, load_checkpoint  # noqa: E402

logger = logging.getLogger("gpu_check")

# A mixed-precision step's losses against fp32's from the same state and batch (as tests/test_amp.py).
AMP_RTOL, AMP_ATOL = 5e-2, 5e-3
# torchrun with one process against the plain run (both --deterministic): the logged losses, and the
# saved weights relative to each tensor's largest value.
TORCHRUN_RTOL = 1e-5
# Card sizes of the batch table, in GiB, and the share of a card a step may take.
CARD_GIB = (11, 24, 40, 80)
MEMORY_USABLE = 0.9
GIB = 1 << 30


@dataclass(frozen=True)
class Sizes:
    """What the runs train: the network, image size, batch and step counts."""

    arch: str
    height: int
    width: int
    pairs: int  # pairs per batch of the stage runs, the amp steps and the throughput
    pose_feature_size: int
    noise_feature_size: int
    iters: int  # iterations of each stage run
    steps: int  # timed steps of each throughput figure
    memory_pairs: Tuple[int, int]  # the two batch sizes of the memory figures
    loader_batches: int
    num_ids: int  # identities of the rendered set


FULL = Sizes("resnet50", 256, 128, 16, 128, 256, 3, 5, (8, 16), 10, 40)
QUICK = Sizes("resnet18", 64, 32, 8, 8, 8, 1, 2, (8, 16), 6, 12)


# ----------------------------------------------------------------------------- helpers
def max_batch(per_pair: float, fixed: float, card_gib: float) -> int:
    """Largest number of pairs whose step fits ``MEMORY_USABLE`` of a ``card_gib`` GiB card (0: none)."""
    room = MEMORY_USABLE * card_gib * GIB - fixed
    return max(0, int(room // per_pair)) if per_pair > 0 else 0


def peak_bytes(device: torch.device, fn: Callable[[], Any]) -> int:
    """Memory of the step ``fn`` runs: CUDA's peak allocated bytes; on the CPU, a stand-in: the
    bytes of the tensors the forward passes keep for the backward (the CPU's resident set keeps
    freed memory, so its peak does not follow the batch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def close(a: float, b: float, rtol: float, atol: float = 0.0) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rtol * abs(b) + atol


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slice_pairs(batch: list, n: int) -> list:
    """The first ``n`` pairs of a loader batch (pose dicts or Stage I tuples)."""
    if isinstance(batch[0], dict):
        return [{k: v[:n] for k, v in half.items()} for half in batch]
    return [tuple(v[:n] for v in half) for half in batch]


def train_losses(run_dir: str) -> List[Dict[str, float]]:
    """The losses of every line of train.py's ``loss_log.txt``."""
    out = []
    with open(os.path.join(run_dir, "loss_log.txt")) as f:
        for line in f:
            if line.startswith("(epoch:"):
                tail = line.split(")", 1)[1]
                out.append({k: float(v) for k, v in re.findall(r"(\w+): (\S+)", tail)})
    return out


def baseline_losses(logs_dir: str) -> List[float]:
    with open(os.path.join(logs_dir, "log.txt")) as f:
        return [float(v) for v in re.findall(r"Epoch \d+: loss (\S+),", f.read())]


class Checker:
    """Runs the checks and collects their results."""

    def __init__(self, device: torch.device, sizes: Sizes, out: str, workers: int, timeout: float) -> None:
        self.device, self.sizes, self.out, self.workers, self.timeout = device, sizes, out, workers, timeout
        self.data = os.path.join(out, "data")
        self.runs = os.path.join(out, "runs")
        self.checks: List[Dict[str, Any]] = []
        # The CPU rehearsal's runs load in the main process: worker start-up would dominate them.
        self.run_workers = workers if device.type == "cuda" else 0
        if device.type == "cuda":
            self.amp_dtypes = ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        else:
            self.amp_dtypes = ["bf16"]

    # --------------------------------------------------------------------- bookkeeping
    def record(self, name: str, ok: Optional[bool], **figures: Any) -> Dict[str, Any]:
        check = {"name": name, "ok": ok, **figures}
        self.checks.append(check)
        logger.info("%s: %s %s", name, {True: "ok", False: "FAILED", None: "skipped"}[ok],
                    {k: v for k, v in figures.items() if k not in ("output", "table")})
        return check

    def guarded(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn``; an exception becomes a failed check ``name`` with the error."""
        try:
            fn()
        except Exception as e:  # a check that crashes is a finding, not the end of the report
            logger.exception("%s crashed", name)
            self.record(name, False, error=f"{type(e).__name__}: {e}"[:2000])

    def run_cmd(self, args: Sequence[str], torchrun: int = 0) -> subprocess.CompletedProcess:
        cmd = [sys.executable]
        if torchrun:
            cmd += ["-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_addr", "127.0.0.1",
                    "--master_port", str(free_port())]
        cmd += list(args)
        env = dict(os.environ, PYTHONPATH=REPO)
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=self.timeout)

    # --------------------------------------------------------------------- data
    def render(self) -> None:
        s = self.sizes
        summary = generate_synthetic_dataset(os.path.join(self.data, "synthetic"), SyntheticConfig(
            num_ids=s.num_ids, num_cams=3, images_per_cam=3, height=s.height, width=s.width, seed=0))
        self.dataset = load_dataset("synthetic", self.data, require_poses=True)
        logger.info("rendered set: %d images at %d x %d", summary["num_images"], s.height, s.width)

    # --------------------------------------------------------------------- checks
    def cuda_tests(self) -> None:
        res = self.run_cmd(["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"])
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", res.stdout)}
        ok = res.returncode == 0 and counts.get("failed", 0) == 0 and counts.get("error", 0) == 0
        self.record("cuda_tests", ok, passed=counts.get("passed", 0), skipped=counts.get("skipped", 0),
                    failed=counts.get("failed", 0), output=res.stdout[-1500:])

    def _common(self) -> List[str]:
        s = self.sizes
        return ["--height", str(s.height), "--width", str(s.width), "-b", str(s.pairs), "-j", str(self.run_workers),
                "--device", self.device.type, "--no-progress", "--no-pretrained"]

    @staticmethod
    def _amp_flags(dtype: Optional[str]) -> List[str]:
        return [] if dtype is None else ["--amp", "--amp-dtype", dtype]

    def _train_args(self, name: str, stage: int, dtype: Optional[str], *extra: str) -> List[str]:
        s = self.sizes
        return ["train.py", "--stage", str(stage), "-d", "synthetic", "--dataroot", self.data, "--checkpoints",
                self.runs, "--name", name, "--arch", s.arch, "--pose-feature-size", str(s.pose_feature_size),
                "--noise-feature-size", str(s.noise_feature_size), "--niter", "1", "--niter-decay", "0",
                "--max-iters-per-epoch", str(s.iters), "--save-step", "1", "--eval-step", "1", "--rerank-topk", "5",
                "--display-id", "0", "--no_html", "--print-freq", str(s.pairs), "--display-freq", str(10 ** 9),
                *self._common(), *self._amp_flags(dtype), *extra]

    def _record_run(self, name: str, res: subprocess.CompletedProcess, losses: List[float], **figures: Any) -> bool:
        drop_resume_files(os.path.join(self.runs, name))  # the checks read logs and weights files only
        ok = res.returncode == 0 and bool(losses) and all(math.isfinite(v) for v in losses)
        self.record(name, ok, returncode=res.returncode, losses=losses, **figures,
                    **({} if ok else {"output": (res.stdout + res.stderr)[-3000:]}))
        return ok

    def stage_runs(self) -> None:
        """Stage I, II and III as the CLIs run them, fp32 and mixed precision (II and III start from fp32 files)."""
        s = self.sizes
        for dtype in [None] + self.amp_dtypes:
            tag = dtype or "fp32"
            logs = os.path.join(self.runs, f"stage1_{tag}")
            res = self.run_cmd(["baseline.py", "-d", "synthetic", "--data-dir", self.data, "--logs-dir", logs,
                                "-a", s.arch, "--epochs", "1", "--max-iters-per-epoch", str(s.iters),
                                "--rerank-topk", "5", *self._common(), *self._amp_flags(dtype)])
            self._record_run(f"stage1_{tag}", res, baseline_losses(logs) if res.returncode == 0 else [])
        e1 = os.path.join(self.runs, "stage1_fp32", "model_best.pth.tar")
        for dtype in [None] + self.amp_dtypes:
            tag = dtype or "fp32"
            # fp32 deterministic: torchrun_1proc compares its losses with this run's.
            extra = ["--deterministic"] if dtype is None else []
            res = self.run_cmd(self._train_args(f"stage2_{tag}", 1, dtype, "--netE-pretrain", e1, *extra))
            self._record_run(f"stage2_{tag}", res, self._flat_losses(f"stage2_{tag}", res))
        nets = self.stage2_nets()
        for dtype in [None] + self.amp_dtypes:
            tag = dtype or "fp32"
            flags = [f for n, p in nets.items() for f in (f"--net{n}-pretrain", p)]
            res = self.run_cmd(self._train_args(f"stage3_{tag}", 2, dtype, *flags))
            self._record_run(f"stage3_{tag}", res, self._flat_losses(f"stage3_{tag}", res))

    def stage2_nets(self) -> Dict[str, str]:
        return {n: os.path.join(self.runs, "stage2_fp32", f"1_net_{n}.pth") for n in ("E", "G", "Di", "Dp")}

    def _flat_losses(self, name: str, res: subprocess.CompletedProcess) -> List[float]:
        if res.returncode != 0:
            return []
        return [v for line in train_losses(os.path.join(self.runs, name)) for k, v in line.items() if k != "time"]

    def torchrun(self) -> None:
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        code = ("import torch, torch.distributed as dist; dist.init_process_group('%s'); r = dist.get_rank(); "
                "dev = 'cuda:%%d' %% r if '%s' == 'nccl' else 'cpu'; "
                "torch.cuda.set_device(r) if '%s' == 'nccl' else None; "
                "t = torch.full((3,), r + 1.0, device=dev); dist.all_reduce(t); "
                "print('SUM', t.tolist()); dist.destroy_process_group()" % (backend, backend, backend))
        res = self.run_cmd(["--no-python", sys.executable, "-c", code], torchrun=1)
        self.record("torchrun_backend", res.returncode == 0 and "SUM [1.0, 1.0, 1.0]" in res.stdout,
                    backend=backend, **({} if res.returncode == 0 else {"output": res.stderr[-2000:]}))

        e1 = os.path.join(self.runs, "stage1_fp32", "model_best.pth.tar")
        res = self.run_cmd(self._train_args("torchrun_1proc", 1, None, "--netE-pretrain", e1, "--deterministic"),
                           torchrun=1)
        got = self._flat_losses("torchrun_1proc", res)
        want = [v for line in train_losses(os.path.join(self.runs, "stage2_fp32")) for k, v in line.items()
                if k != "time"]
        ok = res.returncode == 0 and len(got) == len(want) > 0 and all(
            close(a, b, TORCHRUN_RTOL, 1e-6) for a, b in zip(got, want))
        worst = float("nan")
        if ok:  # the logged losses have 3 decimals; the saved weights must agree too
            worst = 0.0
            for n in self.stage2_nets():
                one = torch.load(os.path.join(self.runs, "torchrun_1proc", f"1_net_{n}.pth"), weights_only=True)
                plain = torch.load(os.path.join(self.runs, "stage2_fp32", f"1_net_{n}.pth"), weights_only=True)
                for k, v in plain.items():
                    if v.is_floating_point():
                        worst = max(worst, float((one[k] - v).abs().max()) / max(float(v.abs().max()), 1e-12))
            ok = worst <= TORCHRUN_RTOL
        self.record("torchrun_1proc", ok, losses=got, plain_losses=want, rtol=TORCHRUN_RTOL,
                    weights_max_relative_difference=worst,
                    **({} if res.returncode == 0 else {"output": (res.stdout + res.stderr)[-3000:]}))

        gpus = torch.cuda.device_count() if self.device.type == "cuda" else 0
        if self.device.type == "cuda" and gpus < 2:
            self.record("torchrun_2proc", None, skipped=f"needs 2 GPUs, {gpus} visible")
            return
        res = self.run_cmd(self._train_args("torchrun_2proc", 1, None, "--netE-pretrain", e1), torchrun=2)
        self._record_run("torchrun_2proc", res, self._flat_losses("torchrun_2proc", res), processes=2)

    # --------------------------------------------------------------------- in-process steps
    def stage1_batch(self, pairs: int) -> list:
        torch.manual_seed(0)
        loader = build_pair_loader(self.dataset.trainval, self.dataset.images_dir, self.sizes.height,
                                   self.sizes.width, pairs, 0, augment="none")
        return next(iter(loader))

    def pose_batch(self, pairs: int) -> list:
        torch.manual_seed(0)
        loader = build_pose_pair_loader(self.dataset.trainval, self.dataset.trainval_pid2files,
                                        self.dataset.images_dir, self.dataset.poses_dir, self.sizes.height,
                                        self.sizes.width, pairs, 0, draw_maps=self.device.type != "cuda")
        return next(iter(loader))

    def stepper(self, stage: int, dtype: Optional[str]) -> Callable[[list], Dict[str, float]]:
        """A fresh model of ``stage`` (1: Stage I, 2: II, 3: III) from this check's fp32 files; returns
        its step function (one update on a batch, returning the step's losses)."""
        mp = resolve_mixed_precision(dtype is not None, dtype, self.device)
        s = self.sizes
        torch.manual_seed(0)
        if stage == 1:
            net = build_siamese(s.arch, pretrained=False, num_classes=2)
            copy_state_dict(load_checkpoint(os.path.join(self.runs, "stage1_fp32", "model_best.pth.tar")), net)
            net.to(self.device)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            trainer = SiameseTrainer(net, nn.CrossEntropyLoss().to(self.device), device=self.device,
                                     mixed_precision=mp)

            def step(batch: list) -> Dict[str, float]:
                return {"loss": trainer.train(0, [batch], optimizer, progress=False)["loss"]}
            return step
        settings = dict(arch=s.arch, height=s.height, width=s.width, pose_feature_size=s.pose_feature_size,
                        noise_feature_size=s.noise_feature_size, pretrained=False, niter=1, niter_decay=0)
        if stage == 2:
            config = GANConfig(stage=1, netE_pretrain=os.path.join(self.runs, "stage1_fp32", "model_best.pth.tar"),
                               **settings)
        else:
            config = GANConfig(stage=2, **{f"net{n}_pretrain": p for n, p in self.stage2_nets().items()}, **settings)
        model = FDGANModel(config, device=self.device, mixed_precision=mp)
        model.train_mode()

        def fdgan_step(batch: list) -> Dict[str, float]:
            torch.manual_seed(1)  # the same noise and dropout in every precision
            model.set_input(batch)
            model.optimize_parameters()
            return dict(model.get_current_errors())
        return fdgan_step

    def batch_of(self, stage: int, pairs: int) -> list:
        batch = self.stage1_batch(pairs) if stage == 1 else self.pose_batch(pairs)
        if len(batch[0]["pid"] if isinstance(batch[0], dict) else batch[0][2]) < pairs:
            raise ConfigError(f"the rendered set gave fewer than {pairs} pairs in a batch")
        return batch

    def amp_steps(self) -> None:
        for stage in (1, 2, 3):
            batch = self.batch_of(stage, self.sizes.pairs)
            fp32 = self.stepper(stage, None)(batch)
            for dtype in self.amp_dtypes:
                name = f"amp_step_stage{stage}_{dtype}"

                def one(dtype: str = dtype, name: str = name) -> None:
                    low = self.stepper(stage, dtype)(batch)
                    worst = max(abs(low[k] - v) / max(abs(v), 1e-12) for k, v in fp32.items())
                    ok = all(close(low[k], v, AMP_RTOL, AMP_ATOL) for k, v in fp32.items())
                    self.record(name, ok, fp32=fp32, mixed=low, rtol=AMP_RTOL, atol=AMP_ATOL,
                                max_relative_difference=worst)
                self.guarded(name, one)

    def throughput_and_memory(self) -> None:
        s = self.sizes
        big = max(s.pairs, *s.memory_pairs)
        for stage in (1, 2, 3):
            batch = self.batch_of(stage, big)
            # The CPU rehearsal times fp32 only: the mixed-precision step is the same code (amp_step_*).
            for dtype in [None] + (self.amp_dtypes[:1] if self.device.type == "cuda" else []):
                tag = dtype or "fp32"

                def measure(stage: int = stage, dtype: Optional[str] = dtype, tag: str = tag) -> None:
                    step = self.stepper(stage, dtype)
                    b = slice_pairs(batch, s.pairs)
                    step(b)  # warm-up: cuDNN autotuning, optimiser state
                    synchronize(self.device)
                    start = time.perf_counter()
                    for _ in range(s.steps):
                        losses = step(b)
                    synchronize(self.device)
                    seconds = time.perf_counter() - start
                    self.record(f"throughput_stage{stage}_{tag}", all(math.isfinite(v) for v in losses.values()),
                                pairs=s.pairs, steps=s.steps, seconds=seconds,
                                images_per_s=2 * s.pairs * s.steps / seconds)
                    small, large = s.memory_pairs
                    step(slice_pairs(batch, small))
                    peaks = [peak_bytes(self.device, lambda n=n: step(slice_pairs(batch, n))) for n in (small, large)]
                    per_pair = (peaks[1] - peaks[0]) / (large - small)
                    fixed = peaks[0] - small * per_pair
                    table = {str(g): max_batch(per_pair, fixed, g) for g in CARD_GIB}
                    self.record(f"memory_stage{stage}_{tag}", per_pair > 0, pairs=[small, large], peak_bytes=peaks,
                                bytes_per_pair=per_pair, fixed_bytes=fixed, usable_share=MEMORY_USABLE,
                                max_pairs_by_gib=table,
                                measure="cuda max_memory_allocated" if self.device.type == "cuda"
                                else "bytes saved for backward (CPU stand-in)")
                self.guarded(f"throughput_stage{stage}_{tag}", measure)

    def loader(self) -> None:
        s = self.sizes
        torch.manual_seed(0)
        loader = build_pose_pair_loader(self.dataset.trainval, self.dataset.trainval_pid2files,
                                        self.dataset.images_dir, self.dataset.poses_dir, s.height, s.width,
                                        s.pairs, self.workers, pin_memory=self.device.type == "cuda",
                                        draw_maps=self.device.type != "cuda")  # as train.py loads
        available = len(loader) - 1 - 2 * self.workers
        batches = min(s.loader_batches, available)
        if batches < 1:
            raise ConfigError(f"the rendered set has {len(loader)} batches; too few to time the loader")
        rate = images_per_second(loader, batches)
        steps = [c for c in self.checks if c["name"].startswith("throughput_stage2_") and c["ok"]]
        need = max((c["images_per_s"] for c in steps), default=float("nan"))
        self.record("loader", bool(rate >= need), workers=self.workers, pairs=s.pairs, batches=batches,
                    items_per_s=rate, step_items_per_s=need, ratio=rate / need)


# ----------------------------------------------------------------------------- report
def markdown(results: Dict[str, Any]) -> str:
    """The results as Markdown: the checks, then the batch table."""
    lines = [f"# gpu_check: {results['device_name']}", "",
             f"{results['sizes']['arch']} at {results['sizes']['height']} x {results['sizes']['width']}, "
             f"torch {results['torch']}, {results['seconds']:.0f} s; "
             f"{'all checks passed' if results['ok'] else 'SOME CHECKS FAILED'}.", "",
             "| check | ok | figures |", "|---|---|---|"]
    for c in results["checks"]:
        keep = {k: v for k, v in c.items() if k in ("images_per_s", "items_per_s", "step_items_per_s",
                                                    "bytes_per_pair", "max_relative_difference", "passed",
                                                    "skipped", "error", "backend", "returncode",
                                                    "weights_max_relative_difference")}
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in keep.items())
        lines.append(f"| {c['name']} | {dict([(True, 'yes'), (False, '**no**'), (None, 'skipped')])[c['ok']]} "
                     f"| {text} |")
    mem = [c for c in results["checks"] if c["name"].startswith("memory_") and c["ok"]]
    if mem:
        lines += ["", f"Largest batch (pairs) whose step fits {MEMORY_USABLE:.0%} of a card:", "",
                  "| step | MiB per pair | " + " | ".join(f"{g} GiB" for g in CARD_GIB) + " |",
                  "|---|---|" + "---|" * len(CARD_GIB)]
        for c in mem:
            lines.append(f"| {c['name'][len('memory_'):]} | {c['bytes_per_pair'] / (1 << 20):.1f} | "
                         + " | ".join(str(c["max_pairs_by_gib"][str(g)]) for g in CARD_GIB) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (the rehearsal)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (ResNet-18 at 64 x 32): a rehearsal")
    parser.add_argument("--out", default="gpu_check_output", help="folder of results.json, results.md and the runs")
    parser.add_argument("-j", "--workers", type=int, default=None, help="loader workers (default 4; 2 with --quick)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per batch of the runs and timings")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed to each subprocess")
    args = parser.parse_args(argv)
    setup_logging(os.path.join(args.out, "gpu_check.log"))
    try:
        device = resolve_device(args.device)
    except ConfigError as e:
        logger.error("error: %s", e)
        return 2
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    sizes = QUICK if args.quick else FULL
    if args.pairs:
        sizes = Sizes(**{**asdict(sizes), "pairs": args.pairs})
    workers = args.workers if args.workers is not None else (2 if args.quick else 4)
    configure_backends(device)
    start = time.perf_counter()
    checker = Checker(device, sizes, os.path.abspath(args.out), workers, args.timeout)
    checker.render()
    checker.guarded("cuda_tests", checker.cuda_tests)
    checker.guarded("stage_runs", checker.stage_runs)
    checker.guarded("torchrun", checker.torchrun)
    checker.guarded("amp_steps", checker.amp_steps)
    checker.throughput_and_memory()
    checker.guarded("loader", checker.loader)
    results = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "quick": args.quick, "sizes": asdict(sizes), "workers": workers,
        "seconds": time.perf_counter() - start, "checks": checker.checks,
        "ok": all(c["ok"] is not False for c in checker.checks),
    }
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(results, indent=1) + "\n")
    atomic_write_text(os.path.join(args.out, "results.md"), markdown(results))
    failed = [c["name"] for c in checker.checks if c["ok"] is False]
    logger.info("%d checks, %s; results in %s", len(checker.checks),
                f"failed: {', '.join(failed)}" if failed else "none failed", args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
