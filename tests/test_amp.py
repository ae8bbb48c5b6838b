"""--amp on CPU: bf16 autocast keeps the losses of two Stage I steps and of a Stage II iteration
within 5e-2 (relative) of fp32; the CLIs refuse fp16 on CPU (the flags' way through both CLIs is run by
tests/test_distributed.py, under torchrun). The CUDA
branch (fp16 with a GradScaler, or --amp-dtype bf16) cannot run on a CPU-only machine; only its
settings are checked.

Measured here: bf16 vs fp32 at most 9.4e-3 relative (Stage I, second step; 1.8e-2 while the
verification head still ran in bf16), 2.6e-3 (Stage II, G_sp). A NaN in bf16 never passes: the
losses are compared with fp32 on every CPU, a non-finite gradient stops Stage I, non-finite
features and distances are refused, and batches of one anchor image are refused with --amp."""
import math
import os

import pytest
import torch
from torch import nn

import baseline
import train
from fdgan.model import FDGANModel, GANConfig
from reid.errors import ConfigError
from reid.errors import NonFiniteLossError
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
    model = FDGANModel(GANConfig(stage=1, **{**FDGAN, "height": GH, "width": GW}),
                       mixed_precision=resolve_mixed_precision(amp, None, CPU))
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


@pytest.mark.slow
def test_stage1_bf16_losses():
    """Runs on every CPU, with or without AMX: a NaN or a loss off fp32 by more than 5e-2 fails it."""
    fp32 = _stage1_losses(amp=False)
    assert all(abs(v - 0.6931) > 0.04 for v in fp32)  # not the trivial ln 2 of a near-zero head
    bf16 = _stage1_losses(amp=True)
    assert all(math.isfinite(v) for v in bf16), bf16
    assert bf16 == pytest.approx(fp32, rel=BF16_RTOL)
    assert bf16 != fp32  # autocast did run in bf16


def test_verification_head_runs_in_float32_under_autocast():
    """The pair head (difference, square, BatchNorm, classifier) gets float32 copies of bf16 features
    and computes in float32: bit for bit the result of the same float32 inputs without autocast.
    In bf16 the difference of two close features keeps ~2 significant bits, which BatchNorm then
    scales up (the Stage I bf16 loss off fp32 or NaN)."""
    torch.manual_seed(0)
    head = build_siamese("resnet18", pretrained=False).embed_model.train()
    with torch.no_grad():
        head.classifier.weight.normal_(0, 0.01)
    g = torch.Generator().manual_seed(3)
    f1 = torch.rand(8, 512, generator=g).bfloat16()  # what the backbone gives under autocast
    f2 = (f1.float() * (1 + 0.01 * torch.randn(8, 512, generator=g))).bfloat16()
    for t in (f1, f2):
        t.requires_grad_(True)
    with MixedPrecision(enabled=True).autocast():
        out = head(f1, f2)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    a1, a2 = f1.detach().float().requires_grad_(True), f2.detach().float().requires_grad_(True)
    ref = head(a1, a2)
    ref.square().sum().backward()
    assert torch.equal(out, ref)
    assert torch.equal(f1.grad.float(), a1.grad.bfloat16().float())
    # The same head computed in bf16 (what it did before) differs: the check is not vacuous.
    with torch.no_grad(), MixedPrecision(enabled=True).autocast():
        in_bf16 = head._head(f1.detach(), f2.detach())
    assert in_bf16.dtype == torch.bfloat16 and not torch.equal(in_bf16.float(), ref.detach())


class _NanGradient(nn.Module):
    """A finite loss whose gradient is not: d sqrt(w) / dw at w = 0 is infinite."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))


class _NanGradientTrainer(SiameseTrainer):
    def _parse_data(self, inputs):
        return inputs, torch.zeros(2, dtype=torch.long)

    def _forward(self, inputs, targets):
        return torch.sqrt(self.model.w).sum(), 1.0


def test_nan_gradient_under_bf16_stops_before_the_step():
    model = _NanGradient()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = _NanGradientTrainer(model, nn.CrossEntropyLoss(), mixed_precision=resolve_mixed_precision(True, None, CPU))
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train(3, [None], optimizer, progress=False)
    assert str(err.value) == ("epoch 3 iteration 0: the gradients are NaN or infinite under --amp (torch.bfloat16) "
                              "although the loss is finite; stopped before the step, the last good checkpoint is "
                              "kept (train without --amp?)")
    assert model.w.item() == 0.0  # the step never ran


def test_nan_features_are_refused_not_ranked():
    from reid.errors import NonFiniteError
    from reid.evaluators import extract_features
    from reid.feature_extraction import FeatureExtractor

    class Half(nn.Module):  # the second image's feature is NaN
        def forward(self, x):
            out = x.flatten(1)[:, :4].clone()
            out[1:] = float("nan")
            return out

    batch = [(torch.zeros(2, 3, 4, 4), ("a.jpg", "b.jpg"), torch.zeros(2), torch.zeros(2))]
    with pytest.raises(NonFiniteError, match=r"^the features of a.jpg and its batch: 1 of 2 feature vectors hold NaN"):
        extract_features(Half(), batch, progress=False)
    with pytest.raises(NonFiniteError, match=r"^the model: 1 of 2 feature vectors hold NaN or infinite values"):
        FeatureExtractor(model=Half(), height=4, width=4)(torch.zeros(2, 3, 4, 4))


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


def test_amp_with_one_anchor_per_batch_is_refused(synthetic_root, tmp_path, capsys):
    """-b 4 pairs with --np-ratio 3 is one anchor image and its 4 partners: the anchors' BatchNorm
    statistics are those of copies of one image (rounding noise); in bf16 the weights exploded
    and the distances were NaN (under torchrun, where -b is per process, too)."""
    data = os.path.dirname(synthetic_root)
    argv = ["-d", "synthetic", "--data-dir", data, "--logs-dir", str(tmp_path / "b"), "--device", "cpu", "--amp",
            "-a", "resnet18", "--no-pretrained", "--height", "64", "--width", "32", "-j", "0", "--no-progress"]
    assert baseline.main(argv + ["-b", "4"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert lines == ["error: --amp with -b 4 and --np-ratio 3: each batch's first images are one anchor image "
                     "repeated (it comes with 4 pairs), so BatchNorm normalises rounding noise, which low precision "
                     "turns into exploding weights and NaN; use -b 5 or more (pairs per process)"]
    # -b 4 > --np-ratio 2 + 1 passes this check (and stops at the next: --epochs 0 trains nothing).
    assert baseline.main(argv + ["-b", "4", "--np-ratio", "2", "--epochs", "0"]) == 2
    assert "this run saved no best model" in capsys.readouterr().err


def test_overflowing_distances_are_refused_not_ranked():
    from reid.errors import NonFiniteError
    from reid.evaluators import CascadeEvaluator, pairwise_distance

    net = build_siamese("resnet18", pretrained=False)
    qf = torch.full((2, 4), 3e19)  # finite, but its squared norm is not
    gf = torch.ones(3, 4)
    query = [("q0.jpg", 0, 0), ("q1.jpg", 1, 0)]
    gallery = [("g0.jpg", 0, 1), ("g1.jpg", 1, 1), ("g2.jpg", 2, 1)]
    distmat = pairwise_distance(qf, gf)
    assert not torch.isfinite(distmat).all()
    with pytest.raises(NonFiniteError, match=r"^the first-stage distances hold NaN or infinite values \(features "
                                             r"as large as 3e\+19: "):
        CascadeEvaluator(net.base_model, net.embed_model).evaluate_features(qf, gf, distmat, query, gallery)
