#!/usr/bin/env python
"""Render the synthetic pedestrian dataset (images, exact pose files, meta.json, splits.json).

    python scripts/make_synthetic_dataset.py --root datasets/synthetic
    python scripts/make_synthetic_dataset.py --root datasets/synthetic --num-ids 200 --seed 3 --force

The same settings give the same files byte for byte; re-running with the same settings does nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid.datasets.synthetic_render import SyntheticConfig, generate_synthetic_dataset  # noqa: E402
from scripts._cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description="Render the synthetic re-ID dataset with exact keypoints")
    p.add_argument("--root", default="datasets/synthetic", help="folder to create (default: datasets/synthetic)")
    p.add_argument("--num-ids", type=int, default=d.num_ids, help="identities; the first half is trainval")
    p.add_argument("--num-cams", type=int, default=d.num_cams)
    p.add_argument("--images-per-cam", type=int, default=d.images_per_cam,
                   help="images of an identity in each camera that sees it (2..num-cams cameras do)")
    p.add_argument("--num-distractors", type=int, default=None,
                   help="extra gallery-only identities (default: num-ids // 20, at least 1)")
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--force", action="store_true", help="replace an existing folder made with other settings")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    def body(args: argparse.Namespace) -> str:
        config = SyntheticConfig(num_ids=args.num_ids, num_cams=args.num_cams, images_per_cam=args.images_per_cam,
                                 height=args.height, width=args.width, seed=args.seed,
                                 num_distractors=args.num_distractors)
        generate_synthetic_dataset(args.root, config, force=args.force)
        return ""

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
