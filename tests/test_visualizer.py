"""Tests of fdgan.utils: image conversion, the HTML gallery (checked in headless chromium) and the
visdom dashboard against a real visdom server on the loopback interface."""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from argparse import Namespace
from collections import OrderedDict
from html.parser import HTMLParser
from pathlib import Path
from typing import List, Tuple
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from fdgan.utils.util import IMAGENET_MEAN, IMAGENET_STD, posemap2im, save_image, tensor2im
from fdgan.utils.visualizer import (
    Visualizer,
    filename_to_label,
    image_filename,
    label_to_filename,
)
from helpers import timeout
from reid.utils.html import HTML
from tests.browser import is_blank, screenshot

MARKUP = '<b>x"y</b>'
LOGGER = "fdgan.utils.visualizer"


# --------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_visdom(tmp_path: Path) -> Tuple[subprocess.Popen, int]:
    """Start a visdom server bound to 127.0.0.1 and wait until it accepts connections.

    The server's ``main`` is called directly: ``python -m visdom.server`` would first try to
    download its web scripts from the internet.
    """
    port = free_port()
    log = open(tmp_path / "visdom.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-c", "from visdom.server.run_server import main; main()",
            "-port", str(port), "--hostname", "127.0.0.1", "-bind_local",
            "-env_path", str(tmp_path / "visdom_env"), "-logging_level", "WARNING",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout(60)
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                "visdom server exited:\n" + (tmp_path / "visdom.log").read_text(errors="replace")
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                stop(proc)
                raise AssertionError(f"visdom server did not answer on port {port} within {timeout(60):.0f} s")
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def visdom_reader(port: int, env: str):
    import visdom

    with warnings.catch_warnings():
        # visdom warns through the deprecated Logger.warn about running without a socket.
        warnings.simplefilter("ignore", DeprecationWarning)
        return visdom.Visdom(
            server="http://127.0.0.1", port=port, env=env,
            raise_exceptions=True, use_incoming_socket=False,
        )


def decode_data_url(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def solid(color: Tuple[int, int, int], h: int = 32, w: int = 16) -> np.ndarray:
    return np.tile(np.array(color, dtype=np.uint8), (h, w, 1))


def visuals_for(epoch: int) -> "OrderedDict[str, np.ndarray]":
    rng = np.random.default_rng(epoch)
    return OrderedDict(
        (label, rng.integers(0, 256, size=(32, 16, 3), dtype=np.uint8))
        for label in ("input", "posemap", "fake", "target")
    )


class PageParser(HTMLParser):
    """Collects the headers, image sources, link targets and captions of a gallery page."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: List[str] = []
        self.srcs: List[str] = []
        self.hrefs: List[str] = []
        self.captions: List[str] = []
        self._in: str = ""

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, str]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        elif tag == "a":
            self.hrefs.append(a["href"])
        self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = ""

    def handle_data(self, data: str) -> None:
        if self._in == "h3":
            self.headers.append(data)
        elif self._in == "span":
            self.captions.append(data)


def parse_page(path: Path) -> Tuple[str, PageParser]:
    text = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(text)
    return text, parser


def visualizer_warnings(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback requests must never be routed through a proxy from the environment.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# --------------------------------------------------------------------------------- util.py
def test_tensor2im_undoes_imagenet_normalisation_of_the_first_image() -> None:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, size=(8, 5, 3), dtype=np.uint8)
    second = 255 - first
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    batch = torch.stack(
        [(torch.from_numpy(im).permute(2, 0, 1) / 255.0 - mean) / std for im in (first, second)]
    )
    out = tensor2im(batch)
    assert out.dtype == np.uint8 and out.shape == (8, 5, 3)
    np.testing.assert_array_equal(out, first)
    np.testing.assert_array_equal(tensor2im(batch[1]), second)
    # Out-of-range values (a generator output of +-1 in normalised space maps outside [0, 1] for
    # some channels) are clipped, not wrapped around.
    extreme = torch.tensor([-10.0, 10.0]).view(1, 1, 2).expand(3, 1, 2)
    np.testing.assert_array_equal(tensor2im(extreme)[0], [[0, 0, 0], [255, 255, 255]])
    # Another normalisation can be undone too (a [-1, 1] image with mean = std = 0.5).
    half = tensor2im(torch.zeros(3, 2, 2), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert (half == 128).all()
    with pytest.raises(ValueError):
        tensor2im(torch.zeros(18, 4, 4))


def test_posemap2im_is_the_grey_channel_sum_clipped_at_one() -> None:
    pose = torch.zeros(2, 18, 4, 3)
    pose[0, 0, 0, 0] = 0.25  # alone: 0.25 * 255 = 63.75 -> 64
    pose[0, 1, 1, 1] = 0.7
    pose[0, 2, 1, 1] = 0.6  # overlapping peaks sum to 1.3 -> clipped to 255
    pose[1] = 1.0  # the second map of the batch must be ignored
    out = posemap2im(pose)
    assert out.dtype == np.uint8 and out.shape == (4, 3, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    expected = np.zeros((4, 3), dtype=np.uint8)
    expected[0, 0] = 64
    expected[1, 1] = 255
    np.testing.assert_array_equal(out[..., 0], expected)


def test_save_image_writes_a_png_atomically(tmp_path: Path) -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "im.png"
    save_image(image, path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im), image)
    assert os.listdir(path.parent) == ["im.png"]  # no temporary file left behind
    assert not is_blank(path)
    save_image(solid((10, 20, 30)), tmp_path / "solid.png")
    assert is_blank(tmp_path / "solid.png")
    with pytest.raises(ValueError):
        save_image(image.astype(np.float32), tmp_path / "bad.png")


# --------------------------------------------------------------------------- reid/utils/html.py
def test_html_page_escapes_text_and_quotes_file_names(tmp_path: Path) -> None:
    page = HTML(tmp_path / "web", "title <script>alert(1)</script>")
    name = "a <i>x\"y'z<i> & b #1?.png"  # markup, both quotes, spaces, '#' and '?'
    save_image(solid((0, 0, 255)), Path(page.get_image_dir()) / name)
    page.add_header("head <em>er</em>")
    page.add_images(["images/" + name], [name], ["images/" + name], width=64)
    index = Path(page.save())
    assert index == tmp_path / "web" / "index.html"
    text, parsed = parse_page(index)
    for raw in ("<i>", "<script>", "<em>", 'x"y'):
        assert raw not in text
    assert parsed.headers == ["head <em>er</em>"]
    assert parsed.captions == [name]
    assert len(parsed.srcs) == 1 and parsed.hrefs == parsed.srcs
    # The attribute value is a pure relative URL: decoding it once names the file.
    assert re.fullmatch(r"[A-Za-z0-9_.~/%-]+", parsed.srcs[0]), parsed.srcs[0]
    assert unquote(parsed.srcs[0]) == "images/" + name
    assert (index.parent / unquote(parsed.srcs[0])).is_file()
    with pytest.raises(ValueError):
        page.add_images(["a.png"], [], ["a.png"])


# --------------------------------------------------------------------------------- HTML gallery
def test_label_file_names_round_trip() -> None:
    for label in ("fake", MARKUP, "100%/\\:*?|\n", "", "a_b c"):
        part = label_to_filename(label)
        assert "/" not in part and "\\" not in part and "\n" not in part
        assert filename_to_label(part) == label
    assert image_filename(7, "fake") == "epoch007_fake.png"
    assert image_filename(1234, "fake") == "epoch1234_fake.png"


@pytest.mark.slow
def test_html_gallery_lists_epochs_newest_first_after_resume_and_renders(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    first_run = Visualizer(name="exp", checkpoints_dir=str(ckpt), display_id=0, display_winsize=96)
    for epoch in (1, 2, 3):
        first_run.display_current_results(visuals_for(epoch), epoch, save_result=True)
    # A second save within epoch 3 replaces that epoch's images; save_result=False saves nothing.
    replaced = visuals_for(33)
    first_run.display_current_results(replaced, 3, save_result=True)
    first_run.display_current_results(visuals_for(99), 99, save_result=False)
    img_dir = ckpt / "exp" / "web" / "images"
    (img_dir / "notes.txt").write_text("not an image of the gallery")

    # A resumed run (a new object, no memory of the earlier epochs) adds epoch 4.
    resumed = Visualizer(name="exp", checkpoints_dir=str(ckpt), display_id=0, display_winsize=96)
    newest = OrderedDict(
        [("input", solid((0, 200, 0))), (MARKUP, solid((255, 0, 0))), ("fake", solid((0, 0, 0)))]
    )
    resumed.display_current_results(newest, 4, save_result=True)

    index = ckpt / "exp" / "web" / "index.html"
    text, parsed = parse_page(index)
    assert parsed.headers == ["epoch [4]", "epoch [3]", "epoch [2]", "epoch [1]"]
    assert parsed.captions[:3] == ["input", MARKUP, "fake"]
    # Older rows follow the latest visuals' label order, then the other labels alphabetically.
    assert parsed.captions[3:] == ["input", "fake", "posemap", "target"] * 3
    assert MARKUP not in text and "<b>" not in text
    assert len(parsed.srcs) == 15 and parsed.hrefs == parsed.srcs
    for src in parsed.srcs:
        assert (index.parent / unquote(src)).is_file(), src
    assert {unquote(s) for s in parsed.srcs} == {
        "images/" + f for f in os.listdir(img_dir) if f.endswith(".png")
    }
    with Image.open(img_dir / image_filename(3, "fake")) as im:
        np.testing.assert_array_equal(np.asarray(im), replaced["fake"])
    assert not (img_dir / image_filename(99, "fake")).exists()

    shot = screenshot(index, tmp_path / "shot.png", width=1200, height=900)
    assert not is_blank(shot)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The markup-named red image (96 x 192 CSS px on screen) was found through its quoted src.
    red = (np.abs(pixels - [255, 0, 0]).max(axis=2) <= 8).sum()
    green = (np.abs(pixels - [0, 200, 0]).max(axis=2) <= 8).sum()
    assert red > 5000 and green > 5000


def test_html_off_writes_no_gallery(tmp_path: Path) -> None:
    vis = Visualizer(name="exp", checkpoints_dir=str(tmp_path), display_id=0, use_html=False)
    vis.display_current_results(visuals_for(1), 1, save_result=True)
    assert not (tmp_path / "exp" / "web").exists()
    assert vis.rebuild_html() is None


# --------------------------------------------------------------------------------- text logs
def test_loss_and_reid_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    vis = Visualizer(name="exp", checkpoints_dir=str(tmp_path), display_id=0)
    errors = OrderedDict([("G_v", 0.5), ("G_r", torch.tensor(0.03125)), ("D_i", 1.25)])
    line = vis.print_current_errors(3, 40, errors, 0.125)
    assert line == "(epoch: 3, iters: 40, time: 0.125) G_v: 0.500 G_r: 0.031 D_i: 1.250"
    vis.log_reid("Mean AP: 77.7%\ntop-1 90.5%")
    Visualizer(name="exp", checkpoints_dir=str(tmp_path), display_id=0)  # a second run

    lines = (tmp_path / "exp" / "loss_log.txt").read_text().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("================ Training Loss (") and lines[2].startswith("=====")
    assert time.strftime("%Y") in lines[0]
    assert lines[1] == line
    assert (tmp_path / "exp" / "reid_log.txt").read_text() == "Mean AP: 77.7%\ntop-1 90.5%\n"
    logged = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert line in logged and "Mean AP: 77.7%\ntop-1 90.5%" in logged


def test_from_options_maps_the_flags(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    opt = Namespace(
        name="run", checkpoints=str(tmp_path), display_id=0, display_port=1234,
        display_winsize=128, display_single_pane_ncols=2, no_html=True,
    )
    vis = Visualizer.from_options(opt)
    assert (vis.display_port, vis.win_size, vis.ncols, vis.use_html) == (1234, 128, 2, False)
    vis.plot_current_errors(1, 0.5, {"G_r": 1.0})
    assert not visualizer_warnings(caplog)  # display_id 0: no visdom server is ever asked
    assert (tmp_path / "run" / "loss_log.txt").is_file()


# --------------------------------------------------------------------------------- visdom
def test_no_visdom_server_warns_once_and_everything_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nobody listens there
    vis = Visualizer(
        name="exp", checkpoints_dir=str(tmp_path), display_id=1, display_port=port,
        display_server="http://127.0.0.1",
    )
    warnings = visualizer_warnings(caplog)
    assert len(warnings) == 1 and str(port) in warnings[0].getMessage()
    vis.display_current_results(visuals_for(1), 1, save_result=True)
    vis.plot_current_errors(1, 0.5, {"G_r": 1.0})
    vis.plot_current_errors(1, 1.0, {"G_r": 0.5})
    vis.print_current_errors(1, 10, {"G_r": 0.5}, 0.1)
    vis.log_reid("mAP 1.0")
    assert len(visualizer_warnings(caplog)) == 1
    assert vis.plot_x == [1.5, 2.0] and [p["G_r"] for p in vis.plot_y] == [1.0, 0.5]
    assert (tmp_path / "exp" / "web" / "index.html").is_file()


@pytest.mark.slow
def test_visdom_plots_and_images_then_server_dies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc, port = start_visdom(tmp_path)
    try:
        env = "fdgan_test"
        vis = Visualizer(
            name="exp", checkpoints_dir=str(tmp_path / "ck"), display_id=1, display_port=port,
            display_server="http://127.0.0.1", env=env,
        )
        assert not visualizer_warnings(caplog)
        first = OrderedDict([("G_v", 0.7), ("G_r", 2.5), ("D_i", 0.25)])
        second = OrderedDict([("G_v", 0.6), ("G_r", 2.0), ("D_i", 0.5)])
        vis.plot_current_errors(1, 0.25, first)
        vis.plot_current_errors(1, 0.5, second)
        visuals = visuals_for(5)
        vis.display_current_results(visuals, 1, save_result=False)

        # One pane: a grid of all visuals in window display_id + 1, their labels in + 2.
        pane = Visualizer(
            name="pane", checkpoints_dir=str(tmp_path / "ck"), display_id=10, display_port=port,
            display_server="http://127.0.0.1", env=env, display_single_pane_ncols=3,
        )
        labelled = OrderedDict(list(visuals.items())[:3] + [(MARKUP, solid((255, 0, 0)))])
        pane.display_current_results(labelled, 1, save_result=False)

        reader = visdom_reader(port, env)
        plot = json.loads(reader.get_window_data(win="1", env=env))
        traces = {t["name"]: (t["x"], t["y"]) for t in plot["content"]["data"]}
        assert traces == {
            "G_v": ([1.25, 1.5], [0.7, 0.6]),
            "G_r": ([1.25, 1.5], [2.5, 2.0]),
            "D_i": ([1.25, 1.5], [0.25, 0.5]),
        }
        for idx, (label, image) in enumerate(visuals.items()):
            window = json.loads(reader.get_window_data(win=str(2 + idx), env=env))
            assert window["type"] == "image" and window["title"] == label
            np.testing.assert_array_equal(decode_data_url(window["content"]["src"]), image)
        assert reader.win_exists("6", env=env) is False

        grid = json.loads(reader.get_window_data(win="11", env=env))
        grid_pixels = decode_data_url(grid["content"]["src"])
        # 2 rows x 3 columns of 32 x 16 tiles, each in a (32 + 4) x (16 + 4) cell whose
        # picture visdom places at offset (3, 3).
        assert grid_pixels.shape == (2 * 36, 3 * 20, 3)
        np.testing.assert_array_equal(grid_pixels[3:35, 3:19], labelled["input"])
        np.testing.assert_array_equal(grid_pixels[3:35, 43:59], labelled["fake"])
        np.testing.assert_array_equal(grid_pixels[39:71, 3:19], solid((255, 0, 0)))
        labels = json.loads(reader.get_window_data(win="12", env=env))["content"]
        assert "&lt;b&gt;x&quot;y&lt;/b&gt;" in labels and MARKUP not in labels

        # The server dies mid-run: one warning, the display goes off, training goes on.
        stop(proc)
        vis.plot_current_errors(2, 0.0, first)
        vis.display_current_results(visuals, 2, save_result=True)
        vis.plot_current_errors(2, 0.5, second)
        vis.print_current_errors(2, 8, second, 0.01)
        warnings = visualizer_warnings(caplog)
        assert len(warnings) == 1 and "stopped answering" in warnings[0].getMessage()
        assert vis.plot_x == [1.25, 1.5, 2.0, 2.5]
        assert (tmp_path / "ck" / "exp" / "web" / "images" / image_filename(2, "fake")).is_file()
        assert "(epoch: 2, iters: 8," in (tmp_path / "ck" / "exp" / "loss_log.txt").read_text()
    finally:
        stop(proc)
