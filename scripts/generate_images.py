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
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fdgan.generation import PoseTransfer  # noqa: E402
from fdgan.generation_output import write_outputs  # noqa: E402
from scripts.pose_targets import PoseEstimator, Size, load_target_pose, resolve_source  # noqa: E402
from reid.errors import ConfigError, DatasetError  # noqa: E402
from reid.utils.osutils import PathLike  # noqa: E402
from scripts._cli import run_cli  # noqa: E402


def parse_size(text: str, flag: str = "--pose-size") -> Size:
    """Parse ``'HxW'`` (e.g. ``'256x128'``) into ``(height, width)``.

    Args:
        text: the value given on the command line.
        flag: the option name, for the error message.

    Raises:
        ConfigError: not two positive integers separated by 'x'.
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise ConfigError(f"{flag} {text}: expected HEIGHTxWIDTH in pixels, e.g. 256x128")
    return int(match.group(1)), int(match.group(2))


def run_generation(
    netE: PathLike,
    netG: PathLike,
    sources: Sequence[str],
    poses: Sequence[str],
    output_dir: PathLike,
    dataset_dir: Optional[PathLike] = None,
    num_noise: int = 1,
    seed: int = 0,
    height: Optional[int] = None,
    width: Optional[int] = None,
    pose_size: Optional[Size] = None,
    device: str = "cpu",
    batch_size: int = 16,
    sigma: Optional[float] = None,
    estimator: Optional[PoseEstimator] = None,
) -> Dict[str, Any]:
    """Resolve sources and poses, generate every combination and write the outputs.

    Args:
        netE: E's checkpoint (``--netE``).
        netG: G's checkpoint (``--netG``).
        sources: ``--sources`` entries (see :func:`resolve_source`).
        poses: ``--poses`` entries (see :func:`load_target_pose`).
        output_dir: the output folder (``--output``).
        dataset_dir: the prepared dataset folder for file names (``--dataset-dir``).
        num_noise: noise vectors per (source, pose) (``--num-noise``).
        seed: noise seed (``--seed``).
        height, width: expected generator size (``--height``/``--width``); None: G's own. The
            size is fixed by G's weights, so a different value is an error.
        pose_size: (height, width) of pose files whose image is not found (``--pose-size``).
        device: ``--device``.
        batch_size: generator batch size (``--batch-size``).
        sigma: pose-map Gaussian standard deviation (``--sigma``); None: as in training.
        estimator: pose estimator for image targets (default
            :func:`scripts.pose_targets.estimate_pose`).

    Returns:
        What :func:`fdgan.generation_output.write_outputs` returns, plus ``'generated'`` (the array).
    """
    if num_noise < 1:
        raise ConfigError(f"--num-noise must be >= 1 (got {num_noise})")
    if not sources:
        raise ConfigError("--sources: give at least one source image")
    if not poses:
        raise ConfigError("--poses: give at least one target pose")
    if dataset_dir is not None and not os.path.isdir(dataset_dir):
        raise DatasetError(f"--dataset-dir {os.fspath(dataset_dir)}: folder not found")
    source_paths = [resolve_source(s, dataset_dir) for s in sources]
    model = PoseTransfer(netE, netG, device=device, batch_size=batch_size, sigma=sigma)
    for flag, given, own in (("--height", height, model.height), ("--width", width, model.width)):
        if given is not None and given != own:
            raise ConfigError(
                f"{flag} {given}: the generator in {os.fspath(netG)} makes {model.height}x{model.width} "
                "images (read from its weights); omit the flag or pass that size"
            )
    targets = [load_target_pose(p, dataset_dir, pose_size, (model.height, model.width), estimator) for p in poses]
    landmarks = [t.scaled(model.height, model.width) for t in targets]
    generated = model.generate(source_paths, landmarks, num_noise=num_noise, seed=seed)
    settings = {
        "netE": os.fspath(netE), "netG": os.fspath(netG), "seed": seed,
        "pose_sources": "; ".join(f"{t.name} <- {t.origin} ({'estimated' if t.estimated else 'pose file'}, "
                                  f"{t.size[0]}x{t.size[1]})" for t in targets),
    }
    result = write_outputs(output_dir, generated, model.source_tiles(source_paths), model.pose_tiles(landmarks),
                           model.config, source_names=list(sources), pose_names=list(poses), settings=settings)
    result["generated"] = generated
    return result


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
    def body(args: argparse.Namespace) -> str:
        pose_size = parse_size(args.pose_size, "--pose-size") if args.pose_size is not None else None
        result = run_generation(
            args.netE, args.netG, args.sources, args.poses, args.output, dataset_dir=args.dataset_dir,
            num_noise=args.num_noise, seed=args.seed, height=args.height, width=args.width, pose_size=pose_size,
            device=args.device, batch_size=args.batch_size, sigma=args.sigma,
        )
        return f"{len(result['images'])} images, grid {result['grid']}, page {result['page']}"

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
