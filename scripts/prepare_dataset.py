#!/usr/bin/env python
"""Convert an official re-ID download into the prepared layout (images/, meta.json, splits.json).

    python scripts/prepare_dataset.py market1501 --src Market-1501-v15.09.15.zip --dst datasets/market1501
    python scripts/prepare_dataset.py dukemtmc --src DukeMTMC-reID.zip --dst datasets/dukemtmc
    python scripts/prepare_dataset.py cuhk03 --src cuhk03_release.zip --dst datasets/cuhk03
    python scripts/prepare_dataset.py generic --src FOLDER --dst datasets/NAME [--train-dir train ...]

--src is the archive as downloaded or its extracted folder. An interrupted run resumes when run
again with the same arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid.datasets.converters import CONVERTERS, convert  # noqa: E402
from scripts._cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert a re-ID download into the open-reid layout")
    p.add_argument("dataset", choices=sorted(CONVERTERS))
    p.add_argument("--src", required=True, help="downloaded archive (zip/tar.gz) or its extracted folder")
    p.add_argument("--dst", required=True, help="folder to create, e.g. datasets/market1501")
    g = p.add_argument_group("generic only")
    g.add_argument("--train-dir", default="train", help="training images subfolder (default: train)")
    g.add_argument("--query-dir", default="query", help="query images subfolder (default: query)")
    g.add_argument("--gallery-dir", default="gallery", help="gallery images subfolder (default: gallery)")
    g.add_argument("--name", default=None, help="dataset name in meta.json (default: the --dst folder name)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()

    def body(args: argparse.Namespace) -> str:
        generic = dict(train_dir=args.train_dir, query_dir=args.query_dir, gallery_dir=args.gallery_dir,
                       name=args.name)
        if args.dataset != "generic" and generic != dict(train_dir="train", query_dir="query",
                                                         gallery_dir="gallery", name=None):
            parser.error("--train-dir, --query-dir, --gallery-dir and --name apply only to 'generic'")
        convert(args.dataset, args.src, args.dst, **(generic if args.dataset == "generic" else {}))
        return ""

    return run_cli(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
