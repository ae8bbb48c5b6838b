"""--amp on CPU: bf16 autocast keeps the losses of two Stage I steps and of a Stage II iteration
within 5e-2 (relative) of fp32; the CLIs refuse fp16 on CPU (the flags' way through both CLIs is run by
tests/test_distributed.py, under torchrun). The CUDA
branch (fp16 with a GradScaler, or --amp-dtype bf16) cannot run on a CPU-only machine; only its
settings are checked.

Measured here: bf16 vs fp32 at most 1.8e-2 relative (Stage I, second step; bf16 ResNet-18
features are ~4% off fp32 for these random weights), 2.6e-3 (Stage II, G_sp)."""
import os

import pytest
import torch
from torch import nn

import baseline
import train
from fdgan.model import FDGANModel
from reid.errors import ConfigError
from reid.models import build_siamese
from reid.trainers import SiameseTrainer
from reid.utils.amp import MixedPrecision, resolve_mixed_precision

H, W = 64, 32
BF16_RTOL = 5e-2
FDGAN = dict(arch="resnet18", height=H, width=W, pose_feature_size=8, noise_feature_size=8, lr=0.01, drop=0.0,
             pretrained=False)
GH, GW = 32, 32  # the Stage II step runs at the smallest size G accepts, to stay fast
CPU = torch.device("cpu")


def test_amp_settings():
    mp = resolve_mixed_precision(True, None, CPU)
    assert mp.enabled and mp.dtype == torch.bfloat16 and not mp.uses_grad_scaler
    assert not mp.grad_scaler().is_enabled()
    assert resolve_mixed_precision(True, "bf16", CPU) == mp
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_mixed_precision(True, "fp16", CPU)
    with pytest.raises(ConfigError, match="needs --amp"):
        resolve_mixed_precision(False, "bf16", CPU)
    off = resolve_mixed_precision(False, None, CPU)
    assert not off.enabled and not off.grad_scaler().is_enabled()
    # CUDA defaults to fp16 with loss scaling (the settings only; no GPU here).
    cuda = resolve_mixed_precision(True, None, torch.device("cuda", 0))
    assert cuda == MixedPrecision(enabled=True, device_type="cuda", dtype=torch.float16) and cuda.uses_grad_scaler
    with mp.autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


def _stage1_losses(amp: bool, steps: int = 2) -> list[float]:
    """Losses of ``steps`` Stage I steps (each after the previous SGD update)."""
    torch.manual_seed(0)
    net = build_siamese("resnet18", pretrained=False, num_classes=2)
    with torch.no_grad():  # a larger head than the release's N(0, 0.001) so the loss depends on the features
        net.embed_model.classifier.weight.normal_(0, 0.01)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    trainer = SiameseTrainer(net, nn.CrossEntropyLoss(), mixed_precision=resolve_mixed_precision(amp, None, CPU))
    g = torch.Generator().manual_seed(1)
    pids1 = torch.arange(16)
    pids2 = torch.where(pids1 % 4 == 0, pids1, pids1 + 100)
    losses = []
    for _ in range(steps):
        batch = [(torch.randn(16, 3, H, W, generator=g), None, pids1, None),
                 (torch.randn(16, 3, H, W, generator=g), None, pids2, None)]
        losses.append(trainer.train(0, [batch], optimizer, progress=False)["loss"])
    return losses


def _stage2_losses(amp: bool) -> dict:
    """The seven reported losses of one Stage II iteration (Di, Dp, then G updated)."""
    torch.manual_seed(0)
    model = FDGANModel(stage=1, mixed_precision=resolve_mixed_precision(amp, None, CPU),
                       **{**FDGAN, "height": GH, "width": GW})
    model.train_mode()
    g = torch.Generator().manual_seed(2)

    def half(pids):
        return {"origin": torch.randn(4, 3, GH, GW, generator=g), "target": torch.randn(4, 3, GH, GW, generator=g),
                "posemap": torch.rand(4, 18, GH, GW, generator=g), "pid": torch.tensor(pids)}
    model.set_input([half([1, 2, 3, 4]), half([1, 5, 3, 6])])
    model.noise = torch.randn(4, 8, generator=g).repeat(2, 1).view(8, 8, 1, 1)
    model.optimize_parameters()
    out = dict(model.get_current_errors())
    if amp:
        assert model.fake.dtype == torch.bfloat16
    return out


def _cpu_has_amx_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


# Open defect: on CPUs with AMX (oneDNN's AMX bf16 kernels) Stage I's bf16 loss is 7 % off the fp32 one or NaN.
@pytest.mark.slow
@pytest.mark.xfail(_cpu_has_amx_bf16(), reason="Stage I bf16 on AMX CPUs: loss off by >5 % or NaN (open)",
                   strict=False)
def test_stage1_bf16_losses():
    fp32 = _stage1_losses(amp=False)
    assert all(abs(v - 0.6931) > 0.04 for v in fp32)  # not the trivial ln 2 of a near-zero head
    bf16 = _stage1_losses(amp=True)
    assert bf16 == pytest.approx(fp32, rel=BF16_RTOL)
    assert bf16 != fp32  # autocast did run in bf16


@pytest.mark.slow
def test_stage2_bf16_losses():
    fp32 = _stage2_losses(amp=False)
    bf16 = _stage2_losses(amp=True)
    assert fp32["G_sp"] > 0.01  # the same-pose loss is small but not zero: relative error is meaningful
    for k, v in fp32.items():
        assert bf16[k] == pytest.approx(v, rel=BF16_RTOL), k
    assert bf16 != fp32


def test_clis_refuse_fp16_on_cpu(synthetic_root, tmp_path):
    # The flags' way through both CLIs (and torchrun) is exercised by tests/test_distributed.py.
    data = os.path.dirname(synthetic_root)
    assert baseline.main(["-d", "synthetic", "--data-dir", data, "--logs-dir", str(tmp_path / "b"), "--device", "cpu",
                          "--amp", "--amp-dtype", "fp16"]) == 2
    assert train.main(["--stage", "1", "--no-pretrained", "-d", "synthetic", "--dataroot", data, "--checkpoints",
                       str(tmp_path), "--name", "t", "-j", "0", "--device", "cpu", "--amp", "--amp-dtype", "fp16"]) == 2
    assert baseline.main(["-d", "synthetic", "--data-dir", data, "--logs-dir", str(tmp_path / "c"), "--device", "cpu",
                          "--amp-dtype", "bf16"]) == 2  # --amp-dtype without --amp
