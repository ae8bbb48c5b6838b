"""Test helper: render a local HTML file in Debian's headless chromium and inspect the screenshot.

Used by the tests of every HTML page the project writes. A missing browser is an error, not a
reason to skip: CI installs chromium (see .ci/run), and a page nobody looked at is not tested.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
from typing import Union

from PIL import Image

from helpers import timeout as scaled_timeout

CHROMIUM = "/usr/bin/chromium"

PathLike = Union[str, os.PathLike]


class BrowserError(RuntimeError):
    """Chromium is missing, failed, or wrote no screenshot."""


def screenshot(
    html_path: PathLike,
    png_path: PathLike,
    width: int = 1200,
    height: int = 900,
    timeout: float | None = None,
) -> pathlib.Path:
    """Load a local HTML file in headless chromium and save a screenshot of the window.

    Args:
        html_path: the page to load (opened as a file:// URL, so relative images resolve).
        png_path: where chromium writes the PNG screenshot.
        width: the window width in CSS pixels.
        height: the window height in CSS pixels.
        timeout: seconds before the browser is killed and :class:`BrowserError` raised (default
            120, scaled by ``FDGAN_TEST_TIMEOUT_SCALE``).

    Returns:
        ``png_path`` as a Path.
    """
    timeout = scaled_timeout(120) if timeout is None else timeout
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserError(
            f"headless chromium not found at {CHROMIUM}: install Debian's package "
            "(apt-get install chromium); CI installs it and the HTML tests need it"
        )
    page = pathlib.Path(html_path).resolve()
    if not page.is_file():
        raise BrowserError(f"{page}: no such HTML file")
    out = pathlib.Path(png_path).resolve()
    if out.exists():
        out.unlink()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        f"--window-size={int(width)},{int(height)}",
        page.as_uri(),
    ]
    try:
        # A session of its own, so that a hung browser and all its helper processes can be ended.
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BrowserError(f"chromium did not finish within {timeout:.0f} s: {page}") from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0 or not out.is_file():
        tail = output.decode("utf-8", "replace")[-2000:]
        raise BrowserError(
            f"chromium exited with {proc.returncode} and "
            f"{'wrote' if out.is_file() else 'did not write'} {out}:\n{tail}"
        )
    return out


def is_blank(png_path: PathLike) -> bool:
    """Say whether an image is a single colour (every pixel equal).

    Args:
        png_path: the image file (any mode PIL reads; compared in RGB).
    """
    with Image.open(png_path) as im:
        extrema = im.convert("RGB").getextrema()
    return all(low == high for low, high in extrema)


def img_srcs(html: str) -> list:
    """The ``src`` of every ``<img>`` in an HTML page, in document order."""
    from html.parser import HTMLParser

    class _Srcs(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.srcs: list = []

        def handle_starttag(self, tag, attrs) -> None:
            if tag == "img":
                self.srcs.append(dict(attrs).get("src"))

    parser = _Srcs()
    parser.feed(html)
    return parser.srcs
