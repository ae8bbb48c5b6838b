#!/usr/bin/env python
"""Pre-train E's backbone on freshly rendered identities: an ImageNet substitute for offline machines.

    python scripts/pretrain_backbone.py --out datasets/pretrained/substitute-resnet18.pth
    python baseline.py ... -a resnet18 --pretrained-weights datasets/pretrained/substitute-resnet18.pth
    python scripts/pretrain_backbone.py --cache-dir datasets/pretrained   # reuse one with these settings

The file is in torchvision's format; a sidecar <file>.json records its settings, held-out
identity accuracy and time. --eval-dataset also reports the backbone's first-stage test mAP on a
dataset (no re-ID training at all).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid import models  # noqa: E402
from reid.models.pretrained import weights_origin  # noqa: E402
from reid.pipelines.pretrain import (  # noqa: E402
    PretrainConfig, evaluate_backbone, pretrain_backbone, substitute_backbone,
)
from scripts._cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="weights file to write (torchvision format)")
    where.add_argument("--cache-dir", metavar="DIR",
                       help="reuse DIR/substitute-<arch>-<hash of the settings>.pth if it exists, else build it")
    p.add_argument("-a", "--arch", default=d.arch, choices=models.names())
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--num-ids", type=int, default=d.num_ids, help="rendered identities to classify")
    p.add_argument("--num-cams", type=int, default=d.num_cams, help="camera pool of the renderings")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--ids-per-batch", type=int, default=d.ids_per_batch, help="P of the P x K batches")
    p.add_argument("--images-per-id", type=int, default=d.images_per_id, help="K of the P x K batches")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam's peak learning rate")
    p.add_argument("--heldout-ids", type=int, default=None,
                   help="identities whose held-out renderings measure the ID accuracy (default: 200, or all if fewer)")
    p.add_argument("-j", "--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-dataset", default="", metavar="DIR",
                   help="also report the first-stage test mAP on this dataset folder (e.g. datasets/synthetic)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    def body(args: argparse.Namespace) -> str:
        cfg = PretrainConfig(arch=args.arch, height=args.height, width=args.width, num_ids=args.num_ids,
                             num_cams=args.num_cams, seed=args.seed, iterations=args.iterations,
                             ids_per_batch=args.ids_per_batch, images_per_id=args.images_per_id, lr=args.lr,
                             heldout_ids=args.heldout_ids)
        if args.cache_dir:
            path = substitute_backbone(cfg, args.cache_dir, device=args.device, workers=args.workers,
                                       progress=args.progress)
        else:
            path = args.out
            pretrain_backbone(cfg, path, device=args.device, workers=args.workers, progress=args.progress)
        origin = weights_origin(path)
        line = f"{path}: held-out ID accuracy {100 * origin['heldout_id_accuracy']:.1f}%"
        if args.eval_dataset:
            res = evaluate_backbone(path, args.arch, args.eval_dataset, args.height, args.width,
                                    device=args.device, workers=args.workers)
            line += (f"; {os.path.basename(os.path.normpath(args.eval_dataset))} test, first stage, open-reid "
                     f"protocol: mAP {100 * res['mAP']:.1f}% (chance {100 * res['chance']['mAP']:.1f}%), "
                     f"top-1 {100 * res['top1']:.1f}% (chance {100 * res['chance']['top1']:.1f}%)")
        return line

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
