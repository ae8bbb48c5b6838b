"""The experiment's measures: pose difference, re-ID on pose-split matches, image scores, paired statistics."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy.stats import t as student_t
from skimage.metrics import structural_similarity

from reid.evaluation_metrics import cmc, mean_ap

#: Fewer keypoints than this seen in both images: the poses count as different.
MIN_COMMON_KEYPOINTS = 4


def pose_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised distance between two poses given as ``(K, 2)`` (row, col) keypoints (-1: missing).

    Over the keypoints present in both, each pose is centred on its mean and divided by its
    height (row extent of those keypoints, at least 1 pixel); the distance is the mean Euclidean
    distance between corresponding normalised keypoints. With fewer than
    :data:`MIN_COMMON_KEYPOINTS` shared keypoints the poses are taken as different (``inf``).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    common = (a >= 0).all(axis=1) & (b >= 0).all(axis=1)
    if common.sum() < MIN_COMMON_KEYPOINTS:
        return math.inf

    def normalised(p: np.ndarray) -> np.ndarray:
        p = p[common]
        return (p - p.mean(axis=0)) / max(p[:, 0].max() - p[:, 0].min(), 1.0)

    return float(np.linalg.norm(normalised(a) - normalised(b), axis=1).mean())


def match_pose_distances(query_poses: Sequence[np.ndarray], gallery_poses: Sequence[np.ndarray],
                         query_ids: Sequence[int], gallery_ids: Sequence[int], query_cams: Sequence[int],
                         gallery_cams: Sequence[int]) -> np.ndarray:
    """Q x G pose distances of each query's true matches (same id, other camera); NaN elsewhere."""
    out = np.full((len(query_ids), len(gallery_ids)), np.nan)
    gids, gcams = np.asarray(gallery_ids), np.asarray(gallery_cams)
    for q, (qid, qcam) in enumerate(zip(query_ids, query_cams)):
        for g in np.flatnonzero((gids == qid) & (gcams != qcam)):
            out[q, g] = pose_distance(query_poses[q], gallery_poses[g])
    return out


