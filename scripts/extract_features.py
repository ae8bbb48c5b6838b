#!/usr/bin/env python
"""Extract re-ID features of every image in a folder into an HDF5 file.

    python scripts/extract_features.py --checkpoint logs/best_net_E.pth --images DIR --output feats.h5
    python scripts/extract_features.py --checkpoint logs/model_best.pth.tar --images DIR --output feats.h5 \\
        --height 256 --width 128 --batch-size 64 --device auto --normalize

The file holds ``features`` (N x D float32, E's pooled backbone features), ``names`` (image paths
relative to --images, sorted) and attributes checkpoint, arch, height, width, normalize.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid import models  # noqa: E402
from reid.feature_extraction import FeatureExtractor, extract_folder, write_features_h5  # noqa: E402
from reid.utils.data.images import list_images  # noqa: E402
from scripts._cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Extract re-ID features of a folder of images into HDF5")
    p.add_argument("--checkpoint", required=True,
                   help="E's weights: model_best.pth.tar (baseline), <epoch>_net_E.pth, or a backbone state dict")
    p.add_argument("--images", required=True, help="image folder (searched recursively)")
    p.add_argument("--output", required=True, help="HDF5 file to write, e.g. feats.h5")
    p.add_argument("-a", "--arch", default="resnet50", choices=models.names(),
                   help="backbone when the checkpoint does not reveal it (default: resnet50)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the features")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    def body(args: argparse.Namespace) -> str:
        list_images(args.images, recursive=True)  # a wrong folder fails before the network is built
        extractor = FeatureExtractor(args.checkpoint, arch=args.arch, height=args.height, width=args.width,
                                     device=args.device, batch_size=args.batch_size, normalize=args.normalize)
        names, features = extract_folder(extractor, args.images)
        write_features_h5(args.output, names, features, attrs={
            "checkpoint": os.path.abspath(args.checkpoint), "arch": extractor.arch,
            "height": args.height, "width": args.width, "normalize": bool(args.normalize),
        })
        return f"{args.output}: {features.shape[0]} x {features.shape[1]} features"

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
