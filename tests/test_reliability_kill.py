"""kill -9 of real training processes at chosen moments, then ``--resume``.

Each test starts the real command line (``python baseline.py ...`` / ``python train.py --stage 1
...``) as a subprocess, watches its log file and its run folder, and sends SIGKILL at a chosen
moment: in the middle of a training epoch, during validation, while a checkpoint's temporary file
is being written, during the final test. After every kill it checks that

- every ``*.pth`` / ``*.pth.tar`` file in the run folder loads with ``load_checkpoint`` (a torn write
  leaves only a hidden ``.<name>.<random>.tmp`` file, which no resume logic picks up);
- the resume file holds the last completed epoch, so at most the epoch in progress is lost, and the
  next run says it continues at that epoch + 1;

and at the end that the weights (and every other saved tensor: optimiser state, RNG state) equal
those of an uninterrupted run with the same seed, compared with ``torch.equal``. Every moment is
found by polling the file system and the log (no hooks in the code under test); that a kill really
landed in the intended phase is checked afterwards from the log lines and files it left.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest
import torch

from conftest import REPO_ROOT
from helpers import timeout
from reid.utils.serialization import load_checkpoint

pytestmark = pytest.mark.slow

TIMEOUT = timeout(300)  # seconds a single run may take on a loaded two-core machine
POLL = 0.002
# One intra-op thread: on a shared two-core machine, OpenMP threads that wait for each other while
# other processes hold the cores make a run tens of times slower. Every run here (interrupted or
# not) uses the same setting, which is what bitwise equality needs.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------- helpers
class Run:
    """A CLI started as a subprocess, with the part of its log file written since it started."""

    def __init__(self, argv: List[str], log_file: Path, out_dir: Path, tag: str) -> None:
        self.log_file = log_file
        self.offset = log_file.stat().st_size if log_file.exists() else 0
        self.out_path = out_dir / f"{tag}.out"
        self.tmp_before = set(temp_files(log_file.parent))
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, *argv], cwd=REPO_ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, **ENV})

    def log(self) -> str:
        """The log lines this run wrote so far."""
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                return f.read()
        except FileNotFoundError:
            return ""

    def new_temp_files(self) -> List[str]:
        return [n for n in temp_files(self.log_file.parent) if n not in self.tmp_before]

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def kill_when(self, moment: Callable[[], bool], what: str) -> None:
        """Poll ``moment`` every few milliseconds; SIGKILL the process as soon as it is true."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            if moment():
                os.kill(self.proc.pid, signal.SIGKILL)
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {self.proc.returncode}) before {what}:\n"
                                     + self.output()[-3000:])
            if time.monotonic() > deadline:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(POLL)
        assert self.proc.wait(timeout=timeout(60)) == -signal.SIGKILL

    def finish(self) -> None:
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
        assert rc == 0, self.output()[-3000:]
        assert "Traceback" not in self.output()


def temp_files(folder: Path) -> List[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp")) if folder.is_dir() else []


def checkpoint_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".pth", ".pth.tar")))


def assert_no_corrupt_file(folder: Path) -> dict:
    """Every checkpoint-named file loads; leftover temporaries are hidden ``.tmp`` files only.

    Returns {file name: loaded content}.
    """
    loaded = {p.name: load_checkpoint(p) for p in checkpoint_files(folder)}
    for name in temp_files(folder):
        # The temporary of 'x.pth' is '.x.pth.<random>.tmp': hidden, and no checkpoint pattern
        # ('*.pth', '*.pth.tar', the fixed resume names) matches it.
        assert name.startswith(".") and not name.endswith((".pth", ".pth.tar")), name
        assert name not in ("checkpoint.pth.tar", "model_best.pth.tar", "latest.pth")
    return loaded


def has_line(text: str, fragment: str) -> bool:
    return any(fragment in line for line in text.splitlines())


def seconds_after(run: Run, fragment: str, delay: float) -> Callable[[], bool]:
    """A moment: ``delay`` seconds after a log line holding ``fragment`` was first seen."""
    seen: List[float] = []

    def moment() -> bool:
        if not seen and has_line(run.log(), fragment):
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay

    return moment


