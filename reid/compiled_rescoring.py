"""The second stage's folded scores as one ``torch.compile`` kernel, tried first in a child process.

A compiler or a generated kernel can fail natively (an abort, an illegal instruction), which no
``except`` catches and which would take the whole evaluation, or a test run, down with it. So the
first request in a process compiles and runs the kernel on a small problem in a child Python
process; only when that child exits cleanly, with scores equal to the eager formula's, is the
kernel compiled here (from the on-disk cache the child filled). Otherwise the caller gets
``None`` and one warning, and scores eagerly.

Run as ``python -m reid.compiled_rescoring DEVICE NUM_THREADS`` it is that child.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

import torch

from reid.errors import first_line

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 600.0  # a cold test compilation takes about 15 s on a 2-core CPU; this stops a hang
_PROBE_TOLERANCE = 1e-5
# Logged once, with the reason, wherever the compiled path gives way to eager scoring.
UNAVAILABLE = "compiled re-scoring unavailable (%s); scoring without compilation"


def pair_scores(q: torch.Tensor, g: torch.Tensor, qi: torch.Tensor, gi: torch.Tensor, v: torch.Tensor,
                c: torch.Tensor) -> torch.Tensor:
    """``sigmoid(sum_d v_d (q[qi]_d - g[gi]_d)^2 + c)`` for the pairs (qi, gi) of query rows and
    gallery rows, written as one expression for torch.compile to fuse into one gather-reduce loop."""
    diff = q[qi] - g[gi]
    return torch.sigmoid((diff * diff * v).sum(-1) + c)


@functools.cache
def compiled_pair_scores(device: str, num_threads: int) -> Optional[Callable[..., torch.Tensor]]:
    """:func:`pair_scores` compiled for tensors on ``device`` ("cpu", "cuda:0") with
    ``num_threads`` intra-op threads, or None (after one warning) where the test compilation in a
    child process failed, crashed or gave other scores."""
    start = time.perf_counter()
    failure = probe_compilation(device, num_threads)
    if failure is not None:
        logger.warning(UNAVAILABLE, failure)
        return None
    logger.info("compiled re-scoring kernel checked in a child process (%.1f s)", time.perf_counter() - start)
    # Dynamic shapes: one compilation serves every block size, top-k and gallery.
    return torch.compile(pair_scores, dynamic=True)


def probe_compilation(device: str, num_threads: int, timeout_s: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Compile and check the kernel in a child process; None where it worked, else why not (one line)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(_probe_command(device, num_threads), env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"its test compilation in a child process took over {timeout_s:g} s"
    except OSError as exc:
        return f"could not start a child process: {first_line(exc)}"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return f"its test compilation in a child process died of {name}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"its test compilation in a child process exited with {proc.returncode}"


def _probe_command(device: str, num_threads: int) -> list[str]:
    return [sys.executable, "-m", "reid.compiled_rescoring", device, str(num_threads)]


def _check_kernel(device: str, num_threads: int) -> Optional[str]:
    """In the child: compile, run on a small problem, compare with the eager formula."""
    torch.set_num_threads(num_threads)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    # Distinct sizes, none 0 or 1, so that the dynamic-shape graph is the one real calls reuse.
    q = torch.randn(6, 40, generator=gen)
    g = torch.randn(23, 40, generator=gen)
    qi = torch.randint(0, 6, (31,), generator=gen)
    gi = torch.randint(0, 23, (31,), generator=gen)
    v = torch.randn(40, generator=gen) * 0.1
    c = torch.tensor(0.25)
    kernel = torch.compile(pair_scores, dynamic=True)
    q, g, qi, gi, v, c = (t.to(dev) for t in (q, g, qi, gi, v, c))
    with torch.inference_mode():
        got = kernel(q, g, qi, gi, v, c)
        want = pair_scores(q, g, qi, gi, v, c)
    err = (got - want).abs().max().item()
    if not err <= _PROBE_TOLERANCE:
        return f"the compiled kernel's scores differ from the eager formula's by {err:.3g}"
    return None


def main(argv: Sequence[str]) -> int:
    """The child's entry point: exit status 0 where the kernel compiled, ran and agreed."""
    try:
        failure = _check_kernel(argv[0], int(argv[1]))
    except Exception as exc:  # noqa: BLE001  (reported to the parent as one line)
        failure = first_line(exc)
    if failure is not None:
        sys.stderr.write(failure + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
