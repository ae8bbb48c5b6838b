"""`make demo` end to end at the smallest sizes: summary.json against the runs' own files."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, timeout


@pytest.mark.slow
def test_tiny_demo_writes_a_summary_that_agrees_with_its_runs(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py", "--data-dir", str(data), "--out", str(out), "--height", "32",
         "--width", "32", "--pretrain-iters", "1", "--pretrain-ids", "16", "--stage1-epochs", "1",
         "--stage2-epochs", "2", "--stage3-epochs", "1", "--gan-iters", "1", "-j", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout(900))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    stage1 = json.loads((out / "stage1" / "results.json").read_text())
    stage3 = json.loads((out / "stage3" / "results.json").read_text())
    assert summary["stage1_map"] == stage1["results"]["openreid"]["first_stage"]["mAP"]
    assert summary["stage3_map"] == stage3["results"]["openreid"]["first_stage"]["mAP"]
    assert summary["chance_map"] == stage1["chance"]["openreid"]["mAP"] == stage3["chance"]["openreid"]["mAP"]
    assert 0 < summary["chance_map"] < 0.2 and summary["seconds"] > 0
    for key in ("g_identity_change", "g_pose_change", "real_person_change"):
        assert 0 <= summary[key] <= 1
    # E started from the substitute built into <data>/pretrained, and every stage says so.
    assert summary["backbone"]["kind"] == "substitute" and summary["backbone"]["settings"]["num_ids"] == 16
    assert stage1["backbone"]["sha256"] == stage3["backbone"]["sha256"] == summary["backbone"]["sha256"]
    assert str(data / "pretrained") in summary["backbone"]["file"]
    page = (out / "index.html").read_text()
    assert "chance mAP" in page and f"{summary['g_identity_change']:.4f}" in page
    # A second run reuses the substitute and says so.
    again = subprocess.run(
        [sys.executable, "scripts/pretrain_backbone.py", "--cache-dir", str(data / "pretrained"), "--height", "32",
         "--width", "32", "--num-ids", "16", "--iterations", "1", "--heldout-ids", "16", "-j", "0", "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout(300))
    assert again.returncode == 0 and "Reusing the substitute backbone" in again.stderr
