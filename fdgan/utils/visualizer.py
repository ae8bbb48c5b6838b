"""Training dashboards behind one object: console, loss log, visdom and the offline HTML gallery.

Files written under ``<checkpoints_dir>/<name>/``:

- ``loss_log.txt``: a dated header line per run, then one line per
  :meth:`Visualizer.print_current_errors`.
- ``reid_log.txt``: the evaluation texts given to :meth:`Visualizer.log_reid`.
- ``web/images/epoch%03d_<label>.png`` and ``web/index.html``: the visuals, newest epoch first.

visdom is optional: when no server answers (at start or later) one warning is logged, the display
is switched off and training goes on.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from reid.utils.data.images import save_image
from reid.utils.html import HTML, table_html
from reid.utils.osutils import mkdir_if_missing

logger = logging.getLogger(__name__)

# Characters that cannot (or should not) appear in a file name on common systems, plus '%' so
# that the encoding can be undone exactly.
_FILENAME_UNSAFE = frozenset('%/\\:*?"<>|') | frozenset(chr(c) for c in range(32)) | {"\x7f"}
_IMAGE_NAME = re.compile(r"^epoch(\d+)_(.*)\.png$", re.DOTALL)


def label_to_filename(label: str) -> str:
    """Encode a visual's label as a file-name part, reversibly.

    Args:
        label: the visual's name, for example ``'fake'``; characters unsafe in file names and
            ``%`` are percent-encoded, everything else is kept (``'fake'`` stays ``'fake'``).
    """
    return "".join(f"%{ord(c):02X}" if c in _FILENAME_UNSAFE else c for c in label)


def filename_to_label(part: str) -> str:
    """Undo :func:`label_to_filename`.

    Args:
        part: the label part of an image file name.
    """
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), part)


def image_filename(epoch: int, label: str) -> str:
    """Return the HTML gallery's file name of one visual: ``epoch%03d_<label>.png``.

    Args:
        epoch: the training epoch the visual belongs to.
        label: the visual's name (encoded with :func:`label_to_filename`).
    """
    return "epoch%03d_%s.png" % (epoch, label_to_filename(label))


def _make_visdom_client(server: str, port: int, env: str, timeout: float) -> Any:
    """Connect to a visdom server.

    Raises ``OSError`` when no server answers and ``ImportError`` when visdom is not installed.
    """
    import requests
    import visdom

    class _TimedVisdom(visdom.Visdom):
        """visdom's client with a timeout on every request (the stock one can block for ever)."""

        def __init__(self, **kwargs: Any) -> None:
            self._http = requests.Session()
            super().__init__(**kwargs)

        def _handle_post(self, url: str, data: Optional[str] = None) -> str:
            response = self._http.post(url, data=data if data is not None else {}, timeout=timeout)
            return response.text

    # Without the incoming socket the client starts no background thread (it only sends); visdom
    # logs a warning about that choice (through a deprecated call), which says nothing useful here.
    visdom_logger = logging.getLogger("visdom")
    level = visdom_logger.level
    visdom_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # raise_exceptions=True: otherwise the stock client prints tracebacks to stdout.
            return _TimedVisdom(
                server=server, port=port, env=env, raise_exceptions=True,
                use_incoming_socket=False,
            )
    finally:
        visdom_logger.setLevel(level)


