"""Shared test fixtures.

``synthetic_root`` builds a tiny synthetic dataset (reid.datasets.synthetic_render) once per test
session and returns its folder: images/, poses/, meta.json, splits.json. Treat it as read-only;
copy it (shutil.copytree) before changing anything in it. Its size is set by the constants below.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys

import pytest

# One intra-op thread per process: the suite runs subprocesses and DataLoader workers beside the
# main process on 2 cores, where thread teams oversubscribe the CPU and small operations slow down
# by an order of magnitude. Set before torch is imported so subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from helpers import REPO_ROOT, render_synthetic  # noqa: E402

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# Size of the session's synthetic dataset: 24 identities (12 trainval, 12 test) + 1 distractor,
# each seen by 2-3 of 3 cameras, 2 images per camera: about 120 images of 64 x 32, built in ~1 s.
SYNTHETIC_NUM_IDS = 24
SYNTHETIC_NUM_CAMS = 3
SYNTHETIC_IMAGES_PER_CAM = 2
SYNTHETIC_HEIGHT = 64
SYNTHETIC_WIDTH = 32
SYNTHETIC_SEED = 0


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Skip the tests marked ``cuda`` where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _detach_cli_logging():
    """A CLI run in-process installs a console handler on pytest's captured stderr and sets the
    root logger's level; detach the handler after the test, before that stream is closed and a
    later record is written to it, and restore the level."""
    level = logging.getLogger().level
    yield
    from reid.utils.logging import remove_logging_handlers

    remove_logging_handlers()
    logging.getLogger().setLevel(level)


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Every test starts with one intra-op thread, whatever an earlier test set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a tiny synthetic dataset (see the constants above), built once per session."""
    parent = render_synthetic(
        tmp_path_factory.mktemp("synthetic_data"), num_ids=SYNTHETIC_NUM_IDS, seed=SYNTHETIC_SEED,
        num_cams=SYNTHETIC_NUM_CAMS, images_per_cam=SYNTHETIC_IMAGES_PER_CAM, height=SYNTHETIC_HEIGHT,
        width=SYNTHETIC_WIDTH,
    )
    return str(parent / "synthetic")


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """An empty folder for one test module's shared fixtures, removed once the module's tests are
    done: their runs write checkpoints of tens of MB each, which the suite must not pile up on a
    CI machine's disk until the session ends (function-level ``tmp_path`` folders go once their
    test passes: ``tmp_path_retention_policy`` in pytest.ini)."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def data(tmp_path, synthetic_root: str):
    """A private copy of the session's synthetic dataset: ``<data>/synthetic``; returns ``<data>``."""
    shutil.copytree(synthetic_root, tmp_path / "data" / "synthetic")
    return tmp_path / "data"
