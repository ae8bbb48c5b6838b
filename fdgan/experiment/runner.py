"""The experiment's runs: render the data, Stages I-III per seed, the ablations, and the three measurements."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fdgan.experiment.measures import improves, match_pose_distances, paired_stats, pose_split_scores
from fdgan.experiment.transfer_eval import (
    baseline_scores, beats_trivial, held_out_pairs, input_sensitivity, pose_transfer_grid, stage2_epoch_scores,
)
from fdgan.generation import PoseTransfer
from fdgan.pipeline import TrainConfig, drop_resume_files, run_training
from reid.datasets import create
from reid.datasets.synthetic_render import SyntheticConfig, generate_synthetic_dataset
from reid.evaluators import pairwise_distance
from reid.feature_extraction import FeatureExtractor
from reid.models.pretrained import RANDOM, weights_origin
from reid.pipelines.baseline import BaselineConfig, run_baseline
from reid.pipelines.pretrain import PretrainConfig, substitute_backbone
from reid.utils.data.images import save_image
from reid.utils.data.pose import read_pose_file
from reid.utils.osutils import read_json

logger = logging.getLogger(__name__)

PROTOCOLS = ("openreid", "official")
CASCADE = ("first_stage", "second_stage")


@dataclass
class ExperimentConfig:
    """Sizes and schedules of the experiment (``scripts/experiment.py`` flags of the same names)."""

    out: str = "experiment_output"
    seeds: Tuple[int, ...] = (1, 2, 3)
    num_ids: int = 100
    num_cams: int = 4
    images_per_cam: int = 3
    render_height: int = 128
    render_width: int = 64
    height: int = 64
    width: int = 32
    arch: str = "resnet18"
    # E's backbone starts from the rendered-identity substitute (0 iterations: random weights).
    pretrain_iters: int = PretrainConfig.iterations
    pretrain_ids: int = PretrainConfig.num_ids
    pretrained_cache: str = os.path.join("datasets", "pretrained")
    stage1_epochs: int = 3
    stage1_lr: float = 0.001  # the release's 0.01 at batch 256, scaled linearly to batch 32
    gan_iters: int = 40
    stage2_epochs: int = 5
    stage2_lr: float = 0.01
    stage3_epochs: int = 3
    stage3_lr: float = 0.0001  # the paper's
    lambda_recon: float = 100.0
    lambda_sp: float = 10.0
    lambda_veri: float = 10.0
    ablation: bool = True
    pairs_per_id: int = 2
    grid_rows: int = 6
    workers: int = 2

    @property
    def data_root(self) -> str:
        return os.path.join(self.out, "data")


def substitute_config(cfg: ExperimentConfig) -> PretrainConfig:
    """The substitute backbone's settings for the experiment's architecture and image size."""
    return PretrainConfig(arch=cfg.arch, height=cfg.height, width=cfg.width, num_ids=cfg.pretrain_ids,
                          iterations=cfg.pretrain_iters)


def _baseline(cfg: ExperimentConfig, seed: int, logs_dir: str, weights: str) -> dict:
    results = run_baseline(BaselineConfig(
        dataset="synthetic", data_dir=cfg.data_root, logs_dir=logs_dir, arch=cfg.arch, pretrained=False,
        pretrained_weights=weights,
        batch_size=32, lr=cfg.stage1_lr, epochs=cfg.stage1_epochs, step_size=max(1, cfg.stage1_epochs * 5 // 6),
        eval_step=max(1, cfg.stage1_epochs // 3), augment="none", protocol="both", seed=seed, device="cpu",
        progress=False, workers=cfg.workers, height=cfg.height, width=cfg.width, overwrite=True))
    drop_resume_files(logs_dir)  # the experiment never continues a run
    return results


def _gan(cfg: ExperimentConfig, seed: int, checkpoints: str, name: str, stage: int, **kw: Any) -> dict:
    base = dict(
        dataset="synthetic", dataroot=cfg.data_root, checkpoints=checkpoints, name=name, stage=stage,
        arch=cfg.arch, batch_size=16, workers=cfg.workers, height=cfg.height, width=cfg.width, pose_aug="gauss",
        smooth_label=True, lambda_recon=cfg.lambda_recon, display_id=0, no_html=True,
        max_iters_per_epoch=cfg.gan_iters, print_freq=10 ** 6, display_freq=10 ** 6, update_html_freq=10 ** 6,
        device="cpu", progress=False, seed=seed, protocol="both", overwrite=True,
    )
    base.update(kw)
    results = run_training(TrainConfig(**base))
    drop_resume_files(os.path.join(checkpoints, name))
    return results


def _stage3(cfg: ExperimentConfig, seed: int, seed_dir: str, name: str, **kw: Any) -> dict:
    s2, last = os.path.join(seed_dir, "stage2"), cfg.stage2_epochs
    nets = {f"net{n}_pretrain": os.path.join(s2, f"{last}_net_{n}.pth") for n in ("E", "G", "Di", "Dp")}
    n3 = cfg.stage3_epochs
    settings = dict(lambda_sp=cfg.lambda_sp, lambda_veri=cfg.lambda_veri)
    settings.update(kw)
    return _gan(cfg, seed, seed_dir, name, 2, niter=max(1, n3 - n3 // 3), niter_decay=n3 // 3, lr=cfg.stage3_lr,
                save_step=n3, eval_step=1, **nets, **settings)


def _features(checkpoint: str, cfg: ExperimentConfig, items: List[Tuple[str, int, int]], images_dir: str):
    extractor = FeatureExtractor(checkpoint=checkpoint, arch=cfg.arch, height=cfg.height, width=cfg.width,
                                 device="cpu", batch_size=64)
    return extractor([os.path.join(images_dir, f) for f, _, _ in items])


def pose_invariance(cfg: ExperimentConfig, encoders: Dict[str, str]) -> Dict[str, Any]:
    """Question 2 for one seed: each encoder's scores on the similar- and different-pose matches."""
    ds = create("synthetic", os.path.join(cfg.data_root, "synthetic"))
    poses = {f: read_pose_file(os.path.join(ds.poses_dir, os.path.splitext(f)[0] + ".txt"))
             for f, _, _ in ds.query + ds.gallery}
    q_ids, q_cams = [p for _, p, _ in ds.query], [c for _, _, c in ds.query]
    g_ids, g_cams = [p for _, p, _ in ds.gallery], [c for _, _, c in ds.gallery]
    dists = match_pose_distances([poses[f] for f, _, _ in ds.query], [poses[f] for f, _, _ in ds.gallery],
                                 q_ids, g_ids, q_cams, g_cams)
    threshold = float(np.median(dists[np.isfinite(dists)]))
    out: Dict[str, Any] = {"threshold": threshold}
    for name, ckpt in encoders.items():
        qf, gf = _features(ckpt, cfg, ds.query, ds.images_dir), _features(ckpt, cfg, ds.gallery, ds.images_dir)
        distmat = pairwise_distance(qf, gf).numpy()
        out[name] = pose_split_scores(distmat, q_ids, g_ids, q_cams, g_cams, dists, threshold)
    return out


