"""The experiment (scripts/experiment.py): its measures against hand-computed cases, and a tiny run."""
import json
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fdgan.experiment.measures import (
    image_scores, improves, match_pose_distances, paired_stats, pose_distance, pose_split_scores, split_matches,
    trivial_predictions,
)
from fdgan.experiment.transfer_eval import (
    Stage2Study, TransferPair, held_out_pairs, input_sensitivity, swap_partners, target_landmarks,
)
from fdgan.utils.util import IMAGENET_MEAN, IMAGENET_STD
from reid.datasets import create
from reid.errors import DatasetError

SQUARE = np.array([[10, 10], [10, 20], [20, 10], [20, 20]], dtype=float)


# ----------------------------------------------------------------------------- pose difference

def test_pose_distance_ignores_position_and_scale():
    moved = SQUARE * 2 + [5, 7]
    assert pose_distance(SQUARE, moved) == pytest.approx(0.0, abs=1e-12)


def test_pose_distance_by_hand():
    # Centred on (15, 15), height 10: the square's keypoints are (+-0.5, +-0.5). Moving the last
    # one to (20, 30) moves the second pose's mean to (15, 17.5); its height is still 10.
    other = SQUARE.copy()
    other[3] = (20, 30)
    a = (SQUARE - [15, 15]) / 10
    b = (other - [15, 17.5]) / 10
    expected = np.mean(np.linalg.norm(a - b, axis=1))
    assert pose_distance(SQUARE, other) == pytest.approx(expected, abs=1e-12)
    # (0, -0.25) three times and (0, 0.75) once: (3 * 0.25 + 0.75) / 4
    assert expected == pytest.approx(0.375, abs=1e-12)


def test_pose_distance_uses_only_keypoints_seen_in_both():
    a = np.vstack([SQUARE, [[-1, -1], [30, 30]]])
    b = np.vstack([SQUARE * 3, [[40, 10], [-1, -1]]])
    assert pose_distance(a, b) == pytest.approx(0.0, abs=1e-12)
    assert pose_distance(SQUARE[:3], SQUARE[:3]) == math.inf  # under 4 shared keypoints


def test_pose_split_of_a_hand_made_gallery():
    # Query 0 (id 0, camera 0). Gallery: g0 id 0 camera 1, same pose; g1 id 1; g2 id 0 camera 1,
    # other pose; g3 id 2; g4 id 0 camera 0 (same camera: not a match, ignored).
    other = SQUARE.copy()
    other[3] = (20, 30)
    q_poses, g_poses = [SQUARE], [SQUARE + 3, SQUARE, other, SQUARE, SQUARE]
    ids = dict(query_ids=[0], gallery_ids=[0, 1, 0, 2, 0], query_cams=[0], gallery_cams=[1, 1, 1, 1, 0])
    dists = match_pose_distances(q_poses, g_poses, **ids)
    assert dists[0, 0] == pytest.approx(0.0, abs=1e-12) and dists[0, 2] == pytest.approx(0.375)
    assert np.isnan(dists[0, [1, 3, 4]]).all()
    similar, different = split_matches(dists, threshold=0.1)
    assert similar.tolist() == [[True, False, False, False, False]]
    assert different.tolist() == [[False, False, True, False, False]]

    distmat = np.array([[0.05, 0.1, 0.2, 0.4, 0.0]])
    scores = pose_split_scores(distmat, ids["query_ids"], ids["gallery_ids"], ids["query_cams"],
                               ids["gallery_cams"], dists, 0.1)
    # similar part (g2 removed): g4 is junk, g0 ranks first -> AP 1, top-1 1.
    assert scores["similar"] == {"mAP": 1.0, "top1": 1.0, "queries": 1}
    # different part (g0 removed): g1 then g2 -> AP 1/2, top-1 0.
    assert scores["different"] == {"mAP": 0.5, "top1": 0.0, "queries": 1}
    assert scores["gap"] == {"mAP": 0.5, "top1": 1.0}


# ----------------------------------------------------------------------------- image scores