def assert_same(a: Any, b: Any, where: str = "") -> int:
    """Recursive equality, tensors with ``torch.equal``; returns the number of tensors compared."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
        return 1
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        return sum(assert_same(a[k], b[k], f"{where}/{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        return sum(assert_same(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, f"{where}: {a!r} != {b!r}"
    return 0


@pytest.fixture(scope="module")
def data_root(module_tmp: Path, synthetic_root: str) -> Path:
    """A private copy of the session's synthetic dataset (the runs only read it)."""
    root = module_tmp
    shutil.copytree(synthetic_root, root / "synthetic")
    return root


# --------------------------------------------------------------------------- Stage I
EPOCHS = 2


def baseline_argv(data: Path, logs: Path, resume: Optional[Path] = None) -> List[str]:
    argv = ["baseline.py", "-d", "synthetic", "-a", "resnet18", "--no-pretrained", "--height", "64",
            "--width", "32", "-b", "4", "-j", "0", "--device", "cpu", "--no-progress", "--deterministic",
            "--seed", "3", "--lr", "0.01", "--step-size", "100", "--augment", "flip", "--epochs", str(EPOCHS),
            "--eval-step", "1", "--max-iters-per-epoch", "3", "--rerank-topk", "5",
            "--data-dir", str(data), "--logs-dir", str(logs)]
    return argv + (["--resume", str(resume)] if resume is not None else [])


