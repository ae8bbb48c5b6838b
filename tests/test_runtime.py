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


def test_a_plain_cuda_run_with_several_visible_gpus_says_it_uses_one():
    from reid.utils.runtime import unused_gpus_note
    note = unused_gpus_note(torch.device("cuda", 0), distributed=False, visible_gpus=4)
    assert note is not None and "\n" not in note
    assert note.startswith("4 GPUs are visible but this run uses only cuda:0")
    assert "torchrun --nproc_per_node 4" in note
    assert unused_gpus_note(torch.device("cuda", 0), distributed=False, visible_gpus=1) is None
    assert unused_gpus_note(torch.device("cuda", 1), distributed=True, visible_gpus=4) is None
    assert unused_gpus_note(torch.device("cpu"), distributed=False, visible_gpus=4) is None


def test_training_run_logs_the_one_gpu_line_at_start(monkeypatch, caplog):
    import reid.pipelines.run as run
    from reid.utils.distributed import DistributedContext
    monkeypatch.setattr(run, "init_distributed", lambda device: DistributedContext(device=torch.device("cuda", 0)))
    monkeypatch.setattr(run, "configure_backends", lambda device, deterministic=False: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with caplog.at_level("WARNING", logger=run.__name__):
        run.TrainingRun(run.RunConfig(device="cuda", progress=False))
    lines = [r.getMessage() for r in caplog.records if "GPUs are visible" in r.getMessage()]
    assert len(lines) == 1 and "torchrun --nproc_per_node 2" in lines[0]
