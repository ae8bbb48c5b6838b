"""Helpers shared by several test files (fixtures live in conftest.py).

``timeout(seconds)`` scales every subprocess / wait limit of the suite by the environment variable
``FDGAN_TEST_TIMEOUT_SCALE`` (default 1; set e.g. 3 on a slow or crowded machine). The limits are
generous already: they guard against hangs, not against slowness.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Tuple, Union

import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = Path(__file__).resolve().parent / "data"
#: The release's state-dict key names and shapes, per network configuration.
STATE_DICT_KEYS = DATA_DIR / "state_dict_keys.json"


def timeout(seconds: float) -> float:
    """``seconds`` times ``FDGAN_TEST_TIMEOUT_SCALE`` (a positive number, default 1)."""
    raw = os.environ.get("FDGAN_TEST_TIMEOUT_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"FDGAN_TEST_TIMEOUT_SCALE={raw!r}: expected a positive number") from None
    if not scale > 0:
        raise ValueError(f"FDGAN_TEST_TIMEOUT_SCALE={raw!r}: expected a positive number")
    return seconds * scale


def load_json(path: Any) -> Any:
    """The parsed content of a JSON file."""
    with open(path) as f:
        return json.load(f)


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (its ``main(argv)`` can then run in-process)."""
    path = os.path.join(REPO_ROOT, "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shapes_of(model: nn.Module) -> "OrderedDict[str, List[int]]":
    """Key -> shape of a state dict, without BatchNorm's ``num_batches_tracked`` counters."""
    return OrderedDict(
        (k, list(v.shape)) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    )


def assert_matches_release_keys(name: str, model: nn.Module, contract: Dict[str, Tuple[int, str]]) -> None:
    """The model's keys and shapes equal the release's entry ``name`` of :data:`STATE_DICT_KEYS`, and
    their count and the sha256 of the sorted ``key [shape]`` lines equal ``contract[name]``."""
    shapes = shapes_of(model)
    assert shapes == load_json(STATE_DICT_KEYS)[name]
    text = "\n".join(f"{k} {shapes[k]}" for k in sorted(shapes))
    assert (len(shapes), hashlib.sha256(text.encode()).hexdigest()) == contract[name]


def with_bn_statistics(model: nn.Module, seed: int, weights: bool = False) -> nn.Module:
    """Give every BatchNorm random running statistics (and, with ``weights``, random scales), so
    that loaded weights matter; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            if weights:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
    return model.eval()


def tiny_baseline_argv(data: Any, logs: Any, *extra: str) -> List[str]:
    """``baseline.py`` flags of a one-epoch, one-iteration ResNet-18 run on ``<data>/synthetic``;
    ``extra`` comes last, so it overrides."""
    return ["-d", "synthetic", "-a", "resnet18", "--no-pretrained", "--height", "64", "--width", "32", "-b", "4",
            "-j", "0", "--device", "cpu", "--no-progress", "--epochs", "1", "--max-iters-per-epoch", "1",
            "--augment", "none", "--rerank-topk", "5", "--data-dir", str(data), "--logs-dir", str(logs), *extra]


def tiny_train_argv(data: Any, checkpoints: Any, *extra: str, stage1: bool = True) -> List[str]:
    """``train.py`` flags of a one-iteration-per-epoch ResNet-18 run named ``run`` on
    ``<data>/synthetic`` (``--stage 1`` with a random encoder unless ``stage1`` is false); ``extra``
    comes last, so it overrides."""
    head = ["--stage", "1", "--no-pretrained"] if stage1 else []
    return [*head, "-d", "synthetic", "--dataroot", str(data), "--checkpoints", str(checkpoints), "--name", "run",
            "--arch", "resnet18", "--height", "64", "--width", "32", "-b", "4", "-j", "0", "--niter", "1",
            "--max-iters-per-epoch", "1", "--display-id", "0", "--no-progress", "--device", "cpu", *extra]


def one_error_line(err: str) -> str:
    """The message of the single ``error: <message>`` line of a CLI's stderr (no traceback)."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0][len("error: "):]


def render_synthetic(parent: Union[str, Path], num_ids: int, seed: int, num_cams: int = 3, images_per_cam: int = 3,
                     height: int = 64, width: int = 32) -> Path:
    """Render a synthetic dataset into ``<parent>/synthetic``; returns ``parent``."""
    from reid.datasets.synthetic_render import SyntheticConfig, generate_synthetic_dataset

    generate_synthetic_dataset(Path(parent) / "synthetic", SyntheticConfig(
        num_ids=num_ids, num_cams=num_cams, images_per_cam=images_per_cam, height=height, width=width, seed=seed))
    return Path(parent)
