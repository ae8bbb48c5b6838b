#!/usr/bin/env python
"""Write COCO-18 pose files for re-ID images with BlazePose (mediapipe), fully offline.

Runs in its own environment (`make setup-pose` creates .venv-pose/):

    .venv-pose/bin/python scripts/generate_poses.py --dataset-dir datasets/market1501 -j 2
    .venv-pose/bin/python scripts/generate_poses.py --images FOLDER --output POSE_DIR
    .venv-pose/bin/python scripts/generate_poses.py --images a.jpg b.jpg --output POSE_DIR

--dataset-dir reads <dir>/images/ and writes <dir>/poses/<stem>.txt; the summary
(pose_summary.json) and the preview (pose_preview/index.html) go to <dir>. With --images they go
to --output, next to the pose files. Images whose pose file exists are skipped, so an interrupted
run finishes when run again.

A skeleton that cannot be the person the crop is framed on (low detector score, too small, out of
vertical order, invisible shoulders, centred outside the crop) is rejected: its pose file is all
-1 like a "no person" image, and the summary and the preview list it separately with the reason.
A miss is retried (sharpened and upscaled, then with a wider border) before it is written.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from reid import pose_estimation as pe  # noqa: E402
from reid.errors import ConfigError, DatasetError, FDGANError  # noqa: E402
from reid.utils.logging import setup_logging  # noqa: E402
from reid.utils.osutils import write_json  # noqa: E402

logger = logging.getLogger("generate_poses")
SUMMARY_NAME = "pose_summary.json"
PREVIEW_NAME = "pose_preview"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Pose files (COCO-18, 'row col' per line) with BlazePose")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset-dir", help="prepared dataset folder: reads images/, writes poses/")
    src.add_argument("--images", nargs="+", metavar="PATH", help="an image folder, or image files")
    p.add_argument("--output", help="folder for the pose files (required with --images)")
    p.add_argument("-j", "--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--min-visibility", type=float, default=pe.DEFAULT_MIN_VISIBILITY,
                   help="BlazePose visibility below which a keypoint is written as missing (-1 -1) "
                        "(default: %(default)s)")
    p.add_argument("--min-detection-confidence", type=float, default=0.5,
                   help="person detector threshold on the first try (default: %(default)s)")
    p.add_argument("--retry-detection-confidence", type=float, default=pe.DEFAULT_RETRY_DETECTION_CONFIDENCE,
                   help="detector threshold when a miss is retried, sharpened and upscaled, then with a wider "
                        "border (default: %(default)s)")
    p.add_argument("--no-retry", action="store_true", help="do not retry a miss: one try per image")
    p.add_argument("--min-height-fraction", type=float, default=pe.DEFAULT_MIN_HEIGHT_FRACTION,
                   help="reject a skeleton whose nose-to-ankles height is below this fraction of the image "
                        "height (default: %(default)s)")
    p.add_argument("--min-shoulder-visibility", type=float, default=pe.DEFAULT_MIN_SHOULDER_VISIBILITY,
                   help="reject a skeleton whose shoulders' mean visibility is below this (default: %(default)s)")
    p.add_argument("--no-order-check", action="store_true",
                   help="accept skeletons whose nose, shoulders, hips, knees, ankles are not top to bottom")
    p.add_argument("--no-pad", action="store_true", help="do not pad images to a square on the first try")
    p.add_argument("--overwrite", action="store_true", help="redo images that already have a pose file")
    p.add_argument("--preview", type=int, default=16, metavar="N",
                   help="random images in the HTML preview (default: 16; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the preview's random choice (default: 0)")
    return p


def resolve_inputs(args: argparse.Namespace) -> tuple[List[str], str, str]:
    """Return (image paths, pose folder, report folder) for the chosen input mode."""
    if args.dataset_dir is not None:
        if args.output is not None:
            raise ConfigError("--output applies only to --images (--dataset-dir writes <dir>/poses)")
        images_dir = os.path.join(args.dataset_dir, "images")
        if not os.path.isdir(images_dir):
            raise DatasetError(f"{images_dir}: not found; --dataset-dir must be a prepared dataset "
                               "(scripts/prepare_dataset.py)")
        return pe.list_images(images_dir), os.path.join(args.dataset_dir, "poses"), args.dataset_dir
    if args.output is None:
        raise ConfigError("--images needs --output (the folder for the pose files)")
    if len(args.images) == 1 and os.path.isdir(args.images[0]):
        paths = pe.list_images(args.images[0])
    else:
        for path in args.images:
            if os.path.isdir(path):
                raise ConfigError(f"{path}: give either one folder or image files to --images, not both")
            if not os.path.isfile(path):
                raise DatasetError(f"{path}: image file not found")
        paths = list(args.images)
    return paths, args.output, args.output


def mediapipe_version() -> str:
    try:
        return importlib.metadata.version("mediapipe")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        image_paths, pose_dir, report_dir = resolve_inputs(args)
        todo, done = pe.plan_pose_jobs(image_paths, pose_dir, overwrite=args.overwrite)
        logger.info("%d images: %d to process, %d already have a pose file (%s)",
                    len(image_paths), len(todo), len(done), pose_dir)
        errors: List[str] = []
        results = pe.run_pose_jobs(todo, pose_dir, num_workers=args.workers, min_visibility=args.min_visibility,
                                   min_detection_confidence=args.min_detection_confidence,
                                   pad_square=not args.no_pad, retry=not args.no_retry,
                                   retry_detection_confidence=args.retry_detection_confidence,
                                   min_height_fraction=args.min_height_fraction,
                                   min_shoulder_visibility=args.min_shoulder_visibility,
                                   check_order=not args.no_order_check)
        for result in tqdm(results, total=len(todo), unit="img", disable=not todo):
            if result.error is not None:
                errors.append(result.error)
        summary = pe.summarize_poses(image_paths, pose_dir)
        summary.update(processed=len(todo) - len(errors), skipped_existing=len(done), unreadable=errors,
                       pose_dir=pose_dir, min_visibility=args.min_visibility,
                       thresholds={"min_detection_confidence": args.min_detection_confidence,
                                   "retry_detection_confidence": None if args.no_retry
                                   else args.retry_detection_confidence,
                                   "min_height_fraction": args.min_height_fraction,
                                   "min_shoulder_visibility": args.min_shoulder_visibility,
                                   "order_check": not args.no_order_check},
                       estimator=f"mediapipe {mediapipe_version()} BlazePose, full landmark model "
                                 "(model_complexity=1)")
        summary_path = os.path.join(report_dir, SUMMARY_NAME)
        write_json(summary, summary_path)
        preview = pe.write_pose_preview(image_paths, pose_dir, os.path.join(report_dir, PREVIEW_NAME),
                                        num_images=args.preview, seed=args.seed)
        print(f"processed {summary['processed']}, skipped {len(done)} with a pose file; "
              f"no person found in {len(summary['no_person'])} of {summary['num_with_pose_file']}; "
              f"{len(summary['rejected'])} implausible skeletons rejected; "
              f"{len(summary['retried'])} found on a retry")
        print(pe.format_coverage_table(summary))
        print(f"summary: {summary_path}")
        if preview is not None:
            print(f"preview: {preview}")
        if errors:
            raise DatasetError(f"{len(errors)} unreadable images got no pose file, e.g. {errors[0]}")
    except FDGANError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished pose files are kept; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
