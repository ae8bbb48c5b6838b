"""Benchmark: second-stage re-scoring (the release's ``CascadeEvaluator``), reid.evaluators.rescore_distances against
the release's per-query loop, on a Market-sized problem.

3,368 queries x 15,913 gallery items, 2,048-d L2-normalised features (751 query identities plus
distractor identities, 6 cameras), top-100 re-scored by an eval-mode verification head
EltwiseSubEmbed(square, BatchNorm1d, Linear 2048 -> 2) whose BatchNorm has non-trivial running
statistics and affine parameters. Normalised features keep squared distances below 4, so the
offset max(bar + 1 - d_k, 0) that keeps the re-scored items in front is non-zero for many
queries and both parts of the algorithm are compared.

Ours: rescore_distances as CascadeEvaluator.evaluate calls it (overwrite=True: the result
written into the first stage's matrix) and returning a fresh matrix; both dispatch the square
head's scores to reid.fast_rescoring.folded_scores. The plain form behind it: score_candidates
running the head on every (query, candidate) pair, timed against the folded scores alone. The
release's algorithm, written out below: per query, argsort its row, score the top-k with the head
on (query repeated, candidates), softmax[:, 0] replaces them, and the rest of the row gets the
offset.

Equal first-stage distances across the k-th place make the top-k set ambiguous (np.argsort and
torch.topk may keep different items); such queries are counted and left out of the max
distance difference, since either choice is the algorithm's.

Usage: python scripts/bench/bench_rescoring.py [--quick] [--topk K] [--repeats N] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from reid.evaluation_metrics import evaluate_rank  # noqa: E402
from reid.evaluators import _smallest_k, pairwise_distance, rescore_distances, score_candidates  # noqa: E402
from reid.models.embedding import EltwiseSubEmbed  # noqa: E402

NUM_CAMS = 6


def make_problem(num_query: int, num_gallery: int, num_ids: int, num_distractor_ids: int, dim: int,
                 noise: float, seed: int = 0):
    """(query features, gallery features, query ids, gallery ids, query cams, gallery cams)."""
    rng = np.random.default_rng(seed)
    qids = np.arange(num_query) % num_ids
    qcams = rng.integers(0, NUM_CAMS, num_query)
    num_true = int(0.8 * num_gallery)
    gids = np.concatenate([np.arange(num_true) % num_ids,
                           num_ids + rng.integers(0, num_distractor_ids, num_gallery - num_true)])
    gcams = rng.integers(0, NUM_CAMS, num_gallery)
    # Non-negative, like pooled ReLU features.
    centres = np.abs(rng.standard_normal((num_ids + num_distractor_ids, dim))).astype(np.float32)

    def features(ids: np.ndarray) -> torch.Tensor:
        x = centres[ids] + noise * np.abs(rng.standard_normal((len(ids), dim))).astype(np.float32)
        return F.normalize(torch.from_numpy(x), dim=1)

    return features(qids), features(gids), qids, gids, qcams, gcams


def make_head(qf: torch.Tensor, gf: torch.Tensor, seed: int = 0) -> EltwiseSubEmbed:
    """An eval-mode square head with running statistics of real pair differences."""
    gen = torch.Generator().manual_seed(seed)
    dim = qf.shape[1]
    head = EltwiseSubEmbed("square", use_batch_norm=True, use_classifier=True, num_features=dim, num_classes=2)
    i = torch.randint(0, qf.shape[0], (4096,), generator=gen)
    j = torch.randint(0, gf.shape[0], (4096,), generator=gen)
    sq = (qf[i] - gf[j]).pow(2)
    with torch.no_grad():
        head.bn.running_mean.copy_(sq.mean(0))
        head.bn.running_var.copy_(sq.var(0) * (0.9 + 0.2 * torch.rand(dim, generator=gen)))
        head.bn.weight.copy_(1.0 + 0.05 * torch.randn(dim, generator=gen))
        head.bn.bias.copy_(0.1 * torch.randn(dim, generator=gen))
        # Logit 0 ('different') grows with the (normalised) squared difference, nearly evenly
        # over the dimensions, so the head ranks about as well as the Euclidean distance.
        w = 0.02 + 0.002 * torch.randn(dim, generator=gen)
        head.classifier.weight.copy_(torch.stack([w, -w]) + 0.001 * torch.randn(2, dim, generator=gen))
        head.classifier.bias.copy_(torch.tensor([0.2, -0.1]))
    return head.eval()


def release_rescore(distmat: torch.Tensor, qf: torch.Tensor, gf: torch.Tensor, head: torch.nn.Module,
                   topk: int) -> Tuple[torch.Tensor, int]:
    """The release's second stage: one query at a time. Returns (new distmat, queries offset)."""
    dist = distmat.numpy().copy()
    offset_queries = 0
    with torch.no_grad():
        for i in range(dist.shape[0]):
            order = np.argsort(dist[i])
            top = order[:topk]
            logits = head(qf[i].unsqueeze(0).repeat(topk, 1), gf[torch.from_numpy(top)])
            scores = F.softmax(logits, dim=1)[:, 0].numpy()
            offset = max(float(scores.max()) + 1.0 - float(dist[i, order[topk]]), 0.0)
            offset_queries += offset > 0
            dist[i] += np.float32(offset)
            dist[i, top] = scores
    return torch.from_numpy(dist), offset_queries