@dataclass
class _Q1:
    pairs: list = field(default_factory=list)
    targets: Optional[np.ndarray] = None
    sources: Optional[np.ndarray] = None
    baselines: Dict[str, Dict[str, float]] = field(default_factory=dict)
    per_seed: Dict[int, List[Dict[str, float]]] = field(default_factory=dict)
    grid_images: List[np.ndarray] = field(default_factory=list)
    sensitivity: Dict[int, Dict[str, Dict[str, float]]] = field(default_factory=dict)


def _stage2_epochs(cfg: ExperimentConfig, q1: _Q1, seed: int, s2: str, first_seed: bool) -> None:
    ds = create("synthetic", os.path.join(cfg.data_root, "synthetic"))
    epochs = range(1, cfg.stage2_epochs + 1)
    q1.per_seed[seed], images = stage2_epoch_scores(s2, epochs, ds, q1.pairs, q1.targets, keep=cfg.grid_rows)
    if first_seed:
        q1.grid_images = images
    for epoch in epochs[:-1]:  # Stage III starts from the last epoch; the rest only need E and G
        for n in ("Di", "Dp"):
            os.remove(os.path.join(s2, f"{epoch}_net_{n}.pth"))


def _sensitivity(cfg: ExperimentConfig, q1: _Q1, seed: int, nets: Dict[str, Tuple[str, str]]) -> None:
    ds = create("synthetic", os.path.join(cfg.data_root, "synthetic"))
    q1.sensitivity[seed] = {name: input_sensitivity(PoseTransfer(e, g, device="cpu", batch_size=32), ds, q1.pairs,
                                                    q1.targets)
                            for name, (e, g) in nets.items()}


