"""Benchmark: the Stage II/III pose-pair loader with pose maps in its items, against keypoints.

Renders a synthetic set (100 identities, 256 x 128) into a folder under the system temp dir,
once, then reads batches of 64 pairs with 2 workers as train.py does, at 256 x 128, two ways:
today's items, which carry the target's 18 float32 pose maps (``Preprocessor``), and items that
carry the keypoints, sigma and flip the maps are drawn from instead (``KeypointItems`` below,
the same random draws in the same order). It prints the bytes of one item's tensors and the
loader's items per second (after the workers' warm-up; the best of ``--repeats`` alternating
runs), and for the keypoint items also the rate when the main process then draws the batch's
maps on the CPU. It checks that the drawn maps equal today's (exit status 1 otherwise).

The project keeps today's items: the keypoint loader is not 2x faster (docs/performance.md).

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
from reid.utils.data.images import read_image  # noqa: E402
from reid.utils.data.loaders import _pair_loader  # noqa: E402
from reid.utils.data.pose import read_pose_file, scale_landmarks  # noqa: E402
from reid.utils.data.preprocessor import _GAUSS_FACTORS, Preprocessor, generate_pose_map  # noqa: E402

HEIGHT, WIDTH = 256, 128


def item_bytes(item: dict) -> int:
    """Bytes of the tensors of one item (what crosses worker shared memory and pinned memory)."""
    return sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor)) + 8  # + pid


class KeypointItems(Preprocessor):
    """Pose-guided items carrying ``keypoints`` (int64 (18, 2), after --pose-aug erase), ``sigma``
    (after --pose-aug gauss) and ``flip`` instead of ``posemap``; otherwise Preprocessor's items."""

    def _get_pose_item(self, index: int) -> dict:
        fname, pid, _ = self.dataset[index]
        origin = self.origin_transform(read_image(self._image_path(fname)))
        target_fname = self._pick_target(fname, pid)
        target_img = read_image(self._image_path(target_fname))
        img_w, img_h = target_img.size
        landmarks = scale_landmarks(read_pose_file(self._pose_path(target_fname)), (img_h, img_w),
                                    (self.height, self.width))
        target = self.target_transform(target_img)
        sigma = self.sigma
        if self.pose_aug == "gauss":
            sigma = random.choice(tuple(sigma * f for f in _GAUSS_FACTORS))
        elif self.pose_aug == "erase":
            landmarks[random.randrange(len(landmarks))] = -1
        flip = random.random() < 0.5
        if flip:
            target = torch.flip(target, dims=[-1])
        return {"origin": origin, "target": target, "pid": int(pid), "keypoints": torch.from_numpy(landmarks),
                "sigma": torch.tensor(sigma, dtype=torch.float64), "flip": torch.tensor(flip)}


def batch_pose_maps(half: dict) -> torch.Tensor:
    """The maps of a collated batch of keypoint items, drawn on the CPU as today's items draw them."""
    maps = [torch.from_numpy(generate_pose_map(kp.numpy(), HEIGHT, WIDTH, float(s)))
            for kp, s in zip(half["keypoints"], half["sigma"])]
    return torch.stack([torch.flip(m, dims=[-1]) if f else m for m, f in zip(maps, half["flip"].tolist())])


class DrawingLoader:
    """A loader whose batches get their maps drawn in this process (the CPU training path)."""

    def __init__(self, loader) -> None:
        self.loader, self.num_workers = loader, loader.num_workers

    def __iter__(self):
        for first, second in self.loader:
            for half in (first, second):
                half["posemap"] = batch_pose_maps(half)
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
        """build_pose_pair_loader's loader, of today's items or of keypoint items."""
        torch.manual_seed(0)
        random.seed(0)
        items = (KeypointItems if keypoints else Preprocessor)(
            list(dataset.trainval), root=dataset.images_dir, with_pose=True, pose_root=dataset.poses_dir,
            pid_imgs=dataset.trainval_pid2files, height=HEIGHT, width=WIDTH, pose_aug=pose_aug)
        return _pair_loader(items, dataset.trainval, pairs, workers, 3, None, False, None)

    sizes = {"maps": item_bytes(loader(False).dataset[0]), "keypoints": item_bytes(loader(True).dataset[0])}

    # The same draws give the same items: the drawn maps must equal today's, under every --pose-aug.
    equal = True
    for pose_aug in ("no", "gauss", "erase"):
        first_maps, _ = next(iter(loader(False, 16, 0, pose_aug)))
        first_kp, _ = next(iter(loader(True, 16, 0, pose_aug)))
        equal &= torch.equal(batch_pose_maps(first_kp), first_maps["posemap"])

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
