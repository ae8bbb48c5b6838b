"""Benchmark: the Stage II/III pose-pair loader with pose maps in its items, against keypoints.

Renders a synthetic set (100 identities, 256 x 128) into a folder under the system temp dir,
once, then reads batches of 64 pairs with 2 workers as train.py does, at 256 x 128, two ways:
items carrying the target's 18 float32 pose maps (``draw_maps=True``, what a CPU run loads), and
items carrying the keypoints, sigma and flip the maps are drawn from (``draw_maps=False``, what a
GPU run loads; ``FDGANModel.set_input`` draws the maps on the device). It prints the bytes of one
item's tensors and the loader's items per second (after the workers' warm-up; the best of
``--repeats`` alternating runs), and for the keypoint items also the rate when the main process
then draws the batch's maps on the CPU (why a CPU run keeps the maps in its items). It checks
that the drawn maps equal the carried ones under every ``--pose-aug`` (exit status 1 otherwise).

Usage: python scripts/bench/bench_pose_items.py [--batches N] [--repeats N] [--workers N] [--pairs N]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_loader import images_per_second  # noqa: E402
from reid import datasets  # noqa: E402
from reid.datasets.synthetic_render import SyntheticConfig, generate_synthetic_dataset  # noqa: E402
from reid.utils.data.loaders import build_pose_pair_loader  # noqa: E402
from reid.utils.data.preprocessor import batch_pose_maps  # noqa: E402

HEIGHT, WIDTH = 256, 128


def item_bytes(item: dict) -> int:
    """Bytes of the tensors of one item (what crosses worker shared memory and pinned memory)."""
    return sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor)) + 8  # + pid


class DrawingLoader:
    """A loader whose batches get their maps drawn in this process (the CPU training path)."""

    def __init__(self, loader) -> None:
        self.loader, self.num_workers = loader, loader.num_workers

    def __iter__(self):
        for first, second in self.loader:
            for half in (first, second):
                half["posemap"] = batch_pose_maps(half, HEIGHT, WIDTH)
            yield first, second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each form (best kept)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=64, help="pairs per batch")
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "fdgan_bench_synthetic_256", "synthetic"),
                        help="dataset folder (rendered there if missing)")
    args = parser.parse_args()

    summary = generate_synthetic_dataset(args.root, SyntheticConfig(height=HEIGHT, width=WIDTH))
    dataset = datasets.create("synthetic", args.root, require_poses=True)
    print(f"dataset {args.root}: {summary['num_images']} images; {args.pairs} pairs per batch, {args.workers} workers, "
          f"{args.batches} timed batches, best of {args.repeats}; torch {torch.__version__}, {os.cpu_count()} CPUs")

    def loader(keypoints: bool, pairs: int = args.pairs, workers: int = args.workers, pose_aug: str = "no"):
        torch.manual_seed(0)
        random.seed(0)
        return build_pose_pair_loader(dataset.trainval, dataset.trainval_pid2files, dataset.images_dir,
                                      dataset.poses_dir, HEIGHT, WIDTH, pairs, workers, pose_aug=pose_aug,
                                      draw_maps=not keypoints)

    sizes = {"maps": item_bytes(loader(False).dataset[0]), "keypoints": item_bytes(loader(True).dataset[0])}

    # The same draws give the same items: the drawn maps must equal today's, under every --pose-aug.
    equal = True
    for pose_aug in ("no", "gauss", "erase"):
        first_maps, _ = next(iter(loader(False, 16, 0, pose_aug)))
        first_kp, _ = next(iter(loader(True, 16, 0, pose_aug)))
        equal &= torch.equal(batch_pose_maps(first_kp, HEIGHT, WIDTH), first_maps["posemap"])

    rates = {"maps": 0.0, "keypoints": 0.0, "keypoints + CPU drawing": 0.0}
    for _ in range(args.repeats):
        rates["maps"] = max(rates["maps"], images_per_second(loader(False), args.batches))
        rates["keypoints"] = max(rates["keypoints"], images_per_second(loader(True), args.batches))
        rates["keypoints + CPU drawing"] = max(rates["keypoints + CPU drawing"],
                                               images_per_second(DrawingLoader(loader(True)), args.batches))
    for name, rate in rates.items():
        size = sizes["maps" if name == "maps" else "keypoints"]
        print(f"{name:24s} {size:>10,d} bytes/item {rate:8.1f} items/s ({rate / rates['maps']:.2f}x)")
    print(f"drawn maps equal the carried maps: {'yes' if equal else 'NO'}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
