#!/usr/bin/env python
"""Show the top-k gallery images a trained E ranks first for some queries, in both cascade stages.

    python scripts/visualize_ranks.py --checkpoint logs/model_best.pth.tar -d market1501 \\
        --data-dir datasets --num-queries 20 --seed 0 --topk 10 --output demo_output/ranks
    python scripts/visualize_ranks.py --checkpoint CKPT/best_net_E.pth -d market1501 --data-dir datasets \\
        --queries 00000002_00_0000.jpg 00000007_03_0001.jpg --protocol official

Each query gets one PNG with two labelled rows: the first stage (Euclidean distance of the pooled
features) and the second stage (the first --rerank-topk candidates re-scored by the verification
head). True matches are framed green, other identities red; gallery images of the query's identity
AND camera are left out, as in evaluation. index.html shows every picture; ranks.json lists the
rankings.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid import datasets  # noqa: E402
from reid.evaluators import RESCORE_TOPK  # noqa: E402
from reid.pipelines.common import PROTOCOLS  # noqa: E402
from reid.visualization import visualize_ranks  # noqa: E402
from scripts._cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Ranked lists of a re-ID model (first and second cascade stage)")
    p.add_argument("--checkpoint", required=True, help="E's weights: model_best.pth.tar or <epoch>_net_E.pth")
    p.add_argument("-d", "--dataset", required=True, choices=datasets.names())
    p.add_argument("--data-dir", default="./datasets", help="folder holding <dataset>/ (default: ./datasets)")
    p.add_argument("--split", type=int, default=0)
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--queries", nargs="+", default=None, metavar="FNAME", help="query image file names")
    chosen.add_argument("--num-queries", type=int, default=10, help="random queries to show (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random query choice (default: 0)")
    p.add_argument("--topk", type=int, default=10, help="gallery images per row (default: 10)")
    p.add_argument("--rerank-topk", type=int, default=RESCORE_TOPK,
                   help=f"first-stage candidates re-scored in the second stage (default: {RESCORE_TOPK})")
    p.add_argument("--protocol", default="openreid", choices=list(PROTOCOLS))
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--output", default="demo_output/ranks", help="output folder (default: demo_output/ranks)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    def body(args: argparse.Namespace) -> str:
        result = visualize_ranks(
            args.checkpoint, args.dataset, args.data_dir, args.output, queries=args.queries,
            num_queries=args.num_queries, seed=args.seed, topk=args.topk, rerank_topk=args.rerank_topk,
            protocol=args.protocol, split_id=args.split, height=args.height, width=args.width,
            batch_size=args.batch_size, workers=args.workers, device=args.device, progress=True,
        )
        return f"{len(result['images'])} ranked lists, page {result['page']}"

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
