"""Question 1: does Stage II learn pose-guided generation? Held-out pose transfer against trivial predictors."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from fdgan.experiment.measures import image_scores, trivial_predictions
from fdgan.generation import PoseTransfer, draw_noise
from fdgan.utils.util import posemap2im, tensor2im
from reid.errors import DatasetError
from reid.utils.data.dataset import Dataset
from reid.utils.data.images import read_image
from reid.utils.data.pose import read_pose_file, scale_landmarks
from reid.utils.data.preprocessor import generate_pose_map, pose_sigma
from reid.utils.data.transforms import RectScale
from reid.utils.osutils import PathLike


@dataclass(frozen=True)
class TransferPair:
    """A held-out person shown in ``source`` and, in the pose to draw, in ``target`` (file names)."""

    source: str
    target: str
    pid: int


def held_out_pairs(dataset: Dataset, pairs_per_id: int = 2, seed: int = 0) -> List[TransferPair]:
    """Source/target pairs of the test identities (query and gallery images; distractors have no
    query), the target from another camera when there is one; drawn reproducibly from ``seed``."""
    rng = random.Random(seed)
    test_ids = sorted({pid for _, pid, _ in dataset.query})
    by_id: Dict[int, List[Tuple[str, int]]] = {}
    for fname, pid, cam in sorted(set(dataset.query) | set(dataset.gallery)):
        by_id.setdefault(pid, []).append((fname, cam))
    pairs = []
    for pid in test_ids:
        files = by_id[pid]
        for _ in range(pairs_per_id):
            src, cam = rng.choice(files)
            others = [f for f, c in files if c != cam] or [f for f, _ in files if f != src]
            if others:
                pairs.append(TransferPair(src, rng.choice(others), pid))
    return pairs


def load_tiles(paths: Sequence[str], height: int, width: int) -> np.ndarray:
    """Images resized as G sees them, N x H x W x 3 float in [0, 1]."""
    scale = RectScale(height, width)
    return np.stack([np.asarray(scale(read_image(p)), dtype=np.float64) / 255.0 for p in paths])


def mean_image(dataset: Dataset, height: int, width: int) -> np.ndarray:
    """The mean training (trainval) image at G's size, H x W x 3 in [0, 1]."""
    paths = [os.path.join(dataset.images_dir, f) for f, _, _ in dataset.trainval]
    total = np.zeros((height, width, 3))
    for start in range(0, len(paths), 256):
        total += load_tiles(paths[start:start + 256], height, width).sum(axis=0)
    return total / len(paths)


def target_landmarks(dataset: Dataset, fname: str, height: int, width: int) -> np.ndarray:
    """The target's pose file scaled to G's size, as the training items scale it."""
    path = os.path.join(dataset.images_dir, fname)
    with Image.open(path) as img:
        img_w, img_h = img.size
    pose = read_pose_file(os.path.join(dataset.poses_dir, os.path.splitext(os.path.basename(fname))[0] + ".txt"))
    return scale_landmarks(pose, (img_h, img_w), (height, width))


def generate_pairs(transfer: PoseTransfer, dataset: Dataset, pairs: Sequence[TransferPair],
                   seed: int = 0) -> np.ndarray:
    """G(E(source), pose of target, z) for every pair, N x H x W x 3 float in [0, 1] (one noise
    vector per pair, drawn from ``seed``)."""
    h, w = transfer.height, transfer.width
    sources = [os.path.join(dataset.images_dir, p.source) for p in pairs]
    features = transfer.source_features(sources)
    maps = transfer.pose_maps([target_landmarks(dataset, p.target, h, w) for p in pairs])
    noise = draw_noise(len(pairs), transfer.config.noise_nc, seed)
    out = np.empty((len(pairs), h, w, 3))
    with torch.inference_mode():
        for start in range(0, len(pairs), transfer.batch_size):
            n = min(transfer.batch_size, len(pairs) - start)
            sl = slice(start, start + n)
            fake = transfer.netG(maps[sl].to(transfer.device), features[sl].view(n, -1, 1, 1).to(transfer.device),
                                 noise[sl].view(n, -1, 1, 1).to(transfer.device)).float().cpu()
            for k in range(n):
                out[start + k] = tensor2im(fake[k]) / 255.0
    return out


def baseline_scores(dataset: Dataset, pairs: Sequence[TransferPair], height: int,
                    width: int) -> Tuple[Dict[str, Dict[str, float]], np.ndarray, np.ndarray]:
    """L1/SSIM of the trivial predictors; also returns the targets and sources (N x H x W x 3)."""
    targets = load_tiles([os.path.join(dataset.images_dir, p.target) for p in pairs], height, width)
    sources = load_tiles([os.path.join(dataset.images_dir, p.source) for p in pairs], height, width)
    preds = trivial_predictions(sources, mean_image(dataset, height, width))
    return {name: image_scores(pred, targets) for name, pred in preds.items()}, targets, sources


def epoch_scores(net_e: PathLike, net_g: PathLike, dataset: Dataset, pairs: Sequence[TransferPair],
                 targets: np.ndarray, seed: int = 0) -> Tuple[Dict[str, float], np.ndarray]:
    """L1/SSIM of G's images of ``pairs`` against ``targets``; also returns the images."""
    transfer = PoseTransfer(net_e, net_g, device="cpu", batch_size=32)
    generated = generate_pairs(transfer, dataset, pairs, seed=seed)
    return image_scores(generated, targets), generated


