"""Tests of fdgan.networks and fdgan.losses: release key names, shapes, defects fixed, helpers."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from fdgan.losses import FLIP_PROBABILITY, GANLoss
from fdgan.networks import (
    CustomPoseGenerator,
    NLayerDiscriminator,
    get_norm_layer,
    get_scheduler,
    init_weights,
    set_bn_fix,
)
from helpers import assert_matches_release_keys, shapes_of
from reid.errors import CheckpointError, ConfigError
from reid.utils.serialization import copy_state_dict, load_checkpoint

# Count and sha256 of the sorted "key [shape]" lines of each network, checked beside the full
# key/shape lists of tests/data/state_dict_keys.json.
CONTRACT = {
    "net_G_cat_c0": (52, "ea94f66b26337be1a8612d9d39f6b0c0b2410e9c5d725e7ad543f178047a5a67"),
    "net_G_cat_c2": (52, "c4285344a1c299db9225bd467e230918a26e7bec32c3d27b5779d830700c845f"),
    "net_G_add_c0": (55, "b00a0ad6a3eb5cfb655e21db8de28c10d9149d8046262a107ca24fef888dbb97"),
    "net_G_add_c2": (55, "bd428d50a6cf63125cd6e65cec615a44f200ff2ec8e7fecf51e89e3db2e2d5f6"),
    "net_Dp_batch": (19, "3b8ffa6f85a74097725f86d4db9dea2d78533994ecbdc3cf444233f7e3183f1f"),
    "net_Dp_instance": (10, "da3a4113e541a06f3b770e7b9fe85a12ab995b105891b27f73d2dddc3795096d"),
}


def small_generator(**kwargs) -> CustomPoseGenerator:
    """A 64 x 32 generator with small features, cheap enough to run in every test."""
    args = dict(pose_feature_nc=8, reid_feature_nc=16, noise_nc=4, height=64, width=32)
    args.update(kwargs)
    return CustomPoseGenerator(**args)


# -------------------------------------------------------------------------- release key names


@pytest.mark.parametrize("fuse_mode", ["cat", "add"])
@pytest.mark.parametrize("connect_layers", [0, 2])
def test_generator_keys_and_shapes_match_release(fuse_mode: str, connect_layers: int) -> None:
    with torch.device("meta"):
        net = CustomPoseGenerator(128, 2048, 256, norm_layer=get_norm_layer("batch"),
                                  fuse_mode=fuse_mode, connect_layers=connect_layers)
    assert_matches_release_keys(f"net_G_{fuse_mode}_c{connect_layers}", net, CONTRACT)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_pose_discriminator_keys_and_shapes_match_release(norm: str) -> None:
    with torch.device("meta"):
        net = NLayerDiscriminator(3 + 18, norm_layer=get_norm_layer(norm))
    assert_matches_release_keys(f"net_Dp_{norm}", net, CONTRACT)


def test_norm_none_keeps_layer_positions() -> None:
    net = NLayerDiscriminator(21, norm_layer=get_norm_layer("none"))
    assert [k for k in net.state_dict()] == [
        "model.0.weight", "model.0.bias", "model.2.weight", "model.5.weight", "model.8.weight",
        "model.11.weight", "model.11.bias",
    ]
    assert all(isinstance(net.model[i], nn.Identity) for i in (3, 6, 9))
    assert net(torch.randn(1, 21, 64, 32)).shape == (1, 1, 6, 2)


def test_get_norm_layer() -> None:
    bn = get_norm_layer("batch")(7)
    assert isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.num_features == 7
    inorm = get_norm_layer("instance")(7)
    assert isinstance(inorm, nn.InstanceNorm2d) and not inorm.affine and not inorm.track_running_stats
    assert isinstance(get_norm_layer("none")(7), nn.Identity)
    with pytest.raises(ConfigError, match="'group'.*batch, instance, none"):
        get_norm_layer("group")


# ---------------------------------------------------------------------------------- generator


def test_generator_256x128_output() -> None:
    torch.manual_seed(0)
    net = CustomPoseGenerator().eval()
    with torch.no_grad():
        for m in net.de_conv1.modules():  # large last-layer weights drive tanh into saturation
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.mul_(1e4)
        out = net(torch.rand(1, 18, 256, 128), torch.rand(1, 2048, 1, 1), torch.randn(1, 256, 1, 1))
    assert out.shape == (1, 3, 256, 128)
    assert out.min().item() >= -1.0 and out.max().item() <= 1.0
    assert out.min().item() < -0.99 and out.max().item() > 0.99


def test_pose_discriminator_256x128_logits() -> None:
    torch.manual_seed(0)
    net = NLayerDiscriminator(21)
    out = net(torch.randn(1, 21, 256, 128))
    assert out.shape == (1, 1, 30, 14)
    assert out.min().item() < 0 < out.max().item()  # raw logits, no sigmoid


def test_generator_128x64_with_resnet18_features() -> None:
    torch.manual_seed(0)
    net = CustomPoseGenerator(reid_feature_nc=512, height=128, width=64)
    assert net.en_avg[1].kernel_size == (4, 2) and net.de_avg[1].kernel_size == (4, 2)
    out = net(torch.rand(2, 18, 128, 64), torch.rand(2, 512, 1, 1), torch.randn(2, 256, 1, 1))
    assert out.shape == (2, 3, 128, 64)


@pytest.mark.parametrize("connect_layers,table", [
    (0, [8, 8, 4, 2, 1]), (1, [16, 8, 4, 2, 1]), (2, [16, 16, 4, 2, 1]),
    (3, [16, 16, 8, 2, 1]), (4, [16, 16, 8, 4, 1]), (5, [16, 16, 8, 4, 2]),
])
def test_decoder_input_channels(connect_layers: int, table: list) -> None:
    with torch.device("meta"):
        net = CustomPoseGenerator(connect_layers=connect_layers)
    blocks = [net.de_conv5, net.de_conv4, net.de_conv3, net.de_conv2, net.de_conv1]
    assert [b[1].in_channels for b in blocks] == [64 * t for t in table]


@pytest.mark.slow
def test_skip_connections_run_at_every_depth() -> None:
    torch.manual_seed(0)
    for c in range(6):
        net = small_generator(connect_layers=c)
        out = net(torch.rand(2, 18, 64, 32), torch.rand(2, 16, 1, 1), torch.randn(2, 4, 1, 1))
        assert out.shape == (2, 3, 64, 32)


def _fusion_input(net: CustomPoseGenerator, reid, noise):
    seen = {}
    h1 = net.en_avg.register_forward_hook(lambda m, i, o: seen.__setitem__("pose", o))
    h2 = net.de_avg.register_forward_pre_hook(lambda m, i: seen.__setitem__("fused", i[0]))
    net(torch.rand(2, 18, 64, 32), reid, noise)
    h1.remove()
    h2.remove()
    return seen["pose"], seen["fused"]


def test_cat_fusion_order_is_reid_pose_noise() -> None:
    torch.manual_seed(0)
    net = small_generator(fuse_mode="cat")
    reid, noise = torch.rand(2, 16, 1, 1), torch.randn(2, 4, 1, 1)
    pose, fused = _fusion_input(net, reid, noise)
    assert fused.shape == (2, 16 + 8 + 4, 1, 1)
    assert torch.equal(fused[:, :16], reid) and torch.equal(fused[:, 16:24], pose)
    assert torch.equal(fused[:, 24:], noise)


def test_add_fusion_sums_projections() -> None:
    torch.manual_seed(0)
    net = small_generator(fuse_mode="add")
    assert net.W_reid.weight.shape == (16, 16) and net.W_pose.weight.shape == (16, 8)
    assert net.W_noise.weight.shape == (16, 4) and net.W_reid.bias is None
    reid, noise = torch.rand(2, 16, 1, 1), torch.randn(2, 4, 1, 1)
    pose, fused = _fusion_input(net, reid, noise)
    expected = (reid.flatten(1) @ net.W_reid.weight.T + pose.flatten(1) @ net.W_pose.weight.T
                + noise.flatten(1) @ net.W_noise.weight.T)
    torch.testing.assert_close(fused, expected.view(2, 16, 1, 1))


def test_instance_norm_generator_works_and_pose_feature_is_not_zero() -> None:
    torch.manual_seed(0)
    net = small_generator(norm_layer=get_norm_layer("instance"), connect_layers=2).train()
    assert isinstance(net.en_conv2[2], nn.InstanceNorm2d)
    assert isinstance(net.en_avg[2], nn.Identity)
    assert net.en_conv1.bias is not None and net.de_avg[1].bias is not None  # use_bias with instance norm
    pose, _ = _fusion_input(net, torch.rand(2, 16, 1, 1), torch.randn(2, 4, 1, 1))
    assert pose.shape == (2, 8, 1, 1)
    assert pose.abs().min().item() > 0
    # 32 x 32: the bottleneck maps are 1 x 1, so those norms are left out too.
    tiny = small_generator(norm_layer=get_norm_layer("instance"), height=32, width=32, connect_layers=5)
    assert isinstance(tiny.en_conv5[2], nn.Identity) and isinstance(tiny.de_avg[2], nn.Identity)
    assert tiny(torch.rand(2, 18, 32, 32), torch.rand(2, 16), torch.randn(2, 4)).shape == (2, 3, 32, 32)


def test_batch_norm_generator_has_no_conv_bias() -> None:
    net = small_generator(norm_layer=get_norm_layer("batch"))
    assert all(m.bias is None for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(height=250), "250x32.*multiples of 32"),
    (dict(width=48), "64x48.*multiples of 32"),
    (dict(connect_layers=6), "connect_layers.*0..5"),
    (dict(connect_layers=-1), "connect_layers.*0..5"),
    (dict(fuse_mode="mul"), "fuse_mode 'mul'.*cat, add"),
])
def test_generator_rejects_bad_options(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        small_generator(**kwargs)


def test_generator_rejects_posemap_of_other_size() -> None:
    net = small_generator()
    with pytest.raises(ConfigError, match="64 x 32"):
        net(torch.rand(2, 18, 128, 64), torch.rand(2, 16), torch.randn(2, 4))


# ------------------------------------------------------------------------------ init, schedule


def test_init_weights_statistics() -> None:
    torch.manual_seed(0)
    net = NLayerDiscriminator(21)
    first_bias = net.model[0].bias.detach().clone()
    assert init_weights(net) is net
    for i in (0, 2, 5, 8, 11):
        w = net.model[i].weight
        assert w.std().item() == pytest.approx(0.02, rel=0.1 if w.numel() > 10000 else 0.3)
    big = net.model[8].weight
    assert abs(big.mean().item()) < 1e-3
    for i in (3, 6, 9):
        bn = net.model[i]
        assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01)
        assert bn.weight.std().item() == pytest.approx(0.02, rel=0.3)
        assert torch.all(bn.bias == 0)
    assert torch.equal(net.model[0].bias, first_bias)  # conv biases keep their constructed values

    gen = init_weights(small_generator(fuse_mode="add", reid_feature_nc=256))
    assert gen.W_reid.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert gen.de_avg[1].weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_scheduler_factors_by_hand() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.3)
    sched = get_scheduler(opt, niter=3, niter_decay=2)
    # factor(e) = 1 - max(0, e + 2 - 3) / 3 for e = 0..4 (epochs 1..5): 1, 1, 2/3, 1/3, 0
    expected = [0.3, 0.3, 0.2, 0.1, 0.0, 0.0]
    seen = []
    for _ in expected:
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected, abs=1e-12)


def test_set_bn_fix_only_changes_modes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
                        nn.BatchNorm1d(5), nn.Dropout(0.5))
    net.train()
    assert set_bn_fix(net) is net
    assert not net[1].training and not net[4].training
    assert net[0].training and net[5].training
    before = (net[1].running_mean.clone(), net[4].running_var.clone())
    net(torch.randn(3, 3, 6, 6)).sum().backward()
    assert torch.equal(net[1].running_mean, before[0]) and torch.equal(net[4].running_var, before[1])
    assert net[1].weight.grad is not None and net[4].bias.grad is not None  # still trainable
    # ... and the caller can freeze them on top.
    net.zero_grad(set_to_none=True)
    for m in (net[1], net[4]):
        m.requires_grad_(False)
    net(torch.randn(3, 3, 6, 6)).sum().backward()
    assert net[1].weight.grad is None and net[0].weight.grad is not None


def test_scheduler_rejects_negative_epochs() -> None:
    with pytest.raises(ConfigError):
        get_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), -1, 5)


# ------------------------------------------------------------------------------------ GANLoss


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_gan_loss_hard_targets_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    xs = [2.0, -1.0, 0.5, 0.0]
    # BCE(sigmoid(x), 1) = softplus(-x); BCE(sigmoid(x), 0) = softplus(x)
    real = sum(_softplus(-x) for x in xs) / 4
    fake = sum(_softplus(x) for x in xs) / 4
    loss = GANLoss()
    assert loss(logits, True).item() == pytest.approx(real, rel=1e-6)
    assert loss(logits, False).item() == pytest.approx(fake, rel=1e-6)
    assert loss(logits, True, flip=True).item() == pytest.approx(fake, rel=1e-6)
    assert loss(logits, False, flip=True).item() == pytest.approx(real, rel=1e-6)


def _recover_target(loss: GANLoss, is_real: bool, flip: bool = False) -> float:
    # With every logit equal to 1: BCE = softplus(1) - t, so t = softplus(1) - loss.
    return _softplus(1.0) - loss(torch.ones(3, 2), is_real, flip=flip).item()


def test_gan_loss_smooth_targets_in_range() -> None:
    loss = GANLoss(smooth=True)
    torch.manual_seed(0)
    reals = [_recover_target(loss, True) for _ in range(200)]
    fakes = [_recover_target(loss, False) for _ in range(200)]
    assert 0.7 - 1e-5 <= min(reals) and max(reals) <= 1.0 + 1e-5 and max(reals) - min(reals) > 0.25
    assert -1e-5 <= min(fakes) and max(fakes) <= 0.3 + 1e-5 and max(fakes) - min(fakes) > 0.25
    flipped = [_recover_target(loss, True, flip=True) for _ in range(50)]
    assert max(flipped) <= 0.3 + 1e-5


def test_gan_loss_smooth_draws_one_scalar_from_torch_rng() -> None:
    loss = GANLoss(smooth=True)
    logits = torch.tensor([1.5, -0.5, 3.0])
    torch.manual_seed(7)
    value = loss(logits, True).item()
    torch.manual_seed(7)
    t = 0.7 + 0.3 * torch.rand(()).item()
    expected = sum(_softplus(x) - t * x for x in (1.5, -0.5, 3.0)) / 3  # BCE with logits, target t
    assert value == pytest.approx(expected, rel=1e-6)
    assert FLIP_PROBABILITY == pytest.approx(1 / 10001)


# -------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("form", ["plain", "state_dict", "module_prefix", "with_num_batches_tracked"])
def test_release_checkpoint_forms_load(tmp_path, form: str) -> None:
    torch.manual_seed(0)
    net = NLayerDiscriminator(21, norm_layer=get_norm_layer("batch"))
    state = OrderedDict((k, torch.randn(shape)) for k, shape in shapes_of(net).items())
    if form == "plain":
        obj = state
    elif form == "state_dict":
        obj = {"state_dict": state}
    elif form == "module_prefix":
        obj = OrderedDict(("module." + k, v) for k, v in state.items())
    else:
        obj = OrderedDict(state)
        for i in (3, 6, 9):
            obj[f"model.{i}.num_batches_tracked"] = torch.tensor(17)
    path = tmp_path / "10_net_Dp.pth"
    torch.save(obj, path)

    copy_state_dict(load_checkpoint(path), net)
    loaded = net.state_dict()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


def test_checkpoint_of_wrong_network_names_keys(tmp_path) -> None:
    path = tmp_path / "net_Dp.pth"
    torch.save(NLayerDiscriminator(21).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        copy_state_dict(load_checkpoint(path), small_generator())
    msg = str(err.value)
    assert "missing keys [en_conv1.weight" in msg and "unexpected keys [model.0.weight" in msg
    with pytest.raises(CheckpointError, match=r"missing keys \[model.2.bias"):
        copy_state_dict(load_checkpoint(path), NLayerDiscriminator(21, norm_layer=get_norm_layer("instance")))
