#!/usr/bin/env python
"""Export E's backbone (images -> re-ID features) to TorchScript, ONNX or an ExportedProgram,
checked against PyTorch.

    python scripts/export_model.py --checkpoint logs/best_net_E.pth --output reid.pt
    python scripts/export_model.py --checkpoint logs/model_best.pth.tar --format onnx --output reid.onnx
    python scripts/export_model.py --checkpoint logs/best_net_E.pth --format exported-program --output reid.pt2

Load them with ``torch.jit.load``, onnxruntime, or ``torch.export.load(path).module()``.

The exported model takes a preprocessed batch (N x 3 x H x W, resized to --height x --width and
ImageNet-normalised) of any N and returns N x D features. After writing, the file is loaded back
and compared with the PyTorch model on random inputs; the largest difference is printed, and a
mismatch is an error (the output file is then not written).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reid import models  # noqa: E402
from reid.export import FORMATS, export_model  # noqa: E402
from scripts._cli import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export the re-ID feature extractor to TorchScript, ONNX or torch.export")
    p.add_argument("--checkpoint", required=True,
                   help="E's weights: model_best.pth.tar (baseline), <epoch>_net_E.pth, or a backbone state dict")
    p.add_argument("--output", required=True,
                   help="file to write (.pt for torchscript, .onnx for onnx, .pt2 for exported-program)")
    p.add_argument("--format", default="torchscript", choices=FORMATS)
    p.add_argument("-a", "--arch", default="resnet50", choices=models.names(),
                   help="backbone when the checkpoint does not reveal it (default: resnet50)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed difference to PyTorch (scaled by the output magnitude when > 1)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    def body(args: argparse.Namespace) -> str:
        diff = export_model(args.checkpoint, args.output, fmt=args.format, arch=args.arch,
                            height=args.height, width=args.width, atol=args.atol)
        return f"{args.output}: {args.format} export verified, max abs difference to PyTorch {diff:.3g}"

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
