"""The CUDA paths (marked ``cuda``; skipped with the reason where torch sees no GPU).

scripts/gpu_check.py runs these on the user's GPU. A Stage I and a Stage II step on the GPU give
the CPU's losses (fp32; TF32 off, so within float32 rounding of a different kernel order); fp16
with its GradScaler and bf16 give fp32's within the tolerance of tests/test_amp.py; cuDNN
autotuning is on for a CUDA run; an NCCL process group all-reduces; pose maps drawn on the GPU
are bit-equal to the CPU's (per item sigma, flips, borders).
"""
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from fdgan.model import FDGANModel, GANConfig
from reid.models import build_siamese
from reid.trainers import SiameseTrainer
from reid.utils.amp import resolve_mixed_precision
from reid.utils.data.preprocessor import draw_pose_maps
from reid.utils.runtime import configure_backends

pytestmark = pytest.mark.cuda

H, W = 64, 32
FDGAN = dict(arch="resnet18", height=H, width=W, pose_feature_size=8, noise_feature_size=8, lr=0.01, drop=0.0,
             pretrained=False, norm="instance")
# fp32 on two devices: the same maths in a different summation order.
DEVICE_RTOL = 1e-3
AMP_RTOL = 5e-2


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _pose_batch(pairs: int = 4) -> list:
    g = torch.Generator().manual_seed(2)
    pids1 = torch.arange(pairs)

    def half(pids):
        return {"origin": torch.randn(pairs, 3, H, W, generator=g), "target": torch.randn(pairs, 3, H, W, generator=g),
                "posemap": torch.rand(pairs, 18, H, W, generator=g), "pid": pids}
    return [half(pids1), half(torch.where(pids1 % 2 == 0, pids1, pids1 + 10))]


def _stage2_losses(device: str, amp_dtype=None) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    model = FDGANModel(GANConfig(stage=1, **FDGAN), device=dev,
                       mixed_precision=resolve_mixed_precision(amp_dtype is not None, amp_dtype, dev))
    model.train_mode()
    model.set_input(_pose_batch())
    model.noise = torch.randn(4, 8, generator=torch.Generator().manual_seed(3)).repeat(2, 1).view(8, 8, 1, 1).to(dev)
    model.optimize_parameters()
    if amp_dtype == "fp16":
        assert model.scaler.is_enabled() and 0 < model.scaler.get_scale() < float("inf")
    return dict(model.get_current_errors())


def _stage1_loss(device: str) -> float:
    torch.manual_seed(0)
    net = build_siamese("resnet18", pretrained=False, num_classes=2).to(device)
    with torch.no_grad():
        net.embed_model.classifier.weight.normal_(0, 0.01)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    trainer = SiameseTrainer(net, nn.CrossEntropyLoss(), device=device)
    g = torch.Generator().manual_seed(1)
    pids1 = torch.arange(8)
    batch = [(torch.randn(8, 3, H, W, generator=g), None, pids1, None),
             (torch.randn(8, 3, H, W, generator=g), None, torch.where(pids1 % 4 == 0, pids1, pids1 + 100), None)]
    return trainer.train(0, [batch, batch], opt, progress=False)["loss"]


def test_stage1_steps_on_cuda_equal_the_cpu():
    assert _stage1_loss("cuda") == pytest.approx(_stage1_loss("cpu"), rel=DEVICE_RTOL)


def test_stage2_step_on_cuda_equals_the_cpu():
    cpu, gpu = _stage2_losses("cpu"), _stage2_losses("cuda")
    for k, v in cpu.items():
        assert gpu[k] == pytest.approx(v, rel=DEVICE_RTOL, abs=1e-5), k


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_stage2_mixed_precision_step_is_near_fp32(dtype):
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16 support")
    fp32, low = _stage2_losses("cuda"), _stage2_losses("cuda", dtype)
    assert low != fp32  # autocast ran in low precision
    for k, v in fp32.items():
        assert low[k] == pytest.approx(v, rel=AMP_RTOL, abs=5e-3), k


def test_cuda_run_turns_on_cudnn_autotuning():
    saved = torch.backends.cudnn.benchmark
    try:
        assert configure_backends(torch.device("cuda")) is True and torch.backends.cudnn.benchmark
        assert configure_backends(torch.device("cuda"), deterministic=True) is False
    finally:
        torch.backends.cudnn.benchmark = saved


def test_nccl_group_all_reduces():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        t = torch.arange(4.0, device="cuda")
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()


def test_pose_maps_drawn_on_cuda_equal_the_cpu():
    g = torch.Generator().manual_seed(0)
    points = torch.stack([torch.randint(-2, 258, (8, 18), generator=g),
                          torch.randint(-2, 130, (8, 18), generator=g)], -1)
    points[0, :4] = torch.tensor([[0, 0], [255, 127], [0, 127], [255, 0]])
    sigmas = torch.tensor([4.0, 5.0, 6.0, 5.0, 4.0, 6.0, 5.0, 5.0], dtype=torch.float64)
    flips = torch.arange(8) % 2 == 1
    cpu = draw_pose_maps(points, 256, 128, sigmas, flip=flips)
    gpu = draw_pose_maps(points.cuda(), 256, 128, sigmas, flip=flips.cuda())
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
