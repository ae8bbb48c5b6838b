"""Benchmark: mAP + Market-1501 CMC of reid.evaluation_metrics against the release's algorithm.

Three forms on the same problem, in this process: the release's algorithm; evaluate_rank as every
report calls it (the rank-counting form, reid.evaluation_metrics.fast_ranking); and evaluate_rank
held to ranking.py's per-query definitions (the plain form the fast one stands behind). Prints
both ratios and checks that the numbers agree.

Builds a Market-sized random problem (3,368 queries x 15,913 gallery items, 751 identities plus
distractor identities seen only in the gallery, 6 cameras) with distances between noisy
identity-centred features, then times both implementations in this process and compares their
numbers. The release's algorithm is re-written here from its description: a full argsort of the
distance matrix, a Python loop over queries, scikit-learn's average_precision_score per query for
mAP, and the same loop with first-match-break for the CMC.

Usage: python scripts/bench/bench_metrics.py [--quick] [--noise SIGMA] [--repeats N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Tuple

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from reid.evaluation_metrics import evaluate_rank  # noqa: E402

Problem = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def make_problem(num_query: int, num_gallery: int, num_ids: int, num_distractor_ids: int,
                 num_cams: int = 6, dim: int = 128, noise: float = 1.4, seed: int = 0) -> Problem:
    """Random re-ID problem: (distmat float32, query ids, gallery ids, query cams, gallery cams).

    Queries cycle over the identities with at most one query per identity and camera; 80 % of the
    gallery belongs to the query identities in random cameras (so some share the query's camera),
    the rest to distractor identities. Features are identity centre + Gaussian noise, so
    distances are tie-free and the ranking quality is set by ``noise``.
    """
    rng = np.random.default_rng(seed)
    qids = np.arange(num_query) % num_ids
    qcams = np.empty(num_query, dtype=np.int64)
    for pid in range(num_ids):
        idx = np.flatnonzero(qids == pid)
        if len(idx) <= num_cams:
            qcams[idx] = rng.permutation(num_cams)[: len(idx)]
        else:
            qcams[idx] = rng.integers(0, num_cams, len(idx))
    num_true = int(0.8 * num_gallery)
    gids = np.concatenate([
        np.arange(num_true) % num_ids,
        num_ids + rng.integers(0, num_distractor_ids, num_gallery - num_true),
    ])
    gcams = rng.integers(0, num_cams, num_gallery)
    centres = rng.standard_normal((num_ids + num_distractor_ids, dim)).astype(np.float32)
    qf = centres[qids] + noise * rng.standard_normal((num_query, dim)).astype(np.float32)
    gf = centres[gids] + noise * rng.standard_normal((num_gallery, dim)).astype(np.float32)
    dist = (qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None, :] - 2.0 * (qf @ gf.T)
    return dist.astype(np.float32), qids, gids, qcams, gcams


def release_mean_ap(dist: np.ndarray, qids: np.ndarray, gids: np.ndarray,
                    qcams: np.ndarray, gcams: np.ndarray) -> float:
    """The release's mAP: full argsort, per-query loop, scikit-learn AP of each query."""
    from sklearn.metrics import average_precision_score

    order = np.argsort(dist, axis=1)
    is_same_id = gids[order] == qids[:, None]
    aps = []
    for i in range(dist.shape[0]):
        keep = (gids[order[i]] != qids[i]) | (gcams[order[i]] != qcams[i])
        y_true = is_same_id[i, keep]
        if not y_true.any():
            continue
        aps.append(average_precision_score(y_true, -dist[i][order[i]][keep]))
    return float(np.mean(aps))


def release_cmc_first_match(dist: np.ndarray, qids: np.ndarray, gids: np.ndarray,
                            qcams: np.ndarray, gcams: np.ndarray, topk: int = 100) -> np.ndarray:
    """The release's CMC with first_match_break: full argsort and a per-query loop."""
    order = np.argsort(dist, axis=1)
    is_same_id = gids[order] == qids[:, None]
    hist = np.zeros(topk)
    num_valid = 0
    for i in range(dist.shape[0]):
        keep = (gids[order[i]] != qids[i]) | (gcams[order[i]] != qcams[i])
        hits = np.nonzero(is_same_id[i, keep])[0]
        if len(hits) == 0:
            continue
        if hits[0] < topk:
            hist[hits[0]] += 1
        num_valid += 1
    return np.cumsum(hist) / num_valid


def best_time(fn: Callable[[], object], repeats: int) -> Tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problem (600 x 3,000)")
    parser.add_argument("--noise", type=float, default=1.4,
                        help="feature noise; 1.4 gives mAP ~0.5, 2.5 a near-random ranking")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best kept)")
    args = parser.parse_args()

    if args.quick:
        sizes = dict(num_query=600, num_gallery=3000, num_ids=150, num_distractor_ids=300)
    else:
        sizes = dict(num_query=3368, num_gallery=15913, num_ids=751, num_distractor_ids=1500)
    problem = make_problem(noise=args.noise, **sizes)
    dist = problem[0]
    print(f"problem: {dist.shape[0]} queries x {dist.shape[1]} gallery, float32, "
          f"noise {args.noise}")

    def ours(fast=None):
        res = evaluate_rank(*problem, cmc_config="market1501", max_rank=100, fast=fast)
        return res["mAP"], np.asarray(res["cmc"])

    t_ours, (map_ours, cmc_ours) = best_time(ours, args.repeats)
    t_plain, (map_plain, cmc_plain) = best_time(lambda: ours(fast=False), 1)
    start = time.perf_counter()
    map_rel = release_mean_ap(*problem)
    cmc_rel = release_cmc_first_match(*problem)
    t_rel = time.perf_counter() - start

    print(f"mAP {map_ours:.4f}  top-1 {cmc_ours[0]:.4f}  top-5 {cmc_ours[4]:.4f}  top-10 {cmc_ours[9]:.4f}")
    print(f"release algorithm (argsort + loops, scikit-learn AP): {t_rel:8.3f} s")
    print(f"ours, per-query definitions (plain form):             {t_plain:8.3f} s")
    print(f"ours, evaluate_rank('market1501') (fast form):        {t_ours:8.3f} s (best of {args.repeats})")
    print(f"ratio release / ours {t_rel / t_ours:.1f}x; plain / fast form {t_plain / t_ours:.1f}x")
    map_diff = max(abs(map_ours - map_rel), abs(map_plain - map_rel))
    cmc_equal = np.array_equal(cmc_ours, cmc_rel) and np.array_equal(cmc_plain, cmc_rel)
    print(f"numbers: max |mAP diff| {map_diff:.3e} (fast vs plain {abs(map_ours - map_plain):.1e}), "
          f"CMC equal: {cmc_equal}")
    ok = map_diff < 1e-8 and cmc_equal
    print("numbers equal: yes" if ok else "numbers equal: NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
