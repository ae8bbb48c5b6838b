#!/usr/bin/env python
"""`make experiment`: FD-GAN's claims measured on the synthetic data (three questions, several seeds).

    python scripts/experiment.py --out experiment_output
    python scripts/experiment.py --seeds 1 2 3 4 5 --num-ids 200 --stage1-epochs 20   # larger

Builds (or reuses) the rendered-identity substitute for ImageNet that E's backbone starts from
(``--pretrain-iters 0``: random weights), renders the data, runs Stage I, II and III per seed (and the lambda-sp / lambda-veri ablations for
the first seed) through the library entry points of baseline.py and train.py, then writes
``<out>/index.html`` and ``<out>/results.json`` and prints the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fdgan.experiment.report import format_tables, write_outputs  # noqa: E402
from fdgan.experiment.runner import ExperimentConfig, run_experiment  # noqa: E402
from reid.errors import FDGANError  # noqa: E402
from reid.utils.argtypes import non_negative_int, positive_int  # noqa: E402
from reid.utils.logging import setup_logging  # noqa: E402

log = logging.getLogger("experiment")


def build_parser() -> argparse.ArgumentParser:
    d = ExperimentConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="training seeds (default: 1 2 3)")
    p.add_argument("--no-ablation", action="store_true", help="skip the lambda-sp 0 / lambda-veri 0 runs")
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in ("out", "seeds", "ablation"):
            continue
        kind = {int: positive_int, float: float, str: str}[type(f.default)]
        if f.name in ("workers", "pretrain_iters"):
            kind = non_negative_int
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                       help=f"(default: {f.default})")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig)
              if f.name not in ("seeds", "ablation")}
    cfg = ExperimentConfig(**values, seeds=tuple(args.seeds), ablation=not args.no_ablation)
    os.makedirs(cfg.out, exist_ok=True)
    setup_logging(os.path.join(cfg.out, "experiment_log.txt"))
    try:
        results = run_experiment(cfg)
    except FDGANError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    page = write_outputs(results, cfg.out)
    log.info("\n%s\nPage: %s (%.0f s)", format_tables(results), page, results["total_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
