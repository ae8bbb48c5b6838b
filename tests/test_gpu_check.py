"""scripts/gpu_check.py --device cpu --quick (CI's rehearsal of ``make gpu-check``): every check
passes and its figures hold together: the check names cover stage1/2/3, amp and torchrun, the
losses are finite, mixed precision is within the stated tolerance of fp32 (recomputed here), the
one-process torchrun run logs the plain run's losses, each throughput is its images over its
seconds, the memory per pair is the slope between the two measured peaks, the batch table is the
largest batch whose memory fits (checked by the inequality, not by the script's formula), and the
loader's ratio is against the fastest Stage II step. The CPU run finishes within 5 minutes
(``FDGAN_TEST_TIMEOUT_SCALE`` scales it on a crowded machine)."""
import json
import math
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, timeout

STAGES = ("stage1", "stage2", "stage3")
CARDS = (11, 24, 40, 80)


@pytest.fixture(scope="module")
def results(module_tmp):
    out = module_tmp
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout(900),
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out / "results.json") as f:
        res = json.load(f)
    res["markdown"] = (out / "results.md").read_text()
    return res


def by_name(results) -> dict:
    return {c["name"]: c for c in results["checks"]}


@pytest.mark.slow
def test_every_check_passes_and_the_names_cover_the_issue(results):
    checks = by_name(results)
    assert len(checks) == len(results["checks"])  # names are unique
    assert all(c["ok"] is True for c in results["checks"]), [c["name"] for c in results["checks"] if c["ok"] is not True]
    assert results["ok"] is True and results["seconds"] < timeout(300)
    expected = {"cuda_tests", "torchrun_backend", "torchrun_1proc", "torchrun_2proc", "loader"}
    expected |= {f"{s}_{p}" for s in STAGES for p in ("fp32", "bf16")}
    expected |= {f"amp_step_{s}_bf16" for s in STAGES}
    expected |= {f"{kind}_{s}_fp32" for kind in ("throughput", "memory") for s in STAGES}  # fp32 only on the CPU
    assert set(checks) == expected
    # No CUDA here: every CUDA test skipped, none ran or failed.
    assert checks["cuda_tests"]["passed"] == 0 and checks["cuda_tests"]["failed"] == 0
    assert checks["cuda_tests"]["skipped"] == 7
    assert checks["torchrun_backend"]["backend"] == "gloo" and checks["torchrun_2proc"]["processes"] == 2
    for name in checks:
        assert f"| {name} | yes |" in results["markdown"]


@pytest.mark.slow
def test_stage_runs_log_finite_losses_and_torchrun_one_process_equals_the_plain_run(results):
    checks, iters = by_name(results), results["sizes"]["iters"]
    for stage in STAGES:
        for p in ("fp32", "bf16"):
            losses = checks[f"{stage}_{p}"]["losses"]
            assert len(losses) == (1 if stage == "stage1" else 7 * iters)  # one epoch; 7 losses per step
            assert all(math.isfinite(v) for v in losses)
    assert checks["torchrun_1proc"]["losses"] == checks["stage2_fp32"]["losses"]
    assert checks["torchrun_1proc"]["plain_losses"] == checks["stage2_fp32"]["losses"]
    assert checks["torchrun_1proc"]["weights_max_relative_difference"] == 0.0  # the same run, bit for bit, on CPU
    assert checks["stage2_bf16"]["losses"] != checks["stage2_fp32"]["losses"]  # --amp did change the numbers


@pytest.mark.slow
def test_mixed_precision_step_within_the_stated_tolerance(results):
    for stage in STAGES:
        c = by_name(results)[f"amp_step_{stage}_bf16"]
        assert c["rtol"] == 5e-2 and c["atol"] == 5e-3
        assert set(c["fp32"]) == ({"loss"} if stage == "stage1" else
                                  {"G_v", "G_r", "G_sp", "G_gan_Di", "G_gan_Dp", "D_i", "D_p"})
        worst = max(abs(c["mixed"][k] - v) / abs(v) for k, v in c["fp32"].items())
        assert c["max_relative_difference"] == pytest.approx(worst, rel=1e-12)
        for k, v in c["fp32"].items():
            assert abs(c["mixed"][k] - v) <= 5e-2 * abs(v) + 5e-3, (stage, k)
        assert c["mixed"] != c["fp32"]


@pytest.mark.slow
def test_throughput_memory_table_and_loader_figures_are_consistent(results):
    checks = by_name(results)
    for stage in STAGES:
        for p in ("fp32",):
            t = checks[f"throughput_{stage}_{p}"]
            assert t["seconds"] > 0 and t["images_per_s"] == pytest.approx(2 * t["pairs"] * t["steps"] / t["seconds"])
            m = checks[f"memory_{stage}_{p}"]
            (small, large), (peak_small, peak_large) = m["pairs"], m["peak_bytes"]
            assert large > small and peak_large > peak_small > 0
            per_pair = m["bytes_per_pair"]
            assert per_pair == pytest.approx((peak_large - peak_small) / (large - small))
            assert m["fixed_bytes"] + small * per_pair == pytest.approx(peak_small)
            fits = [m["max_pairs_by_gib"][str(g)] for g in CARDS]
            for gib, n in zip(CARDS, fits):
                room = m["usable_share"] * gib * 2 ** 30
                assert m["fixed_bytes"] + n * per_pair <= room < m["fixed_bytes"] + (n + 1) * per_pair
            assert fits == sorted(fits) and fits[0] > 0
            table_row = results["markdown"].split("Largest batch")[1].split(f"| {stage}_{p} | ")[1].splitlines()[0]
            assert table_row == f"{per_pair / 2 ** 20:.1f} | " + " | ".join(str(n) for n in fits) + " |"
    loader = checks["loader"]
    step = checks["throughput_stage2_fp32"]["images_per_s"]
    assert loader["step_items_per_s"] == pytest.approx(step)
    assert loader["ratio"] == pytest.approx(loader["items_per_s"] / step) and loader["ratio"] >= 1
    assert loader["workers"] == 2