def split_matches(distances: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Boolean Q x G masks of the true matches with a similar pose (distance <= threshold) and
    with a different one (> threshold, or no comparable pose); ``distances`` as
    :func:`match_pose_distances` returns them."""
    match = ~np.isnan(distances)
    similar = match & (np.nan_to_num(distances, nan=np.inf) <= threshold)
    return similar, match & ~similar


def part_scores(distmat: np.ndarray, query_ids: Sequence[int], gallery_ids: Sequence[int],
                query_cams: Sequence[int], gallery_cams: Sequence[int], keep: np.ndarray,
                drop: np.ndarray) -> Dict[str, float]:
    """mAP and top-1 of each query against the gallery without the matches in ``drop``.

    ``keep`` and ``drop`` are Q x G masks of true matches (:func:`split_matches`); every other
    gallery image stays, so a query is scored on finding the ``keep`` matches among all the
    non-matching images. Queries without a ``keep`` match are skipped.

    Returns:
        ``{'mAP', 'top1', 'queries'}`` (fractions; the number of scored queries).
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    qids, gids = np.asarray(query_ids), np.asarray(gallery_ids)
    qcams, gcams = np.asarray(query_cams), np.asarray(gallery_cams)
    aps: List[float] = []
    tops: List[float] = []
    for q in range(len(qids)):
        if not keep[q].any():
            continue
        cols = ~drop[q]
        args = (distmat[q:q + 1, cols], qids[q:q + 1], gids[cols], qcams[q:q + 1], gcams[cols])
        aps.append(mean_ap(*args))
        tops.append(float(cmc(*args, topk=1, first_match_break=True)[0]))
    if not aps:
        return {"mAP": float("nan"), "top1": float("nan"), "queries": 0}
    return {"mAP": float(np.mean(aps)), "top1": float(np.mean(tops)), "queries": len(aps)}


def pose_split_scores(distmat: np.ndarray, query_ids: Sequence[int], gallery_ids: Sequence[int],
                      query_cams: Sequence[int], gallery_cams: Sequence[int], distances: np.ndarray,
                      threshold: float) -> Dict[str, Dict[str, float]]:
    """Scores on the similar-pose and the different-pose matches, and their gap (similar - different)."""
    similar, different = split_matches(distances, threshold)
    ids_cams = (query_ids, gallery_ids, query_cams, gallery_cams)
    out = {"similar": part_scores(distmat, *ids_cams, keep=similar, drop=different),
           "different": part_scores(distmat, *ids_cams, keep=different, drop=similar)}
    out["gap"] = {k: out["similar"][k] - out["different"][k] for k in ("mAP", "top1")}
    return out


def image_scores(predicted: np.ndarray, target: np.ndarray) -> Dict[str, float]:
    """Mean L1 and mean SSIM of predicted vs target images, N x H x W x 3 in [0, 1].

    L1 is the mean absolute difference per pixel and channel; SSIM is scikit-image's
    ``structural_similarity`` over the colour channels (data range 1, its default 7 x 7
    window, smaller for images under 7 pixels), averaged over the images.
    """
    predicted, target = np.asarray(predicted, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if predicted.shape != target.shape or predicted.ndim != 4:
        raise ValueError(f"need two N x H x W x 3 arrays of one shape, got {predicted.shape} and {target.shape}")
    win = min(7, *predicted.shape[1:3])
    win -= 1 - win % 2  # an odd window
    ssim = [structural_similarity(p, t, channel_axis=2, data_range=1.0, win_size=win)
            for p, t in zip(predicted, target)]
    return {"L1": float(np.abs(predicted - target).mean()), "SSIM": float(np.mean(ssim))}


def trivial_predictions(sources: np.ndarray, mean_image: np.ndarray) -> Dict[str, np.ndarray]:
    """The two trivial predictors of a target image: the source copied, and the mean training image."""
    sources = np.asarray(sources, dtype=np.float64)
    return {"copy source": sources, "mean training image": np.broadcast_to(mean_image, sources.shape)}


def paired_stats(first: Sequence[float], second: Sequence[float], power: float = 0.8) -> Dict[str, object]:
    """Mean and sample standard deviation of each arm and of the per-seed difference (second - first),
    the difference's 95 % confidence interval (t distribution, n - 1 degrees of freedom) and the
    smallest mean difference the run could detect.

    The detectable difference is that of a two-sided paired t-test at the 5 % level with
    ``power`` (80 %): (t(0.975, n-1) + t(power, n-1)) * sd / sqrt(n), sd being the observed
    standard deviation of the differences. With one seed every spread is NaN.
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equal-length non-empty sequences, got {a.shape} and {b.shape}")
    diff = b - a

    def std(x: np.ndarray) -> float:
        return float(x.std(ddof=1)) if len(x) > 1 else float("nan")

    n, sd = len(a), std(diff)
    if n > 1:
        sem = sd / math.sqrt(n)
        half = float(student_t.ppf(0.975, n - 1)) * sem
        detectable = float(student_t.ppf(0.975, n - 1) + student_t.ppf(power, n - 1)) * sem
    else:
        half = detectable = float("nan")
    return {"first_mean": float(a.mean()), "first_std": std(a), "second_mean": float(b.mean()),
            "second_std": std(b), "diff": [float(d) for d in diff], "diff_mean": float(diff.mean()),
            "diff_std": sd, "ci95": [float(diff.mean()) - half, float(diff.mean()) + half],
            "detectable": detectable, "positive": int((diff > 0).sum()), "n": n}


def improves(stats: Dict[str, object]) -> bool:
    """True only when the difference's 95 % confidence interval lies above 0."""
    low = stats["ci95"][0]  # type: ignore[index]
    return bool(math.isfinite(low) and low > 0)
