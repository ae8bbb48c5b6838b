"""Stage I end to end on the synthetic dataset: training improves mAP, evaluation reproduces it,
an interrupted run resumes to the same weights."""
import json
import os

import pytest
import torch

import baseline
from helpers import render_synthetic
from reid.models import build_siamese
from reid.pipelines.common import evaluate_on_test
from reid.utils.serialization import load_checkpoint

pytestmark = pytest.mark.slow

COMMON = ["-d", "synthetic", "-a", "resnet18", "--no-pretrained", "--height", "64", "--width", "32",
          "-b", "32", "-j", "0", "--lr", "0.01", "--step-size", "100", "--no-progress", "--seed", "1",
          "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(module_tmp):
    return render_synthetic(module_tmp, num_ids=40, seed=3)


@pytest.fixture(scope="module")
def trained(data_dir):
    logs = data_dir / "logs"
    rc = baseline.main(COMMON + ["--data-dir", str(data_dir), "--logs-dir", str(logs), "--epochs", "16",
                                 "--eval-step", "5", "--augment", "none",
                                 "--rerank-topk", "75"])
    assert rc == 0
    return logs


def test_training_raises_map_well_above_untrained(data_dir, trained):
    results = json.loads((trained / "results.json").read_text())["results"]["openreid"]
    torch.manual_seed(1)
    untrained = build_siamese("resnet18", pretrained=False)
    before = evaluate_on_test(untrained, "synthetic", str(data_dir), 0, ["openreid"], 64, 32, 64, 0, 75,
                              torch.device("cpu"), progress=False)["openreid"]
    for stage in ("first_stage", "second_stage"):
        assert results[stage]["mAP"] > before[stage]["mAP"] + 0.10, stage
        assert results[stage]["mAP"] > 1.5 * before[stage]["mAP"], stage
    assert results["second_stage"]["top1"] > before["second_stage"]["top1"]


def test_evaluate_resume_reproduces_saved_metrics(data_dir, trained):
    saved = json.loads((trained / "results.json").read_text())["results"]
    out = data_dir / "evaluation"  # --evaluate writes to --logs-dir, never beside the checkpoint
    rc = baseline.main(COMMON + ["--data-dir", str(data_dir), "--evaluate", "--resume",
                                 str(trained / "model_best.pth.tar"), "--rerank-topk", "75", "--logs-dir", str(out)])
    assert rc == 0
    assert not (trained / "evaluate_results.json").exists() and not (trained / "log_test.txt").exists()
    again = json.loads((out / "evaluate_results.json").read_text())["results"]
    for stage in ("first_stage", "second_stage"):
        for key in ("mAP", "top1", "top5", "top10"):
            assert again["openreid"][stage][key] == pytest.approx(saved["openreid"][stage][key], abs=1e-9)
    assert os.path.isfile(out / "log_test.txt")


def test_checkpoint_has_release_format(trained):
    ckpt = load_checkpoint(trained / "model_best.pth.tar")
    keys = list(ckpt["state_dict"])
    assert keys[0].startswith("module.base_model.base.")
    assert "module.embed_model.classifier.weight" in keys
    assert tuple(ckpt["state_dict"]["module.embed_model.classifier.weight"].shape) == (2, 512)


def test_resumed_run_equals_uninterrupted_run(data_dir):
    quick = COMMON + ["--data-dir", str(data_dir), "--eval-step", "1", "--max-iters-per-epoch", "3",
                      "--deterministic", "--rerank-topk", "5", "-j", "1"]
    full, part = data_dir / "full", data_dir / "part"
    assert baseline.main(quick + ["--logs-dir", str(full), "--epochs", "3"]) == 0
    assert baseline.main(quick + ["--logs-dir", str(part), "--epochs", "1"]) == 0
    assert load_checkpoint(part / "checkpoint.pth.tar")["epoch"] == 0
    assert baseline.main(quick + ["--logs-dir", str(part), "--epochs", "3",
                                  "--resume", str(part / "checkpoint.pth.tar")]) == 0
    a = load_checkpoint(full / "checkpoint.pth.tar")
    b = load_checkpoint(part / "checkpoint.pth.tar")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    ra = json.loads((full / "results.json").read_text())["results"]
    rb = json.loads((part / "results.json").read_text())["results"]
    assert ra == rb