def test_stage1_killed_five_times_resumes_to_the_uninterrupted_weights(data_root: Path, tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir()
    part.mkdir()
    # The uninterrupted reference runs alongside the interrupted one.
    reference = Run(baseline_argv(data_root, full), full / "log.txt", tmp_path, "reference")
    log, ckpt = part / "log.txt", part / "checkpoint.pth.tar"

    def start(tag: str) -> Run:
        return Run(baseline_argv(data_root, part, ckpt if ckpt.exists() else None), log, tmp_path, tag)

    def new_temp(run: Run, stem: str) -> bool:
        return any(n.startswith(f".{stem}.") for n in run.new_temp_files())

    # 1. While the first model_best.pth.tar is written (epoch 0 is always the best so far).
    run = start("kill1")
    run.kill_when(lambda: new_temp(run, "model_best.pth.tar"), "the model_best write of epoch 0")
    assert has_line(run.log(), "Epoch 0: validation mAP")
    files = assert_no_corrupt_file(part)
    assert "checkpoint.pth.tar" not in files  # epoch 0 (the current one) is lost, nothing else
    assert any(n.startswith(".model_best.pth.tar.") for n in temp_files(part))

    # 2. While checkpoint.pth.tar of epoch 1 is written (epoch 0 completed in this run).
    run = start("kill2")
    run.kill_when(lambda: has_line(run.log(), "Epoch 1: validation mAP") and new_temp(run, "checkpoint.pth.tar"),
                  "the checkpoint write of epoch 1")
    assert "Resumed" not in run.log()
    assert any(n.startswith(".checkpoint.pth.tar.") for n in run.new_temp_files())
    files = assert_no_corrupt_file(part)
    assert files["checkpoint.pth.tar"]["epoch"] == 0

    # 3. In the middle of training epoch 1: 0.15 s after the resume message (training starts right
    #    after it), and before the epoch's loss line.
    run = start("kill3")
    run.kill_when(seconds_after(run, "continuing at epoch 1", 0.15), "0.15 s into epoch 1")
    assert not has_line(run.log(), "Epoch 1: loss"), "the kill came after epoch 1's training"
    assert assert_no_corrupt_file(part)["checkpoint.pth.tar"]["epoch"] == 0

    # 4. During the validation of epoch 1 (its loss line is written, its mAP line not yet).
    run = start("kill4")
    run.kill_when(lambda: has_line(run.log(), "Epoch 1: loss"), "the validation of epoch 1")
    assert has_line(run.log(), "continuing at epoch 1")
    assert not has_line(run.log(), "Epoch 1: validation mAP")
    assert assert_no_corrupt_file(part)["checkpoint.pth.tar"]["epoch"] == 0

    # 5. During the final test, after the last epoch's checkpoint.
    run = start("kill5")
    last = f"Epoch {EPOCHS - 1}: validation mAP"
    run.kill_when(lambda: has_line(run.log().split(last)[-1], "synthetic loaded") if last in run.log() else False,
                  "the final test")
    assert not (part / "results.json").exists()
    assert assert_no_corrupt_file(part)["checkpoint.pth.tar"]["epoch"] == EPOCHS - 1

    # The last run only tests (every epoch is done) and writes the results.
    run = start("final")
    run.finish()
    assert has_line(run.log(), f"already finished {EPOCHS} epochs")
    reference.finish()

    a, b = assert_no_corrupt_file(full), assert_no_corrupt_file(part)
    assert sorted(a) == sorted(b) == ["checkpoint.pth.tar", "model_best.pth.tar"]
    assert a["checkpoint.pth.tar"]["epoch"] == b["checkpoint.pth.tar"]["epoch"] == EPOCHS - 1
    for name in a:
        for key in ("state_dict", "optimizer", "rng", "epoch", "best_map"):
            if key in a[name]:
                n = assert_same(a[name][key], b[name][key], f"{name}:{key}")
                assert key not in ("state_dict", "optimizer") or n > 0
    assert len(a["checkpoint.pth.tar"]["state_dict"]) > 100  # the whole network was compared
    ra = json.loads((full / "results.json").read_text())["results"]
    rb = json.loads((part / "results.json").read_text())["results"]
    assert ra == rb
    shutil.rmtree(tmp_path)  # hundreds of MB of checkpoints and torn temporaries


# --------------------------------------------------------------------------- Stage II
def train_argv(data: Path, checkpoints: Path) -> List[str]:
    return ["train.py", "--stage", "1", "--no-pretrained", "-d", "synthetic", "--dataroot", str(data),
            "--checkpoints", str(checkpoints), "--name", "run", "--arch", "resnet18", "--height", "64",
            "--width", "32", "-b", "4", "-j", "0", "--niter", "1", "--niter-decay", "1",
            "--max-iters-per-epoch", "2", "--save-step", "1", "--print-freq", "4", "--display-id", "0",
            "--no-progress", "--device", "cpu", "--deterministic", "--seed", "5", "--resume"]


def test_stage2_killed_three_times_resumes_to_the_uninterrupted_weights(data_root: Path, tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    (full / "run").mkdir(parents=True)
    (part / "run").mkdir(parents=True)
    reference = Run(train_argv(data_root, full), full / "run" / "train_log.txt", tmp_path, "reference")
    folder = part / "run"
    log = folder / "train_log.txt"

    def start(tag: str) -> Run:
        return Run(train_argv(data_root, part), log, tmp_path, tag)

    # 1. In the middle of epoch 1: after its first iteration's loss line (2 iterations per epoch).
    run = start("kill1")
    run.kill_when(lambda: has_line(run.log(), "(epoch: 1, iters: 4,"), "the first iteration of epoch 1")
    assert not has_line(run.log(), "End of epoch 1")
    assert assert_no_corrupt_file(folder) == {}

    # 2. While the <epoch>_net_*.pth files of epoch 1 are written.
    run = start("kill2")
    run.kill_when(lambda: any(n.startswith(".1_net_") for n in run.new_temp_files()), "the net files of epoch 1")
    assert has_line(run.log(), "latest.pth yet; starting from the beginning")
    assert has_line(run.log(), "End of epoch 1")
    files = assert_no_corrupt_file(folder)
    assert "latest.pth" not in files  # epoch 1 is lost, and only it
    assert any(n.startswith(".1_net_") for n in temp_files(folder))

    # 3. While latest.pth of epoch 2 is written (epoch 1 completed in this run).
    run = start("kill3")
    run.kill_when(lambda: (folder / "latest.pth").exists() and any(n.startswith(".latest.pth.")
                                                                   for n in run.new_temp_files()),
                  "the latest.pth write of epoch 2")
    assert has_line(run.log(), "End of epoch 2")
    files = assert_no_corrupt_file(folder)
    assert files["latest.pth"]["epoch"] == 1
    assert {f"{e}_net_{n}.pth" for e in (1, 2) for n in ("E", "G", "Di", "Dp")} <= set(files)

    # The last run continues at epoch 2 and finishes.
    run = start("final")
    run.finish()
    assert has_line(run.log(), "continuing at epoch 2")
    reference.finish()

    a, b = assert_no_corrupt_file(full / "run"), assert_no_corrupt_file(folder)
    assert sorted(a) == sorted(b)
    assert len(a) == 9  # latest.pth + 2 epochs x 4 networks
    assert a["latest.pth"]["epoch"] == b["latest.pth"]["epoch"] == 2
    for name in a:
        if name == "latest.pth":
            compared = sum(assert_same(a[name][k], b[name][k], f"{name}:{k}")
                           for k in ("model", "rng", "epoch", "total_steps", "best_map"))
        else:
            compared = assert_same(a[name], b[name], name)
        assert compared > 0, name
    shutil.rmtree(tmp_path)


# --------------------------------------------------------------------------- Ctrl-C, torchrun
def test_sigint_during_training_exits_130_with_the_resume_hint_and_no_temporary(data_root: Path,
                                                                                tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) in Stage II epoch 2, after epoch 1 was saved: exit 130, one line that says how to
    continue, no temporary file left; the same command plus --resume finishes the run."""
    argv = [a for a in train_argv(data_root, tmp_path) if a != "--resume"]
    argv[argv.index("--niter-decay") + 1] = "2"  # 3 epochs
    folder = tmp_path / "run"
    run = Run(argv, folder / "train_log.txt", tmp_path, "sigint")
    deadline = time.monotonic() + TIMEOUT
    while not has_line(run.log(), "(epoch: 2, iters: 4,"):
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output()[-3000:]
        time.sleep(POLL)
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(timeout=TIMEOUT) == 130
    errors = [ln for ln in run.output().splitlines() if ln.startswith("error: ") or ln.startswith("interrupted")]
    assert errors == ["interrupted; continue with the same command plus --resume"], run.output()[-3000:]
    assert "Traceback" not in run.output()
    assert temp_files(folder) == []
    assert assert_no_corrupt_file(folder)["latest.pth"]["epoch"] == 1
    again = Run(argv + ["--resume"], folder / "train_log.txt", tmp_path, "sigint-resume")
    again.finish()
    assert has_line(again.log(), "continuing at epoch 2")
    assert load_checkpoint(folder / "latest.pth")["epoch"] == 3
    shutil.rmtree(tmp_path)


def test_bad_image_under_torchrun_is_one_line_per_process_and_no_hang(data_root: Path, tmp_path: Path) -> None:
    """One truncated training image, two processes: the one that reads it prints its line, the other
    one line saying a peer stopped; no traceback of ours, and the job ends instead of hanging."""
    import socket

    data = tmp_path / "data"
    shutil.copytree(data_root / "synthetic", data / "synthetic")
    meta = json.loads((data / "synthetic" / "meta.json").read_text())
    pid = json.loads((data / "synthetic" / "splits.json").read_text())[0]["trainval"][0]
    bad = data / "synthetic" / "images" / meta["identities"][pid][0][0]
    bad.write_bytes(bad.read_bytes()[:300])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "baseline.py", "-d", "synthetic", "--data-dir", str(data), "--logs-dir",
           str(tmp_path / "logs"), "-a", "resnet18", "--no-pretrained", "--height", "64", "--width", "32", "-b", "4",
           "-j", "0", "--epochs", "1", "--rerank-topk", "5", "--augment", "none", "--no-progress", "--device", "cpu"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, **ENV, "PYTHONPATH": REPO_ROOT},
                            capture_output=True, text=True, timeout=TIMEOUT)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    ours = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert f"error: {bad}: unreadable image (Truncated File Read)" in ours or any(
        ln.startswith(f"error: {bad}: unreadable image") for ln in ours), out[-3000:]
    assert set(ours) <= {ours[0], "error: another process of this torchrun job stopped (its error is above); "
                                   "stopping too"} and 1 <= len(ours) <= 2, ours
    assert "[rank0]: Traceback" not in out and "[rank1]: Traceback" not in out, out[-3000:]