def test_identical_images_score_l1_0_and_ssim_1():
    rng = np.random.default_rng(0)
    img = rng.random((2, 16, 8, 3))
    assert image_scores(img, img) == {"L1": 0.0, "SSIM": pytest.approx(1.0)}


def test_constant_images_by_hand():
    # Both constant: variances and covariance are 0, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    # with C1 = (0.01 * data range)^2.
    pred = np.full((1, 16, 8, 3), 0.2)
    target = np.full((1, 16, 8, 3), 0.6)
    c1 = 1e-4
    expected = (2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1)
    scores = image_scores(pred, target)
    assert scores["L1"] == pytest.approx(0.4)
    assert scores["SSIM"] == pytest.approx(expected, rel=1e-9)


def test_trivial_predictors_by_hand():
    sources = np.stack([np.full((16, 8, 3), 0.3), np.full((16, 8, 3), 0.9)])
    targets = np.full((2, 16, 8, 3), 0.5)
    mean = np.full((16, 8, 3), 0.4)
    preds = trivial_predictions(sources, mean)
    copy, avg = image_scores(preds["copy source"], targets), image_scores(preds["mean training image"], targets)
    assert copy["L1"] == pytest.approx((0.2 + 0.4) / 2)
    assert avg["L1"] == pytest.approx(0.1)
    c1 = 1e-4
    ssim = [(2 * s * 0.5 + c1) / (s * s + 0.25 + c1) for s in (0.3, 0.9)]
    assert copy["SSIM"] == pytest.approx(np.mean(ssim), rel=1e-9)
    assert avg["SSIM"] == pytest.approx((0.4 + c1) / (0.16 + 0.25 + c1), rel=1e-9)


def test_stage2_study_beats_trivial_only_on_both_scores_against_both_predictors():
    grid = np.zeros((1, 1, 3), np.uint8)
    baselines = {"copy source": {"L1": 0.30, "SSIM": 0.16}, "mean training image": {"L1": 0.19, "SSIM": 0.33}}
    study = lambda l1, ssim: Stage2Study(4, baselines, [{"epoch": 1, "L1": 0.5, "SSIM": 0.0},  # noqa: E731
                                                        {"epoch": 2, "L1": l1, "SSIM": ssim}], grid)
    assert study(0.18, 0.34).beats_trivial
    assert not study(0.18, 0.33).beats_trivial  # ties the mean image's SSIM
    assert not study(0.20, 0.50).beats_trivial  # worse L1 than the mean image


# ----------------------------------------------------------------------------- what G depends on

def test_swap_partners_take_the_next_pair_of_another_identity():
    pairs = [TransferPair(f"{i}.jpg", f"{i}t.jpg", pid) for i, pid in enumerate([1, 1, 2, 2, 3])]
    assert swap_partners(pairs) == [2, 2, 4, 4, 0]
    with pytest.raises(DatasetError):
        swap_partners(pairs[:2])


class _GreyG:
    """Stands in for PoseTransfer: G paints the whole image one grey level (0-255), read from the
    source's feature (``use="identity"``) or from the target pose's lowest keypoint row (``use="pose"``)."""

    height, width, batch_size, device = 64, 32, 3, torch.device("cpu")
    config = SimpleNamespace(noise_nc=2)

    def __init__(self, levels, use):
        self.levels, self.use = levels, use

    def source_features(self, paths):
        return torch.tensor([[float(self.levels[os.path.basename(p)])] for p in paths])

    def pose_maps(self, landmarks):
        return torch.stack([torch.full((1, self.height, self.width), float(round(max(lm[:, 0])))) for lm in landmarks])

    def netG(self, maps, features, noise):
        level = features.view(-1) if self.use == "identity" else maps[:, 0, 0, 0]
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (level.view(-1, 1, 1, 1) / 255.0 - mean) / std * torch.ones(1, 1, self.height, self.width)


