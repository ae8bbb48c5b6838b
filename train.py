#!/usr/bin/env python
"""Stages II and III of the paper: pose-guided GAN pre-training (``--stage 1``, encoder frozen) and
global fine-tuning (``--stage 2``). See README.md for the full commands, docs/distributed.md for
several GPUs (``torchrun --nproc_per_node N train.py ...``)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys

from options import Options
from reid.errors import FDGANError
from reid.utils.distributed import launcher_rank, lost_peer
from reid.utils.logging import setup_logging
from reid.utils.osutils import folder_lock


def main(argv: list[str] | None = None) -> int:
    options = Options()
    cfg = options.parse(argv)
    log = logging.getLogger("train")
    main_process = launcher_rank() == 0
    if main_process:
        try:
            setup_logging(os.path.join(cfg.save_dir, "train_log.txt"))
        except (OSError, FDGANError) as e:
            print(f"error: {cfg.save_dir}: cannot write the run folder ({e})", file=sys.stderr)
            return 2
    else:  # torchrun's other processes: no files, only warnings and errors on the console
        setup_logging(None, level=logging.WARNING)
    from fdgan.pipeline import check_train_folder, run_training

    try:
        with contextlib.ExitStack() as stack:
            if main_process:
                # One run per folder at a time; a folder holding a run is refused before opt.txt is replaced.
                stack.enter_context(folder_lock(cfg.save_dir))
                check_train_folder(cfg)
                log.info(options.format(cfg))
                options.save(cfg)
            run_training(cfg)
    except FDGANError as e:
        log.error("error: %s", e)
        return 2
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        log.error("error: another process of this torchrun job stopped (its error is above); stopping too")
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; continue with the same command plus --resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