def stage2_epoch_scores(stage2_dir: PathLike, epochs: Sequence[int], dataset: Dataset,
                        pairs: Sequence[TransferPair], targets: np.ndarray,
                        keep: int = 0) -> Tuple[List[Dict[str, float]], List[np.ndarray]]:
    """:func:`epoch_scores` of the ``<epoch>_net_E.pth``/``<epoch>_net_G.pth`` files of a Stage II
    run, one ``{"epoch", "L1", "SSIM"}`` per epoch, and each epoch's first ``keep`` images."""
    scores, images = [], []
    for epoch in epochs:
        res, generated = epoch_scores(os.path.join(stage2_dir, f"{epoch}_net_E.pth"),
                                      os.path.join(stage2_dir, f"{epoch}_net_G.pth"), dataset, pairs, targets)
        scores.append({"epoch": epoch, **res})
        images.append(generated[:keep])
    return scores, images


def swap_partners(pairs: Sequence[TransferPair]) -> List[int]:
    """For each pair, the index of the next pair (cyclically) that shows another identity."""
    n = len(pairs)
    partners = []
    for i, pair in enumerate(pairs):
        j = next((k % n for k in range(i + 1, i + n) if pairs[k % n].pid != pair.pid), None)
        if j is None:
            raise DatasetError("swap partners need pairs of at least two identities")
        partners.append(j)
    return partners


def input_sensitivity(transfer: PoseTransfer, dataset: Dataset, pairs: Sequence[TransferPair],
                      targets: np.ndarray, seed: int = 0) -> Dict[str, float]:
    """What G's image depends on: the mean absolute change (in [0, 1]) of G(E(source), pose of
    target, z) when only the source is swapped for another identity's ("identity"), only the target
    pose for another pair's ("pose"), or only the noise is redrawn ("noise"); "real persons" is the
    same measure between the real targets of those pairs, for scale. Partners: :func:`swap_partners`."""
    partner = swap_partners(pairs)
    base = generate_pairs(transfer, dataset, pairs, seed=seed)
    other_id = [TransferPair(pairs[j].source, p.target, p.pid) for p, j in zip(pairs, partner)]
    other_pose = [TransferPair(p.source, pairs[j].target, p.pid) for p, j in zip(pairs, partner)]
    changed = {"identity": generate_pairs(transfer, dataset, other_id, seed=seed),
               "pose": generate_pairs(transfer, dataset, other_pose, seed=seed),
               "noise": generate_pairs(transfer, dataset, pairs, seed=seed + 1)}
    out = {name: float(np.abs(images - base).mean()) for name, images in changed.items()}
    out["real persons"] = float(np.abs(targets[partner] - targets).mean())
    return out


def beats_trivial(scores: Dict[str, float], baselines: Dict[str, Dict[str, float]]) -> bool:
    """``scores`` (L1, SSIM) are better than every trivial predictor's on both: lower L1, higher SSIM."""
    return all(scores["L1"] < b["L1"] and scores["SSIM"] > b["SSIM"] for b in baselines.values())


@dataclass
class Stage2Study:
    """What one Stage II run learned: held-out L1/SSIM of the trivial predictors and of G per epoch,
    the pose-transfer grid (:func:`transfer_grid`), and what the last epoch's G depends on
    (:func:`input_sensitivity`)."""

    pairs: int
    baselines: Dict[str, Dict[str, float]]
    epochs: List[Dict[str, float]]
    grid: np.ndarray
    inputs: Dict[str, float] = field(default_factory=dict)

    @property
    def beats_trivial(self) -> bool:
        """G's last epoch is better than every trivial predictor on both L1 and SSIM."""
        return beats_trivial(self.epochs[-1], self.baselines)


def study_stage2(stage2_dir: PathLike, epochs: Sequence[int], dataset: Dataset, height: int, width: int,
                 grid_rows: int = 6, pairs_per_id: int = 2) -> Stage2Study:
    """Score a Stage II run's saved epochs on held-out identities and draw its grid."""
    pairs = held_out_pairs(dataset, pairs_per_id)
    baselines, targets, sources = baseline_scores(dataset, pairs, height, width)
    scores, images = stage2_epoch_scores(stage2_dir, epochs, dataset, pairs, targets, keep=grid_rows)
    grid = pose_transfer_grid(dataset, pairs[:grid_rows], sources[:grid_rows], targets[:grid_rows], images)
    last = os.path.join(stage2_dir, str(epochs[-1]))
    transfer = PoseTransfer(last + "_net_E.pth", last + "_net_G.pth", device="cpu", batch_size=32)
    return Stage2Study(len(pairs), baselines, scores, grid, input_sensitivity(transfer, dataset, pairs, targets))


def pose_transfer_grid(dataset: Dataset, pairs: Sequence[TransferPair], sources: np.ndarray, targets: np.ndarray,
                       generated_by_epoch: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`transfer_grid` with the targets' pose maps drawn as G sees them."""
    height, width = sources.shape[1:3]
    maps = [generate_pose_map(target_landmarks(dataset, p.target, height, width), height, width, pose_sigma(height))
            for p in pairs]
    return transfer_grid(sources, targets, maps, generated_by_epoch)


def transfer_grid(sources: np.ndarray, targets: np.ndarray, pose_maps: Sequence[np.ndarray],
                  generated_by_epoch: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """One row per pair: source, target pose, real target, then G's image at each epoch (uint8)."""
    n, h, w, _ = sources.shape
    cols = [sources, np.stack([posemap2im(m) / 255.0 for m in pose_maps]), targets, *generated_by_epoch]
    grid = np.full((n * (h + gap) - gap, len(cols) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for c, images in enumerate(cols):
        for r in range(n):
            tile = np.clip(np.asarray(images[r]) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return grid
