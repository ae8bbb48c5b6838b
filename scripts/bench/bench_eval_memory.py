"""Benchmark: mAP + Market-1501 CMC of a huge gallery in bounded memory.

evaluate_features_streaming (distances one query-chunk x gallery-chunk block at a time) against
the naive way, pairwise_distance (the full query x gallery matrix) + evaluate_rank, in this
process. Both run at a comparison size (default 3,000 x 20,000) to show equal numbers and the
memory difference; the streaming one then runs alone at full size (default 3,000 queries x
500,000 gallery items, 2,048-d float32), where the naive way's memory need is computed and stated,
not run.

Features: 2 queries per identity in distinct cameras; each query identity also owns some gallery
images (20 at full size), the rest of the gallery are single-image distractors. Feature = scaled
identity centre + unit Gaussian noise, generated chunk-wise from seeded torch generators.

Memory is read from /proc/self/status: VmRSS (resident now) and VmHWM (peak resident), the peak
being reset through /proc/self/clear_refs before each measured phase where the kernel allows it.

Usage: python scripts/bench/bench_eval_memory.py [--quick] [--gallery-size N] [--compare-size N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from reid.evaluation_metrics import evaluate_features_streaming, evaluate_rank  # noqa: E402
from reid.evaluators import pairwise_distance  # noqa: E402

NUM_CAMS = 6
CENTRE_SCALE = 0.37  # sets how far identity centres sit apart relative to the noise
GEN_ROWS = 16384  # gallery rows generated at a time
GiB = 1024 ** 3

Labels = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """Resident set size now."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the start or the last successful :func:`reset_peak`."""
    return _status_kib("VmHWM") * 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs '5'); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return peak_rss_bytes() <= rss_bytes() + (1 << 20)


def gib(n: float) -> str:
    return f"{n / GiB:6.2f} GiB"