def _timed(timings: Dict[str, float], key: str, fn, *args, **kw):
    start = time.time()
    result = fn(*args, **kw)
    timings[key] = round(time.time() - start, 1)
    logger.info("experiment: %s done in %.0f s", key, timings[key])
    return result


def run_experiment(cfg: ExperimentConfig) -> Dict[str, Any]:
    """Run everything and return the results (see :func:`fdgan.experiment.report.write_outputs`)."""
    start = time.time()
    timings: Dict[str, float] = {}
    generate_synthetic_dataset(os.path.join(cfg.data_root, "synthetic"), SyntheticConfig(
        num_ids=cfg.num_ids, num_cams=cfg.num_cams, images_per_cam=cfg.images_per_cam,
        height=cfg.render_height, width=cfg.render_width, seed=0))
    ds = create("synthetic", os.path.join(cfg.data_root, "synthetic"))
    q1 = _Q1(pairs=held_out_pairs(ds, cfg.pairs_per_id))
    q1.baselines, q1.targets, q1.sources = baseline_scores(ds, q1.pairs, cfg.height, cfg.width)
    weights = ""
    if cfg.pretrain_iters > 0:
        weights = _timed(timings, "substitute backbone", substitute_backbone, substitute_config(cfg),
                         cfg.pretrained_cache, workers=cfg.workers, progress=False)
    backbone = weights_origin(weights) if weights else dict(RANDOM)
    reid: Dict[str, Dict[int, dict]] = {"Stage I": {}, "Stage III": {}}
    ablations: Dict[str, dict] = {}
    q2: Dict[int, Any] = {}
    for k, seed in enumerate(cfg.seeds):
        seed_dir = os.path.join(cfg.out, f"seed{seed}")
        s1, s2 = os.path.join(seed_dir, "stage1"), os.path.join(seed_dir, "stage2")
        reid["Stage I"][seed] = _timed(timings, f"seed {seed} Stage I", _baseline, cfg, seed, s1, weights)
        _timed(timings, f"seed {seed} Stage II", _gan, cfg, seed, seed_dir, "stage2", 1,
               niter=max(1, cfg.stage2_epochs - cfg.stage2_epochs * 2 // 5), niter_decay=cfg.stage2_epochs * 2 // 5,
               lr=cfg.stage2_lr, save_step=1, lambda_veri=0.0, lambda_sp=cfg.lambda_sp,
               netE_pretrain=os.path.join(s1, "model_best.pth.tar"))
        _timed(timings, f"seed {seed} Stage II scoring", _stage2_epochs, cfg, q1, seed, s2, k == 0)
        reid["Stage III"][seed] = _timed(timings, f"seed {seed} Stage III", _stage3, cfg, seed, seed_dir, "stage3")
        s3 = os.path.join(seed_dir, "stage3")
        last = os.path.join(s2, str(cfg.stage2_epochs))
        _timed(timings, f"seed {seed} G's inputs", _sensitivity, cfg, q1, seed, {
            "Stage II": (last + "_net_E.pth", last + "_net_G.pth"),
            "Stage III": (os.path.join(s3, "best_net_E.pth"), os.path.join(s3, "best_net_G.pth"))})
        q2[seed] = _timed(timings, f"seed {seed} pose split", pose_invariance, cfg, {
            "Stage I": os.path.join(s1, "model_best.pth.tar"),
            "Stage III": os.path.join(s3, "best_net_E.pth")})
        if k == 0 and cfg.ablation:
            for name, kw in (("Stage III, lambda_sp 0", {"lambda_sp": 0.0}),
                             ("Stage III, lambda_veri 0", {"lambda_veri": 0.0})):
                tag = "stage3_" + "_".join(f"{key}0" for key in kw)
                ablations[name] = {"seed": seed, "results": _timed(timings, f"seed {seed} {name}", _stage3, cfg,
                                                                   seed, seed_dir, tag, **kw)}
    rows = cfg.grid_rows
    grid = pose_transfer_grid(ds, q1.pairs[:rows], q1.sources[:rows], q1.targets[:rows], q1.grid_images)
    save_image(grid, os.path.join(cfg.out, "transfer_grid.png"))
    results = summarise(cfg, q1, reid, ablations, q2, timings, time.time() - start)
    results["backbone"] = backbone
    first = os.path.join(cfg.out, f"seed{cfg.seeds[0]}", "stage1", "results.json")
    add_chance(results, read_json(first)["chance"])
    return results


def add_chance(results: Dict[str, Any], chance: Dict[str, Dict[str, float]]) -> None:
    """Put each re-ID row's chance level (a random ranking on the same test gallery) beside it."""
    for row in results["q3_reid"]["rows"]:
        row["chance"] = chance[row["protocol"]]["mAP" if row["metric"] == "mAP" else "top1"]


def summarise(cfg: ExperimentConfig, q1: _Q1, reid: Dict[str, Dict[int, dict]], ablations: Dict[str, dict],
              q2: Dict[int, Any], timings: Dict[str, float], seconds: float) -> Dict[str, Any]:
    """The results as one JSON-ready dict: settings, the three answers, timings."""
    seeds = list(cfg.seeds)
    epochs = []
    for e in range(cfg.stage2_epochs):
        per = [q1.per_seed[s][e] for s in seeds]
        epochs.append({"epoch": e + 1, "L1": float(np.mean([p["L1"] for p in per])),
                       "SSIM": float(np.mean([p["SSIM"] for p in per])),
                       "per_seed": {str(s): {"L1": p["L1"], "SSIM": p["SSIM"]} for s, p in zip(seeds, per)}})
    last = epochs[-1]
    beats = beats_trivial(last, q1.baselines)
    sensitivity = {g: {k: float(np.mean([q1.sensitivity[s][g][k] for s in seeds])) for k in q1.sensitivity[seeds[0]][g]}
                   for g in q1.sensitivity[seeds[0]]}
    parts = {}
    for model in ("Stage I", "Stage III"):
        parts[model] = {part: {m: float(np.nanmean([q2[s][model][part][m] for s in seeds])) for m in ("mAP", "top1")}
                        for part in ("similar", "different", "gap")}
    rows = []
    for protocol in PROTOCOLS:
        for stage in CASCADE:
            for metric, key in (("mAP", lambda r: r["mAP"]), ("top-1", lambda r: r["cmc"][0])):
                a = [key(reid["Stage I"][s][protocol][stage]) for s in seeds]
                b = [key(reid["Stage III"][s][protocol][stage]) for s in seeds]
                rows.append({"protocol": protocol, "stage": stage, "metric": metric,
                             "stage1": a, "stage3": b, **paired_stats(a, b)})
    abl = {}
    for name, entry in ablations.items():
        s = entry["seed"]
        abl[name] = {"seed": s, **{f"{p} {st}": {"mAP": entry["results"][p][st]["mAP"],
                                                 "full": reid["Stage III"][s][p][st]["mAP"]}
                                   for p in PROTOCOLS for st in CASCADE}}
    main_row = next(r for r in rows if r["protocol"] == "openreid" and r["stage"] == "first_stage"
                    and r["metric"] == "mAP")
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "q1_generation": {"pairs": len(q1.pairs), "baselines": q1.baselines, "epochs": epochs,
                          "goal_reached": bool(beats), "grid": "transfer_grid.png",
                          "inputs": {"mean": sensitivity, "per_seed": {str(s): q1.sensitivity[s] for s in seeds}}},
        "q2_pose_invariance": {"threshold_per_seed": {str(s): q2[s]["threshold"] for s in seeds},
                               "mean": parts, "per_seed": {str(s): {m: q2[s][m] for m in ("Stage I", "Stage III")}
                                                           for s in seeds},
                               "goal_reached": bool(abs(parts["Stage III"]["gap"]["mAP"])
                                                    < abs(parts["Stage I"]["gap"]["mAP"]))},
        "q3_reid": {"seeds": seeds, "rows": rows, "ablation": abl,
                    "goal_reached": improves(main_row)},
        "timings_s": timings, "total_s": round(seconds, 1),
    }
