"""Benchmark: throughput of the Stage II/III pose-pair loader (build_pose_pair_loader).

Renders a synthetic dataset (reid.datasets.synthetic_render; 100 identities, 4 cameras, 3 images
per camera, 128 x 64 by default) into a folder under the system temp dir, once, then reads pose
pair batches as train.py does (RandomPairSampler, 3 negatives per positive, no pose augmentation)
with 0 and 2 worker processes, at 128 x 64 and 256 x 128. Each pair item reads an origin image, a
target image and a pose file and builds an 18-channel pose map; images/s counts origin images
(2 per pair), as the training-step benchmark does, so the two can be compared directly.

Usage: python scripts/bench/bench_loader.py [--quick] [--batches N] [--root DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from reid import datasets  # noqa: E402
from reid.datasets.synthetic_render import SyntheticConfig, generate_synthetic_dataset  # noqa: E402
from reid.utils.data.loaders import build_pose_pair_loader  # noqa: E402


def images_per_second(loader, batches: int) -> float:
    """Origin images per second over ``batches`` batches, after the warm-up batches.

    The warm-up covers worker start-up and drains the batches workers prefetch meanwhile
    (``prefetch_factor`` 2 each), so the timed part measures the steady rate.
    """
    it = iter(loader)
    for _ in range(1 + 2 * loader.num_workers):
        next(it)
    done = 0
    start = time.perf_counter()
    for _ in range(batches):
        first, second = next(it)
        done += len(first["pid"]) + len(second["pid"])
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="15 batches, 128 x 64 only")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the main process (0: torch's default; workers use 1)")
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "fdgan_bench_synthetic", "synthetic"),
                        help="dataset folder (rendered there if missing)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    summary = generate_synthetic_dataset(args.root, SyntheticConfig())
    how = "already there" if summary["skipped"] else f"rendered in {summary['seconds']:.1f} s"
    print(f"dataset {args.root}: {summary['num_images']} images ({how})")
    dataset = datasets.create("synthetic", args.root, require_poses=True)
    sizes = [(128, 64)] if args.quick else [(128, 64), (256, 128)]
    batches = 15 if args.quick else args.batches
    print(f"pose-pair loader, {args.batch_size} pairs per batch, {batches} batches; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    for height, width in sizes:
        for workers in (0, 2):
            torch.manual_seed(0)
            loader = build_pose_pair_loader(
                dataset.trainval, dataset.trainval_pid2files, dataset.images_dir, dataset.poses_dir,
                height, width, args.batch_size, workers,
            )
            rate = images_per_second(loader, batches)
            print(f"{height}x{width}, workers {workers}: {rate:7.1f} images/s "
                  f"({rate / (2 * args.batch_size):5.2f} batches/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