def boundary_ties(distmat: torch.Tensor, topk: int) -> torch.Tensor:
    """Queries whose k-th and (k+1)-th smallest first-stage distances are equal."""
    vals = torch.topk(distmat, topk + 1, dim=1, largest=False, sorted=True).values
    return vals[:, topk - 1] == vals[:, topk]


def timed(fn: Callable[..., object], repeats: int,
          setup: Optional[Callable[[], object]] = None) -> Tuple[float, float, object]:
    """Best wall time and best process CPU time of ``repeats`` runs, and the last result; with
    ``setup``, each run is ``fn(setup())`` and the setup is not timed."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        arg = () if setup is None else (setup(),)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn(*arg)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu_start)
    return best, best_cpu, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problem (600 x 3,000)")
    parser.add_argument("--topk", type=int, default=100, help="candidates re-scored per query")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimensions")
    parser.add_argument("--noise", type=float, default=3.5, help="feature noise (sets the first-stage mAP)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        sizes = dict(num_query=600, num_gallery=3000, num_ids=150, num_distractor_ids=300)
    else:
        sizes = dict(num_query=3368, num_gallery=15913, num_ids=751, num_distractor_ids=1500)
    qf, gf, qids, gids, qcams, gcams = make_problem(dim=args.dim, noise=args.noise, **sizes)
    head = make_head(qf, gf)
    distmat = pairwise_distance(qf, gf)
    labels = (qids, gids, qcams, gcams)
    print(f"problem: {qf.shape[0]} queries x {gf.shape[0]} gallery, {args.dim}-d, top-{args.topk}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    t_over, c_over, over = timed(
        lambda d: rescore_distances(d, qf, gf, head, topk=args.topk, overwrite=True), args.repeats,
        setup=distmat.clone)  # a fresh copy per run, made before the clock starts
    t_fresh, c_fresh, fresh = timed(lambda: rescore_distances(distmat, qf, gf, head, topk=args.topk),
                                    args.repeats)
    top_idx, _ = _smallest_k(distmat, args.topk)
    plain_fn = lambda logits: F.softmax(logits, dim=1)[:, 0]  # noqa: E731  (not the default: the plain form)
    t_fold, c_fold, folded = timed(lambda: score_candidates(qf, gf, top_idx, head), args.repeats)
    t_plain, c_plain, plain = timed(lambda: score_candidates(qf, gf, top_idx, head, plain_fn), 1)
    t_release, c_release, (release, offset_queries) = timed(
        lambda: release_rescore(distmat, qf, gf, head, args.topk), 1)

    clear = ~boundary_ties(distmat, args.topk)
    max_diff = float((over[clear] - release[clear]).abs().max())
    maps = {name: evaluate_rank(x, *labels)["mAP"] for name, x in (("release", release), ("ours", over))}
    print(f"{offset_queries} of {qf.shape[0]} queries got a non-zero offset; {int((~clear).sum())} have equal "
          f"distances across the k-th place (left out of the differences)")
    print("wall s (CPU s); ratio in wall (CPU) time")
    print(f"release per-query loop:                          {t_release:7.3f} ({c_release:7.3f})")
    for label, t, c in (("ours, as the evaluator calls it (overwrite=True)", t_over, c_over),
                        ("ours, returning a fresh matrix", t_fresh, c_fresh)):
        print(f"{label + ':':50s}{t:7.3f} ({c:7.3f})  release / ours {t_release / t:5.1f}x "
              f"({c_release / c:5.1f}x)")
    print(f"scores alone: plain form (the head on every pair) {t_plain:.3f} s, folded form {t_fold:.3f} s: "
          f"plain / folded {t_plain / t_fold:.1f}x; max |score diff| {float((plain - folded).abs().max()):.1e}")
    print(f"max |distance diff| vs release {max_diff:.1e}; fresh equals overwrite: {torch.equal(fresh, over)}")
    print(f"mAP first stage {evaluate_rank(distmat, *labels)['mAP']:.6f}; second stage: release "
          f"{maps['release']:.6f}, ours {maps['ours']:.6f}")
    ok = max_diff <= 1e-5 and abs(maps["ours"] - maps["release"]) <= 1e-6 and torch.equal(fresh, over)
    print("numbers equal (distances within 1e-5, mAP within 1e-6): " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
