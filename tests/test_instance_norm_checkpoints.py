"""A release generator / pose discriminator trained with ``--norm instance`` was saved by PyTorch
0.3, whose InstanceNorm2d kept running_mean / running_var: such files load, and only those keys
are ignored."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from fdgan.networks import CustomPoseGenerator, NLayerDiscriminator, get_norm_layer
from reid.errors import CheckpointError
from reid.utils.serialization import copy_state_dict


def _as_release_file(net: nn.Module, norm_channels: dict) -> "OrderedDict[str, torch.Tensor]":
    """``net``'s state dict with PyTorch 0.3's instance-norm buffers and DataParallel prefixes."""
    state = OrderedDict((f"module.{k}", v.clone()) for k, v in net.state_dict().items())
    for name, channels in norm_channels.items():
        state[f"module.{name}.running_mean"] = torch.zeros(channels)
        state[f"module.{name}.running_var"] = torch.ones(channels)
    return state


def _release_norm_positions(net: nn.Module) -> dict:
    """Every norm position of a release instance-norm network and its channel count: each
    InstanceNorm2d, and the identities that replace the norm of a 1 x 1 map (en_avg here)."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.InstanceNorm2d):
            out[name] = m.num_features
    out["en_avg.2"] = 8  # pose_feature_nc below; an nn.Identity in this project
    return out


def _generator() -> CustomPoseGenerator:
    return CustomPoseGenerator(pose_feature_nc=8, reid_feature_nc=16, noise_nc=4,
                               norm_layer=get_norm_layer("instance"))


def test_release_instance_norm_generator_loads_and_keeps_its_weights() -> None:
    torch.manual_seed(0)
    source, target = _generator(), _generator()
    assert isinstance(target.en_avg[2], nn.Identity)
    positions = _release_norm_positions(source)
    assert len(positions) > 5
    copy_state_dict(_as_release_file(source, positions), target, source="G.pth")
    loaded = target.state_dict()
    for k, a in source.state_dict().items():
        assert torch.equal(a, loaded[k]), k
    # The stand-in for the release's norm of one value keeps PyTorch 0.3's buffers (see below).
    assert set(loaded) - set(source.state_dict()) == {"en_avg.2.running_mean", "en_avg.2.running_var"}


def test_release_instance_norm_pose_discriminator_loads() -> None:
    torch.manual_seed(1)
    source = NLayerDiscriminator(input_nc=21, norm_layer=get_norm_layer("instance"))
    target = NLayerDiscriminator(input_nc=21, norm_layer=get_norm_layer("instance"))
    positions = {n: m.num_features for n, m in source.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    assert sorted(positions) == ["model.3", "model.6", "model.9"]
    copy_state_dict(_as_release_file(source, positions), target, source="Dp.pth")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_only_instance_norm_statistics_are_ignored() -> None:
    source, target = _generator(), _generator()
    positions = _release_norm_positions(source)
    # running statistics on a convolution, and any other stray key, are still errors
    for extra in ("module.en_conv1.running_mean", "module.en_conv2.2.weight_extra"):
        state = _as_release_file(source, positions)
        state[extra] = torch.zeros(3)
        with pytest.raises(CheckpointError, match="unexpected keys"):
            copy_state_dict(state, target, source="G.pth")
    # a batch-norm generator still needs its own running statistics
    bn = CustomPoseGenerator(pose_feature_nc=8, reid_feature_nc=16, noise_nc=4)
    state = OrderedDict((k, v) for k, v in bn.state_dict().items() if not k.endswith("running_mean"))
    with pytest.raises(CheckpointError, match="missing keys"):
        copy_state_dict(state, CustomPoseGenerator(pose_feature_nc=8, reid_feature_nc=16, noise_nc=4))


def _posemaps(seed: int) -> torch.Tensor:
    return torch.rand(2, 18, 256, 128, generator=torch.Generator().manual_seed(seed))


def test_a_release_instance_norm_generator_draws_with_a_zero_pose_feature(tmp_path) -> None:
    """PyTorch 0.3 normalised G's 1 x 1 pose feature to (x - mean) / sqrt(var + eps) = 0 / sqrt(eps) = 0."""
    torch.manual_seed(2)
    source = _generator().eval()
    release_file = _as_release_file(source, _release_norm_positions(source))
    loaded = _generator().eval()
    copy_state_dict(release_file, loaded, source="G.pth")
    reid, noise = torch.randn(2, 16, 1, 1), torch.randn(2, 4, 1, 1)
    with torch.no_grad():
        pose = loaded.en_avg(loaded.en_conv5(loaded.en_conv4(loaded.en_conv3(loaded.en_conv2(
            loaded.en_conv1(_posemaps(0)))))))
        assert pose.shape == (2, 8, 1, 1) and torch.equal(pose, torch.zeros(2, 8, 1, 1))
        a, b = loaded(_posemaps(0), reid, noise), loaded(_posemaps(1), reid, noise)
        # Without skip connections the pose reaches the decoder only through that feature: the
        # release's G draws the same image for any pose. By hand: the decoder fed (reid, 0, noise).
        assert torch.equal(a, b)
        by_hand = source.de_conv1(source.de_conv2(source.de_conv3(source.de_conv4(source.de_conv5(
            source.de_avg(torch.cat([reid, torch.zeros(2, 8, 1, 1), noise], 1)))))))
        torch.testing.assert_close(a, by_hand, rtol=1e-6, atol=1e-6)
        # New training (a file of this project, no 0.3 buffers): the pose feature passes through.
        fresh = _generator().eval()
        copy_state_dict(source.state_dict(), fresh, source="G.pth")
        assert not torch.allclose(fresh(_posemaps(0), reid, noise), fresh(_posemaps(1), reid, noise))
    # A file written from the loaded release G loads the release's way again.
    again = _generator().eval()
    copy_state_dict(loaded.state_dict(), again, source="G2.pth")
    assert again.en_avg[2].release_zeros and not fresh.en_avg[2].release_zeros
    with torch.no_grad():
        assert torch.equal(again(_posemaps(0), reid, noise), a)


def test_instance_norm_conv_transpose_biases_use_pytorch_03_bound() -> None:
    """0.3: U(-b, b) with b = 1 / sqrt(in_channels * kh * kw); current PyTorch uses out_channels."""
    torch.manual_seed(3)
    g = _generator()
    checked = 0
    for name, m in g.named_modules():
        if isinstance(m, nn.ConvTranspose2d):
            bound = 1.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]) ** 0.5
            top = m.bias.abs().max().item()
            assert top <= bound, name
            if m.out_channels >= 64:  # 64 or more draws: the largest is within 10 % of the bound
                assert top > 0.9 * bound, name
                checked += 1
    assert checked == 5
    # de_conv2 (128 -> 64, 4 x 4): 0.3's bound 1/sqrt(2048) = 0.0221, PyTorch's would be 1/sqrt(1024).
    assert g.de_conv2[1].bias.abs().max().item() <= 2048 ** -0.5
    assert CustomPoseGenerator(pose_feature_nc=8, reid_feature_nc=16, noise_nc=4).de_conv2[1].bias is None
