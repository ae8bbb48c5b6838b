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
    for (k, a), (k2, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


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
