"""Benchmark: pose maps per item, our separable generate_pose_map vs the release's algorithm.

The release's algorithm (written out below) runs one full-size scipy gaussian_filter per keypoint
on an array holding a single 1, then divides by the maximum. Landmarks are random but realistic:
a standing body inside a 256 x 128 crop, some keypoints within 5 px of a border, some missing.

Usage: .venv/bin/python scripts/bench/bench_posemap.py [--items N] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from reid.utils.data.preprocessor import generate_pose_map  # noqa: E402

HEIGHT, WIDTH, SIGMA = 256, 128, 5


def release_pose_map(landmarks: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """The release's construction: one 2-D Gaussian filter per present keypoint."""
    maps = np.zeros((len(landmarks), height, width), dtype=np.float32)
    for k, (row, col) in enumerate(landmarks):
        if row < 0 or col < 0:
            continue
        delta = np.zeros((height, width))
        delta[row, col] = 1.0
        filtered = gaussian_filter(delta, sigma)
        maps[k] = filtered / filtered.max()
    return maps


def realistic_landmarks(rng: np.random.Generator) -> np.ndarray:
    """18 (row, col) keypoints of a standing person; ~10% missing, ankles/wrists often at borders."""
    rows = np.array([20, 45, 50, 90, 125, 50, 90, 125, 130, 190, 250, 130, 190, 250, 15, 15, 20, 20], float)
    cols = np.array([64, 64, 40, 30, 25, 88, 98, 103, 50, 48, 46, 78, 80, 82, 58, 70, 50, 78], float)
    rows = rows * rng.uniform(0.9, 1.1) + rng.normal(0, 6, 18)
    cols = cols + rng.uniform(-20, 20) + rng.normal(0, 6, 18)
    points = np.stack([np.clip(rows, 0, HEIGHT - 1), np.clip(cols, 0, WIDTH - 1)], axis=1).astype(np.int64)
    points[rng.random(18) < 0.1] = -1
    return points


def count_near_border(points: np.ndarray, margin: int = 5) -> int:
    """Present keypoints within ``margin`` px of a border."""
    r, c = points[:, 0], points[:, 1]
    present = r >= 0
    near = (r < margin) | (r >= HEIGHT - margin) | (c < margin) | (c >= WIDTH - margin)
    return int((present & near).sum())


def time_per_item(fn, items: list, repeat: int) -> float:
    """Fastest of ``repeat`` runs of ``fn`` over ``items``, in seconds per item."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for lm in items:
            fn(lm, HEIGHT, WIDTH, SIGMA)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50, help="items per timing run")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs; the fastest is reported")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    items = [realistic_landmarks(rng) for _ in range(args.items)]
    near_border = sum(int(count_near_border(lm)) for lm in items)
    missing = sum(int((lm[:, 0] < 0).sum()) for lm in items)

    generate_pose_map(items[0], HEIGHT, WIDTH, SIGMA)  # fill the profile cache
    max_diff = max(float(np.abs(generate_pose_map(lm, HEIGHT, WIDTH, SIGMA)
                                - release_pose_map(lm, HEIGHT, WIDTH, SIGMA)).max()) for lm in items)
    ours = time_per_item(generate_pose_map, items, args.repeat)
    release = time_per_item(release_pose_map, items, args.repeat)

    print(f"pose maps 18 x {HEIGHT} x {WIDTH}, sigma {SIGMA}, {args.items} items "
          f"({near_border} keypoints within 5 px of a border, {missing} missing)")
    print(f"release algorithm (18 x scipy gaussian_filter): {release * 1e3:8.3f} ms/item")
    print(f"generate_pose_map (cached separable profiles):  {ours * 1e3:8.3f} ms/item")
    print(f"speed-up: {release / ours:.1f}x (target >= 30x)")
    print(f"max |difference|: {max_diff:.3g}")


if __name__ == "__main__":
    main()
