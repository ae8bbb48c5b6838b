#!/usr/bin/env python
"""Convert a network file of this project into one the release (PyTorch 0.3) loads.

    python scripts/convert_checkpoint.py --to-release logs/model_best.pth.tar release/model_best.pth.tar
    python scripts/convert_checkpoint.py --to-release checkpoints/NAME/50_net_G.pth release/50_net_G.pth

The input is any network file this project or the release writes (``model_best.pth.tar``,
``checkpoint.pth.tar``, ``<epoch>_net_{E,G,Di,Dp}.pth``). The output holds only the weights, with
the release's ``module.`` keys and without ``num_batches_tracked``, in the legacy (non-zip)
serialization with tensors PyTorch 0.3 can rebuild; a baseline file stays ``{'state_dict': ...}``.
Training state (optimisers, epoch, RNG) is left out: the release cannot resume from it.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid.utils.release_format import release_state_dict, save_release_checkpoint  # noqa: E402
from reid.utils.serialization import load_checkpoint  # noqa: E402
from scripts._cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert a network file into the form the release (PyTorch 0.3) loads")
    p.add_argument("--to-release", action="store_true", required=True,
                   help="write the release's format (the only conversion there is)")
    p.add_argument("input", help="network file of this project or the release")
    p.add_argument("output", help="file to write")
    return p


def convert_to_release(src: str, dst: str) -> int:
    """Write ``src``'s weights to ``dst`` in the release's form; returns the number of entries."""
    obj = load_checkpoint(src)
    state = release_state_dict(obj, source=src)
    wrapped = isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping)
    save_release_checkpoint({"state_dict": state} if wrapped else state, dst)
    return len(state)


def main(argv: Optional[List[str]] = None) -> int:
    def body(args: argparse.Namespace) -> str:
        n = convert_to_release(args.input, args.output)
        return f"{args.output}: {n} entries in the release's format (PyTorch 0.3 torch.load / load_state_dict)"

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