def test_input_sensitivity_of_generators_that_use_one_input(synthetic_root):
    ds = create("synthetic", synthetic_root)
    pairs = held_out_pairs(ds, 1)[:3]
    partner = [1, 2, 0]  # three identities: the next pair is always another person
    levels = {os.path.basename(p.source): level for p, level in zip(pairs, (40, 100, 220))}
    targets = np.stack([np.full((64, 32, 3), v) for v in (0.1, 0.5, 0.6)])

    by_id = input_sensitivity(_GreyG(levels, "identity"), ds, pairs, targets)
    assert by_id["identity"] == pytest.approx((60 + 120 + 180) / 3 / 255)
    assert by_id["pose"] == 0 and by_id["noise"] == 0
    assert by_id["real persons"] == pytest.approx((0.4 + 0.1 + 0.5) / 3)

    rows = [round(max(target_landmarks(ds, p.target, 64, 32)[:, 0])) for p in pairs]
    by_pose = input_sensitivity(_GreyG(levels, "pose"), ds, pairs, targets)
    assert by_pose["identity"] == 0 and by_pose["noise"] == 0
    assert by_pose["pose"] == pytest.approx(np.mean([abs(rows[i] - rows[j]) for i, j in enumerate(partner)]) / 255)


# ----------------------------------------------------------------------------- paired statistics

def test_paired_stats_by_hand():
    s = paired_stats([0.1, 0.2, 0.3], [0.2, 0.2, 0.5])
    assert s["first_mean"] == pytest.approx(0.2) and s["first_std"] == pytest.approx(0.1)
    assert s["second_mean"] == pytest.approx(0.3) and s["second_std"] == pytest.approx(math.sqrt(0.03))
    assert s["diff"] == pytest.approx([0.1, 0.0, 0.2])
    assert s["diff_mean"] == pytest.approx(0.1) and s["diff_std"] == pytest.approx(0.1)
    assert s["positive"] == 2 and s["n"] == 3
    # t(0.975, 2) = 4.302653 and t(0.80, 2) = 1.060660 (tables); sd / sqrt(n) = 0.1 / sqrt(3).
    assert s["ci95"] == pytest.approx([0.1 - 4.302653 * 0.1 / math.sqrt(3), 0.1 + 4.302653 * 0.1 / math.sqrt(3)])
    assert s["detectable"] == pytest.approx((4.302653 + 1.060660) * 0.1 / math.sqrt(3), rel=1e-6)
    assert not improves(s)  # the interval [-0.148, 0.348] holds 0
    # Four seeds that all gain about 0.1: t(0.975, 3) = 3.182446, interval [0.0794, 0.1206].
    s4 = paired_stats([0.1, 0.2, 0.3, 0.4], [0.2, 0.31, 0.39, 0.5])
    assert s4["ci95"][0] == pytest.approx(0.1 - 3.182446 * s4["diff_std"] / 2, rel=1e-6)
    assert improves(s4)


def test_paired_stats_of_one_seed_have_no_spread():
    s = paired_stats([0.5], [0.7])
    assert s["diff"] == pytest.approx([0.2]) and math.isnan(s["diff_std"]) and math.isnan(s["first_std"])
    assert math.isnan(s["detectable"]) and not improves(s)
    with pytest.raises(ValueError):
        paired_stats([0.1, 0.2], [0.3])


# ----------------------------------------------------------------------------- a tiny run

