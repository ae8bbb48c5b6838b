"""cuDNN autotuning as the release (``cudnn.benchmark = True``) on CUDA, off for --deterministic
and on the CPU; the training-run skeleton applies it."""
from __future__ import annotations

import pytest
import torch

from reid.pipelines.run import RunConfig, TrainingRun
from reid.utils.runtime import configure_backends


@pytest.fixture(autouse=True)
def _restore_benchmark():
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("device, deterministic, expected", [
    ("cuda", False, True), ("cuda:1", False, True), ("cuda", True, False), ("cpu", False, False),
])
def test_cudnn_benchmark_follows_device_and_determinism(device: str, deterministic: bool, expected: bool) -> None:
    torch.backends.cudnn.benchmark = not expected
    assert configure_backends(torch.device(device), deterministic) is expected
    assert torch.backends.cudnn.benchmark is expected


def test_training_run_turns_autotuning_off_on_the_cpu() -> None:
    torch.backends.cudnn.benchmark = True
    with TrainingRun(RunConfig(device="cpu")) as run:
        assert run.device.type == "cpu"
        assert torch.backends.cudnn.benchmark is False
