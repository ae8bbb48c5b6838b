"""The shape every tool script shares: parse the flags, set up logging, run, report.

A script's ``main(argv)`` is ``run_cli(build_parser(), argv, body)``: ``body(args)`` does the work
and returns the line to print (or an empty string); a project error
(:class:`reid.errors.FDGANError`) is printed as ``error: <message>`` on stderr and gives exit
status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

from reid.errors import FDGANError
from reid.utils.logging import setup_logging


def run_cli(parser: argparse.ArgumentParser, argv: Optional[List[str]],
            body: Callable[[argparse.Namespace], str]) -> int:
    """Parse ``argv`` with ``parser``, run ``body`` and return the exit status (0, or 2 on error)."""
    args = parser.parse_args(argv)
    setup_logging()
    try:
        message = body(args)
    except FDGANError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if message:
        print(message)
    return 0
