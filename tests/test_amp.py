"""--amp and --channels-last on CPU: bf16 autocast keeps a Stage I and a Stage II step's losses
within 5e-2 (relative) of fp32; channels-last gives the losses of the default layout within 1e-4;
both CLIs run with the flags and write the release's checkpoint keys. The CUDA branch (fp16 with a
GradScaler, or --amp-dtype bf16) cannot run on a CPU-only machine; only its settings are checked."""
import os

import pytest
import torch
from torch import nn

import baseline
import train
from fdgan.model import NET_NAMES, FDGANModel
from reid.errors import ConfigError
from reid.pipelines.common import build_siamese
from reid.trainers import SiameseTrainer
from reid.utils.runtime import MixedPrecision, resolve_mixed_precision
from reid.utils.serialization import load_checkpoint

H, W = 64, 32
BF16_RTOL = 5e-2  # measured: at most ~1e-2 on these steps
LAYOUT_TOL = 1e-4  # measured: ~1e-6
FDGAN = dict(arch="resnet18", height=H, width=W, pose_feature_size=8, noise_feature_size=8, lr=0.01, drop=0.0,
             pretrained=False)
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


def _stage1_losses(amp: bool, channels_last: bool) -> list[float]:
    """Losses of two Stage I steps (the second after one SGD update)."""
    torch.manual_seed(0)
    net = build_siamese("resnet18", pretrained=False, num_classes=2)
    with torch.no_grad():  # a larger head than the release's N(0, 0.001) so the loss depends on the features
        net.embed_model.classifier.weight.normal_(0, 0.1)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    trainer = SiameseTrainer(net, nn.CrossEntropyLoss(), mixed_precision=resolve_mixed_precision(amp, None, CPU),
                             channels_last=channels_last)
    g = torch.Generator().manual_seed(1)
    pids1 = torch.arange(8)
    pids2 = torch.where(pids1 % 4 == 0, pids1, pids1 + 100)
    losses = []
    for _ in range(2):
        batch = [(torch.randn(8, 3, H, W, generator=g), None, pids1, None),
                 (torch.randn(8, 3, H, W, generator=g), None, pids2, None)]
        losses.append(trainer.train(0, [batch], optimizer, progress=False)["loss"])
    if channels_last:
        assert net.base_model.base.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    return losses


def _stage2_losses(amp: bool, channels_last: bool) -> dict:
    """The seven reported losses of two Stage II iterations (the second after the first's updates)."""
    torch.manual_seed(0)
    model = FDGANModel(stage=1, mixed_precision=resolve_mixed_precision(amp, None, CPU), channels_last=channels_last,
                       **FDGAN)
    model.train_mode()
    g = torch.Generator().manual_seed(2)

    def half(pids):
        return {"origin": torch.randn(4, 3, H, W, generator=g), "target": torch.randn(4, 3, H, W, generator=g),
                "posemap": torch.rand(4, 18, H, W, generator=g), "pid": torch.tensor(pids)}
    out = {}
    for step in range(2):
        model.set_input([half([1, 2, 3, 4]), half([1, 5, 3, 6])])
        model.noise = torch.randn(4, 8, generator=g).repeat(2, 1).view(8, 8, 1, 1)
        model.optimize_parameters()
        out.update({f"{k}@{step}": v for k, v in model.get_current_errors().items()})
    if channels_last:
        assert model.origin.is_contiguous(memory_format=torch.channels_last)
        assert model.net_G.en_conv1.weight.is_contiguous(memory_format=torch.channels_last)
    if amp:
        assert model.fake.dtype == torch.bfloat16
    return out


def test_stage1_bf16_and_channels_last_losses():
    fp32 = _stage1_losses(amp=False, channels_last=False)
    assert all(abs(v - 0.6931) > 0.05 for v in fp32)  # not the trivial ln 2 of a near-zero head
    bf16 = _stage1_losses(amp=True, channels_last=False)
    assert bf16 == pytest.approx(fp32, rel=BF16_RTOL)
    assert bf16 != fp32  # autocast did run in bf16
    assert _stage1_losses(amp=False, channels_last=True) == pytest.approx(fp32, rel=LAYOUT_TOL, abs=LAYOUT_TOL)


def test_stage2_bf16_and_channels_last_losses():
    fp32 = _stage2_losses(amp=False, channels_last=False)
    bf16 = _stage2_losses(amp=True, channels_last=False)
    for k, v in fp32.items():
        # G_sp (same-pose L1 between two generated images) is small; an absolute floor covers it.
        assert bf16[k] == pytest.approx(v, rel=BF16_RTOL, abs=1e-3), k
    assert bf16 != fp32
    last = _stage2_losses(amp=False, channels_last=True)
    for k, v in fp32.items():
        assert last[k] == pytest.approx(v, rel=LAYOUT_TOL, abs=LAYOUT_TOL), k


def test_clis_run_with_amp_and_channels_last(synthetic_root, tmp_path):
    data = os.path.dirname(synthetic_root)
    logs = tmp_path / "stage1"
    assert baseline.main(["-d", "synthetic", "--data-dir", data, "--logs-dir", str(logs), "-a", "resnet18",
                          "--no-pretrained", "--height", str(H), "--width", str(W), "-b", "4", "-j", "0",
                          "--epochs", "1", "--max-iters-per-epoch", "2", "--rerank-topk", "5", "--augment", "none",
                          "--no-progress", "--device", "cpu", "--amp", "--channels-last"]) == 0
    keys = list(load_checkpoint(logs / "checkpoint.pth.tar")["state_dict"])
    assert keys == ["module." + k for k in build_siamese("resnet18", pretrained=False).state_dict()]
    assert train.main(["--stage", "1", "--no-pretrained", "-d", "synthetic", "--dataroot", data,
                       "--checkpoints", str(tmp_path), "--name", "amp", "--arch", "resnet18", "--height", str(H),
                       "--width", str(W), "--pose-feature-size", "8", "--noise-feature-size", "8", "-b", "2",
                       "-j", "0", "--niter", "1", "--niter-decay", "0", "--max-iters-per-epoch", "2",
                       "--save-step", "1", "--display-id", "0", "--no-progress", "--device", "cpu", "--amp",
                       "--amp-dtype", "bf16", "--channels-last"]) == 0
    plain = FDGANModel(stage=1, **FDGAN)
    for name in NET_NAMES:
        saved = torch.load(tmp_path / "amp" / f"1_net_{name}.pth", weights_only=True)
        assert list(saved) == ["module." + k for k in plain.net(name).state_dict()], name
    assert baseline.main(["-d", "synthetic", "--data-dir", data, "--logs-dir", str(tmp_path / "x"),
                          "--device", "cpu", "--amp", "--amp-dtype", "fp16"]) == 2  # fp16 needs CUDA
