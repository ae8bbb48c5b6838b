#!/usr/bin/env python
"""Generate a person in chosen poses with trained FD-GAN networks (E and G).

    python scripts/generate_images.py --netE CKPT/100_net_E.pth --netG CKPT/100_net_G.pth \\
        --dataset-dir datasets/market1501 --sources 00000002_00_0000.jpg other.jpg \\
        --poses 00000010_03_0001.jpg pose.txt --num-noise 3 --seed 0 --output demo_output/generated

--sources: image paths, or file names of --dataset-dir's images. --poses: pose files (.txt),
dataset file names (their pose file <dataset-dir>/poses/<stem>.txt), or images (the pose is then
estimated with mediapipe, which only .venv-pose has; otherwise make pose files first with
scripts/generate_poses.py). The generator's configuration, including its image size, is read
from its weights. Writes one PNG per (source, pose, noise), grid.png (sources down the first
column, pose maps along the first row), manifest.json and index.html into --output.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fdgan.generation import parse_size, run_generation  # noqa: E402
from reid.errors import FDGANError  # noqa: E402
from reid.utils.logging import setup_logging  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate persons in target poses with trained E and G")
    p.add_argument("--netE", required=True, help="E's weights: <epoch>_net_E.pth or a baseline model_best.pth.tar")
    p.add_argument("--netG", required=True, help="G's weights: <epoch>_net_G.pth")
    p.add_argument("--sources", nargs="+", required=True, help="source images: paths or dataset file names")
    p.add_argument("--poses", nargs="+", required=True,
                   help="target poses: pose files (.txt), dataset file names, or images (pose estimated)")
    p.add_argument("--dataset-dir", default=None,
                   help="prepared dataset folder (with images/ and poses/) for file names, e.g. datasets/market1501")
    p.add_argument("--num-noise", type=int, default=1, help="noise vectors per (source, pose) (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise vectors (default: 0)")
    p.add_argument("--height", type=int, default=None, help="expected generator height (default: read from netG)")
    p.add_argument("--width", type=int, default=None, help="expected generator width (default: read from netG)")
    p.add_argument("--pose-size", default=None,
                   help="HxW pixel size that pose files refer to when their image is not found "
                        "(default: the generator size)")
    p.add_argument("--sigma", type=float, default=None,
                   help="pose-map Gaussian sigma in pixels (default: as in training, 5 x height / 256)")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--output", default="demo_output/generated", help="output folder (default: demo_output/generated)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        pose_size = parse_size(args.pose_size, "--pose-size") if args.pose_size is not None else None
        result = run_generation(
            args.netE, args.netG, args.sources, args.poses, args.output, dataset_dir=args.dataset_dir,
            num_noise=args.num_noise, seed=args.seed, height=args.height, width=args.width, pose_size=pose_size,
            device=args.device, batch_size=args.batch_size, sigma=args.sigma,
        )
    except FDGANError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(result['images'])} images, grid {result['grid']}, page {result['page']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