class Visualizer:
    """Reports losses and images of a training run.

    Args:
        name: the experiment name; files go to ``<checkpoints_dir>/<name>/``.
        checkpoints_dir: the folder holding all experiments.
        display_id: the visdom window of the loss plot; the images use the following windows.
            0 switches visdom off.
        display_port: the visdom server's port.
        display_server: the visdom server's address (scheme and host).
        display_winsize: the width in pixels of each image in the HTML page.
        display_single_pane_ncols: when > 0, all visuals go to one visdom window as a grid with
            this many columns (plus a window with a table of their labels).
        use_html: save the visuals into the HTML gallery when asked to.
        env: the visdom environment.
        timeout: seconds to wait for the visdom server on each request.
    """

    def __init__(
        self,
        *,
        name: str,
        checkpoints_dir: str,
        display_id: int = 1,
        display_port: int = 6006,
        display_server: str = "http://localhost",
        display_winsize: int = 256,
        display_single_pane_ncols: int = 0,
        use_html: bool = True,
        env: str = "main",
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.display_id = int(display_id)
        self.display_port = int(display_port)
        self.display_server = display_server
        self.win_size = int(display_winsize)
        self.ncols = int(display_single_pane_ncols)
        self.use_html = bool(use_html)
        self.env = env
        self.run_dir = os.path.join(os.fspath(checkpoints_dir), name)
        self.web_dir = os.path.join(self.run_dir, "web")
        self.img_dir = os.path.join(self.web_dir, "images")
        self.loss_log_path = os.path.join(self.run_dir, "loss_log.txt")
        self.reid_log_path = os.path.join(self.run_dir, "reid_log.txt")
        # Loss history for the visdom plot: x = fractional epoch, one dict of losses per point.
        self.plot_x: List[float] = []
        self.plot_y: List[Dict[str, float]] = []
        self.legend: List[str] = []
        self._label_order: List[str] = []
        self._vis: Any = None
        self._warned = False

        mkdir_if_missing(self.run_dir)
        if self.use_html:
            mkdir_if_missing(self.img_dir)
        self._append(
            self.loss_log_path,
            "================ Training Loss (%s) ================" % time.strftime("%c"),
        )
        if self.display_id > 0:
            self._connect(timeout)

    @classmethod
    def from_options(cls, opt: Any) -> "Visualizer":
        """Build a visualiser from train.py's parsed options.

        Args:
            opt: a namespace with ``name``, ``checkpoints``, ``display_id``, ``display_port``,
                ``display_winsize``, ``display_single_pane_ncols`` and ``no_html``
                (``display_server`` and ``display_env`` are used when present).
        """
        return cls(
            name=opt.name,
            checkpoints_dir=opt.checkpoints,
            display_id=opt.display_id,
            display_port=opt.display_port,
            display_server=getattr(opt, "display_server", "http://localhost"),
            display_winsize=opt.display_winsize,
            display_single_pane_ncols=opt.display_single_pane_ncols,
            use_html=not opt.no_html,
            env=getattr(opt, "display_env", "main"),
        )

    # ------------------------------------------------------------------ visdom
    def _connect(self, timeout: float) -> None:
        where = f"{self.display_server}:{self.display_port}"
        try:
            self._vis = _make_visdom_client(
                self.display_server, self.display_port, self.env, timeout
            )
        except ImportError as e:
            self._disable(f"visdom is not installed ({e})")
        except OSError as e:
            self._disable(
                f"no visdom server answers at {where} ({e}); start one with "
                f"`python -m visdom.server -port {self.display_port}`"
            )

    def _disable(self, reason: str) -> None:
        self._vis = None
        if not self._warned:
            self._warned = True
            logger.warning("visdom display switched off, training goes on: %s", reason)

    def _send(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call a visdom client method; a failure to reach the server switches the display off."""
        if self._vis is None:
            return
        try:
            getattr(self._vis, method)(*args, env=self.env, **kwargs)
        except OSError as e:
            self._disable(
                f"the visdom server at {self.display_server}:{self.display_port} "
                f"stopped answering ({e})"
            )

    def _win(self, offset: int) -> str:
        return str(self.display_id + offset)

    # ------------------------------------------------------------------ images
    def display_current_results(
        self, visuals: Mapping[str, np.ndarray], epoch: int, save_result: bool
    ) -> None:
        """Show the visuals in visdom and, when ``save_result``, add them to the HTML gallery.

        Args:
            visuals: an ordered mapping from label to an H x W x 3 uint8 image (the model's
                input image, pose map, generated image and target).
            epoch: the current epoch; the gallery keeps one row per epoch (a later call in the
                same epoch replaces that row's images).
            save_result: write the images and rebuild ``web/index.html`` (only if ``use_html``).
        """
        for label, image in visuals.items():
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"visual {label!r}: expected an HxWx3 uint8 array, got "
                    f"{image.dtype} {image.shape}"
                )
        if self._vis is not None and visuals:
            if self.ncols > 0:
                self._display_grid(visuals)
            else:
                for idx, (label, image) in enumerate(visuals.items()):
                    self._send(
                        "image", image.transpose(2, 0, 1), win=self._win(1 + idx),
                        opts={"title": label},
                    )
        if save_result and self.use_html:
            self._label_order = list(visuals.keys())
            for label, image in visuals.items():
                save_image(image, os.path.join(self.img_dir, image_filename(epoch, label)))
            self.rebuild_html()

    def _display_grid(self, visuals: Mapping[str, np.ndarray]) -> None:
        ncols = min(self.ncols, len(visuals))
        height = max(im.shape[0] for im in visuals.values())
        width = max(im.shape[1] for im in visuals.values())
        tiles = []
        for image in visuals.values():
            tile = np.full((height, width, 3), 255, dtype=np.uint8)
            tile[: image.shape[0], : image.shape[1]] = image
            tiles.append(tile.transpose(2, 0, 1))
        while len(tiles) % ncols:
            tiles.append(np.full((3, height, width), 255, dtype=np.uint8))
        labels = list(visuals.keys())
        table = table_html([labels[i : i + ncols] for i in range(0, len(labels), ncols)])
        self._send(
            "images", np.stack(tiles), nrow=ncols, padding=2, win=self._win(1),
            opts={"title": f"{self.name} images"},
        )
        self._send("text", table, win=self._win(2), opts={"title": f"{self.name} labels"})

    def rebuild_html(self) -> Optional[str]:
        """Rewrite ``web/index.html`` from the images present in ``web/images/``.

        Rows are derived from the files, so a resumed run still shows the earlier epochs. Epochs
        are listed newest first; within a row the labels follow the order of the latest visuals,
        then any other labels alphabetically. Returns the page's path (None without ``use_html``).
        """
        if not self.use_html:
            return None
        by_epoch: Dict[int, Dict[str, str]] = {}
        for fname in os.listdir(self.img_dir):
            match = _IMAGE_NAME.match(fname)
            if match is None:
                continue
            label = filename_to_label(match.group(2))
            by_epoch.setdefault(int(match.group(1)), {})[label] = fname
        rank = {label: i for i, label in enumerate(self._label_order)}
        page = HTML(self.web_dir, f"Experiment name = {self.name}")
        for epoch in sorted(by_epoch, reverse=True):
            files = by_epoch[epoch]
            labels = sorted(files, key=lambda lb: (rank.get(lb, len(rank)), lb))
            paths = ["images/" + files[label] for label in labels]
            page.add_header(f"epoch [{epoch}]")
            page.add_images(paths, labels, paths, width=self.win_size)
        return page.save()

    # ------------------------------------------------------------------ losses
    def plot_current_errors(
        self, epoch: int, counter_ratio: float, errors: Mapping[str, float]
    ) -> None:
        """Add one point per loss to the history and plot the whole history in visdom.

        Args:
            epoch: the current epoch (counting from 1).
            counter_ratio: the fraction of the epoch done, in [0, 1]; the x value is
                ``epoch + counter_ratio``.
            errors: loss name -> value; a name first seen later gets no points before it.
        """
        point = {name: float(value) for name, value in errors.items()}
        for name in point:
            if name not in self.legend:
                self.legend.append(name)
        self.plot_x.append(float(epoch) + float(counter_ratio))
        self.plot_y.append(point)
        if self._vis is None or not self.legend:
            return
        y = np.array(
            [[p.get(name, math.nan) for name in self.legend] for p in self.plot_y], dtype=np.float64
        )
        x = np.tile(np.array(self.plot_x, dtype=np.float64)[:, None], (1, len(self.legend)))
        self._send(
            "line", Y=y, X=x, win=self._win(0),
            opts={
                "title": f"{self.name} loss over time",
                "legend": list(self.legend),
                "xlabel": "epoch",
                "ylabel": "loss",
            },
        )

    def print_current_errors(
        self, epoch: int, i: int, errors: Mapping[str, float], t: float
    ) -> str:
        """Log one line of losses and append it to ``loss_log.txt``.

        Args:
            epoch: the current epoch.
            i: the iteration (samples seen) within the epoch.
            errors: loss name -> value, printed in this order.
            t: the time per sample in seconds.

        Returns:
            The line, ``'(epoch: %d, iters: %d, time: %.3f) name: value ...'``.
        """
        message = "(epoch: %d, iters: %d, time: %.3f) " % (epoch, i, t)
        message += " ".join("%s: %.3f" % (name, float(value)) for name, value in errors.items())
        logger.info("%s", message)
        self._append(self.loss_log_path, message)
        return message

    def log_reid(self, text: str) -> None:
        """Log an evaluation result and append it to ``reid_log.txt``.

        Args:
            text: the result text (may span several lines).
        """
        logger.info("%s", text)
        self._append(self.reid_log_path, text)

    @staticmethod
    def _append(path: str, text: str) -> None:
        # Logs grow by appending (rewriting them atomically on every line would be quadratic); a
        # crash can at worst cut the last line.
        with open(path, "a", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n")