# ---------------------------------------------------------------------------- problem
def make_labels(num_query: int, num_gallery: int, seed: int) -> Labels:
    """(query ids, gallery ids, query cams, gallery cams); see the module docstring."""
    rng = np.random.default_rng(seed)
    num_ids = max(1, num_query // 2)
    qids = np.arange(num_query) // 2 % num_ids
    qcams = np.empty(num_query, dtype=np.int64)
    for pid in range(num_ids):
        idx = np.flatnonzero(qids == pid)
        qcams[idx] = rng.permutation(NUM_CAMS)[: len(idx)]
    per_id = int(max(2, min(20, 0.5 * num_gallery // num_ids)))
    num_true = min(num_gallery, per_id * num_ids)
    gids = np.concatenate([np.arange(num_true) % num_ids,
                           num_ids + np.arange(num_gallery - num_true)])  # distractors: own ids
    gids = gids[rng.permutation(num_gallery)]
    gcams = rng.integers(0, NUM_CAMS, num_gallery)
    return qids, gids, qcams, gcams


def _seed(seed: int, stream: int, chunk: int) -> int:
    """A distinct torch seed for each (seed, stream, chunk)."""
    return int(np.random.SeedSequence([seed, stream, chunk]).generate_state(1)[0])


def make_features(ids: np.ndarray, num_ids: int, dim: int, seed: int, stream: int) -> torch.Tensor:
    """float32 features ``CENTRE_SCALE * centre[id] + noise``, generated ``GEN_ROWS`` at a time.

    Identities >= ``num_ids`` (distractors) get a fresh random centre each.
    """
    centres = torch.randn(num_ids, dim, generator=torch.Generator().manual_seed(_seed(seed, 0, 0))) * CENTRE_SCALE
    out = torch.empty(len(ids), dim)
    for k, lo in enumerate(range(0, len(ids), GEN_ROWS)):
        gen = torch.Generator().manual_seed(_seed(seed, stream + 1, k))
        part = ids[lo:lo + GEN_ROWS]
        block = out[lo:lo + len(part)]
        torch.randn(block.shape, generator=gen, out=block)
        known = torch.from_numpy(np.flatnonzero(part < num_ids))
        block[known] += centres[torch.from_numpy(part[part < num_ids])]
        fresh = torch.from_numpy(np.flatnonzero(part >= num_ids))
        block[fresh] += torch.randn(len(fresh), dim, generator=gen) * CENTRE_SCALE
    return out


def make_problem(num_query: int, num_gallery: int, dim: int, seed: int):
    qids, gids, qcams, gcams = make_labels(num_query, num_gallery, seed)
    num_ids = max(1, num_query // 2)
    qf = make_features(qids, num_ids, dim, seed, stream=0)
    gf = make_features(gids, num_ids, dim, seed, stream=1)
    return qf, gf, qids, gids, qcams, gcams


# ---------------------------------------------------------------------------- runs
def measured(fn):
    """Run ``fn``; return (result, seconds, peak RSS during the run minus RSS before it)."""
    before = rss_bytes()
    reset_peak()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, peak_rss_bytes() - before


def naive(qf, gf, qids, gids, qcams, gcams) -> Dict:
    return evaluate_rank(pairwise_distance(qf, gf), qids, gids, qcams, gcams, cmc_config="market1501")


def summary(res: Dict) -> str:
    return (f"mAP {res['mAP']:.4f}  top-1 {res['top1']:.4f}  top-5 {res['top5']:.4f}  "
            f"top-10 {res['top10']:.4f}  ({res['num_valid_queries']} valid queries)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: 1,000 queries, 5,000 compared, 60,000 full gallery")
    parser.add_argument("--queries", type=int, default=3000, help="number of queries")
    parser.add_argument("--gallery-size", type=int, default=500_000, help="full-size gallery")
    parser.add_argument("--compare-size", type=int, default=20_000,
                        help="gallery size where both ways run (0 skips the comparison)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimensions")
    parser.add_argument("--gallery-chunk", type=int, default=65536, help="streaming gallery chunk")
    parser.add_argument("--query-chunk", type=int, default=256, help="streaming query chunk")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.queries, args.gallery_size, args.compare_size = 1000, 60_000, 5_000

    peak_resettable = reset_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; peak RSS "
          f"{'reset before each phase' if peak_resettable else 'NOT resettable: peaks are process-wide'}")
    chunks = dict(gallery_chunk=args.gallery_chunk, query_chunk=args.query_chunk)

    if args.compare_size:
        problem = make_problem(args.queries, args.compare_size, args.dim, args.seed)
        q, g = problem[0].shape[0], problem[1].shape[0]
        print(f"\n== comparison: {q} queries x {g} gallery, {args.dim}-d float32 "
              f"(gallery features {gib(problem[1].numel() * 4)})")
        res_s, t_s, mem_s = measured(lambda: evaluate_features_streaming(*problem, **chunks))
        res_n, t_n, mem_n = measured(lambda: naive(*problem))
        print(f"streaming ({args.query_chunk} x {args.gallery_chunk} blocks): {t_s:8.2f} s, "
              f"peak RSS +{gib(mem_s)}")
        print(f"naive (full distmat {gib(q * g * 4)}):        {t_n:8.2f} s, peak RSS +{gib(mem_n)}")
        print(f"time ratio naive/streaming {t_n / t_s:.2f}x, memory ratio {mem_n / max(mem_s, 1):.1f}x")
        print(f"streaming: {summary(res_s)}")
        print(f"naive:     {summary(res_n)}")
        cmc_diff = float(np.abs(np.asarray(res_s["cmc"]) - np.asarray(res_n["cmc"])).max())
        print(f"max |mAP diff| {abs(res_s['mAP'] - res_n['mAP']):.3e}  max |CMC diff| {cmc_diff:.3e}")
        del problem

    q, g, d = args.queries, args.gallery_size, args.dim
    print(f"\n== full size: {q} queries x {g} gallery, {d}-d float32")
    start = time.perf_counter()
    problem = make_problem(q, g, d, args.seed)
    print(f"features generated in {time.perf_counter() - start:.1f} s: gallery {gib(g * d * 4)}, "
          f"queries {gib(q * d * 4)}")
    rss_before = rss_bytes()
    res, t, mem = measured(lambda: evaluate_features_streaming(*problem, **chunks))
    print(f"streaming: {t:.1f} s ({t / q * 1e3:.1f} ms per query); RSS before {gib(rss_before)}, "
          f"peak during {gib(rss_before + mem)} (+{gib(mem)} for the evaluation)")
    print(f"streaming: {summary(res)}")
    distmat, addmm_input = q * g * 4, q * g * 4
    order, masks = q * g * 8, q * g
    print("naive need, not run at this size:")
    print(f"  pairwise_distance distmat {gib(distmat)} (+{gib(addmm_input)} transient "
          f"||q||^2+||g||^2 input of addmm) + evaluate_rank -> peak ~{gib(distmat + addmm_input)}")
    print(f"  release (np.argsort of the distmat + per-query boolean masks): distmat {gib(distmat)} "
          f"+ int64 order {gib(order)} + masks {gib(masks)} = {gib(distmat + order + masks)}")
    print(f"  (both on top of the {gib(g * d * 4)} gallery features)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