def test_tiny_experiment_writes_consistent_page_and_json(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import experiment

    out = tmp_path / "exp"
    # The smallest sizes the stages take: 32 x 32 images (G's kernels need multiples of 32).
    rc = experiment.main(["--out", str(out), "--seeds", "1", "--num-ids", "12", "--num-cams", "2",
                          "--images-per-cam", "2", "--render-height", "64", "--render-width", "32",
                          "--height", "32", "--width", "32", "--stage1-epochs", "1", "--gan-iters", "1",
                          "--stage2-epochs", "2", "--stage3-epochs", "1",
                          "--workers", "0", "--pairs-per-id", "1", "--grid-rows", "3",
                          "--pretrain-iters", "1", "--pretrain-ids", "16", "--pretrained-cache", str(tmp_path / "cache")])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    page = (out / "index.html").read_text()
    assert (out / "transfer_grid.png").is_file() and 'src="transfer_grid.png"' in page

    q1 = res["q1_generation"]
    assert q1["pairs"] == 6 and [e["epoch"] for e in q1["epochs"]] == [1, 2]
    for e in q1["epochs"]:
        assert e["L1"] == pytest.approx(e["per_seed"]["1"]["L1"]) and f"{e['L1']:.4f}" in page
    last = q1["epochs"][-1]
    assert q1["goal_reached"] == all(last["L1"] < b["L1"] and last["SSIM"] > b["SSIM"]
                                     for b in q1["baselines"].values())

    inputs = q1["inputs"]
    assert set(inputs["mean"]) == {"Stage II", "Stage III"}
    for g, v in inputs["mean"].items():
        assert v == pytest.approx(inputs["per_seed"]["1"][g]) and f"{v['identity']:.4f}" in page
    # The real targets' difference does not depend on the generator.
    assert inputs["mean"]["Stage II"]["real persons"] == inputs["mean"]["Stage III"]["real persons"]

    q2 = res["q2_pose_invariance"]
    for model in ("Stage I", "Stage III"):
        parts = q2["per_seed"]["1"][model]
        assert parts["gap"]["mAP"] == pytest.approx(parts["similar"]["mAP"] - parts["different"]["mAP"])
        assert q2["mean"][model]["gap"]["mAP"] == pytest.approx(parts["gap"]["mAP"])

    # The re-ID rows are Stage I's and Stage III's own results files, paired per seed.
    stage1 = json.loads((out / "seed1" / "stage1" / "results.json").read_text())["results"]
    stage3 = json.loads((out / "seed1" / "stage3" / "results.json").read_text())["results"]
    rows = res["q3_reid"]["rows"]
    assert len(rows) == 8
    for r in rows:
        key = (lambda m: m["mAP"]) if r["metric"] == "mAP" else (lambda m: m["cmc"][0])
        assert r["stage1"] == [key(stage1[r["protocol"]][r["stage"]])]
        assert r["stage3"] == [key(stage3[r["protocol"]][r["stage"]])]
        assert r["diff"] == pytest.approx([r["stage3"][0] - r["stage1"][0]])
    assert set(res["q3_reid"]["ablation"]) == {"Stage III, lambda_sp 0", "Stage III, lambda_veri 0"}
    chance = json.loads((out / "seed1" / "stage1" / "results.json").read_text())["chance"]
    for r in rows:
        assert r["chance"] == chance[r["protocol"]]["mAP" if r["metric"] == "mAP" else "top1"]
    main = next(r for r in rows if r["protocol"] == "openreid" and r["stage"] == "first_stage" and r["metric"] == "mAP")
    assert res["q3_reid"]["goal_reached"] is False and math.isnan(main["ci95"][0])  # one seed: no interval
    # E's backbone started from the substitute built into the cache, recorded by every stage.
    assert res["backbone"]["kind"] == "substitute" and res["backbone"]["settings"]["iterations"] == 1
    assert os.path.dirname(res["backbone"]["file"]) == str(tmp_path / "cache")
    stage1_file = json.loads((out / "seed1" / "stage1" / "results.json").read_text())
    assert stage1_file["backbone"]["sha256"] == res["backbone"]["sha256"]
    assert json.loads((out / "seed1" / "stage3" / "results.json").read_text())["backbone"] == stage1_file["backbone"]
    assert "rendered-identity substitute (16 identities, 1 iterations" in page
    assert "Goal 1" in page and "Goal 3" in page
    # Each run keeps its weights files and logs; no finished run keeps its resume file.
    runs = ["stage1", "stage2", "stage3", "stage3_lambda_sp0", "stage3_lambda_veri0"]
    assert sorted(p.name for p in (out / "seed1").iterdir()) == sorted(runs)
    for run in runs:
        files = {p.name for p in (out / "seed1" / run).iterdir()}
        assert not files & {"checkpoint.pth.tar", "latest.pth"}, run
    assert (out / "seed1" / "stage1" / "model_best.pth.tar").is_file()
    assert {"2_net_E.pth", "2_net_G.pth", "2_net_Di.pth", "2_net_Dp.pth"} <= set(os.listdir(out / "seed1" / "stage2"))
    assert {"best_net_E.pth", "best_net_G.pth"} <= set(os.listdir(out / "seed1" / "stage3"))
