"""Logging set-up for the command-line tools: console plus a log file in the run folder."""
from __future__ import annotations

import logging
import os
import sys

from reid.utils.osutils import PathLike, mkdir_if_missing

_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_HANDLER_TAG = "_fdgan_handler"


def remove_logging_handlers() -> None:
    """Detach and close the handlers :func:`setup_logging` installed (others are left alone)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False):
            root.removeHandler(h)
            h.close()


def setup_logging(log_file: PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send log records of the project to stderr and, if given, append them to ``log_file``.

    Calling it again replaces the handlers it installed before (safe for tests that run several
    CLIs in one process).
    """
    remove_logging_handlers()
    root = logging.getLogger()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    setattr(console, _HANDLER_TAG, True)
    root.addHandler(console)
    if log_file is not None:
        mkdir_if_missing(os.path.dirname(os.path.abspath(log_file)))
        fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        fh.setFormatter(logging.Formatter(_FORMAT))
        setattr(fh, _HANDLER_TAG, True)
        root.addHandler(fh)
    for noisy in ("PIL", "matplotlib", "urllib3", "visdom", "websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return root
