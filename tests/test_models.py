"""Tests of reid.models: backbones, pair head, Siamese wrapper, release checkpoint compatibility."""
from __future__ import annotations

import math
import os
import urllib.error
from collections import OrderedDict

import pytest
import torch
import torchvision

from helpers import assert_matches_release_keys, shapes_of
from reid import models
from reid.errors import CheckpointError, ConfigError
from reid.models import EltwiseSubEmbed, SiameseNet
from reid.models.resnet import ResNet
from reid.utils.serialization import copy_state_dict, load_checkpoint

# Count and sha256 of the sorted "key [shape]" lines of each network, checked beside the full
# key/shape lists of tests/data/state_dict_keys.json.
CONTRACT = {
    "net_E": (273, "1265a96a45956798a2f0c65f608a06be09aa237b059331473677bc1362c43554"),
    "net_Di": (273, "351e707f8b1b226cef429c4ea9f99e989a2efc77d6256f2876fb181a201dfa60"),
}


def build_siamese(num_classes: int, arch: str = "resnet50") -> SiameseNet:
    base = models.create(arch, pretrained=False, cut_at_pooling=True)
    return SiameseNet(base, EltwiseSubEmbed("square", True, True, base.num_features, num_classes))


# ------------------------------------------------------------------------------------ factory


def test_names_lists_the_five_depths() -> None:
    assert models.names() == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(ConfigError) as err:
        models.create("resnet99", pretrained=False)
    msg = str(err.value)
    assert "resnet99" in msg and "resnet50" in msg and "resnet152" in msg and "\n" not in msg
    with pytest.raises(ConfigError):
        ResNet(42, pretrained=False)


@pytest.mark.parametrize("arch,size", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                                       ("resnet101", 2048), ("resnet152", 2048)])
def test_pooled_feature_size(arch: str, size: int) -> None:
    with torch.device("meta"):
        net = models.create(arch, pretrained=False, cut_at_pooling=True)
    assert net.num_features == net.out_features == net.pooled_features == size
    assert net.base.fc.weight.shape == (1000, size)


# -------------------------------------------------------------------------- release key names


def test_net_E_keys_and_shapes_match_release() -> None:
    with torch.device("meta"):
        net_e = build_siamese(2)
    assert_matches_release_keys("net_E", net_e, CONTRACT)


def test_net_Di_keys_and_shapes_match_release() -> None:
    with torch.device("meta"):
        net_di = build_siamese(1)
    assert_matches_release_keys("net_Di", net_di, CONTRACT)


# -------------------------------------------------------------------------------- ResNet forward


def test_forward_is_children_then_global_mean() -> None:
    torch.manual_seed(0)
    net = models.create("resnet18", pretrained=False, cut_at_pooling=True).eval()
    x = torch.randn(2, 3, 70, 45)  # not a multiple of 32: pooling covers whatever map remains
    b = net.base
    with torch.no_grad():
        y = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        y = b.layer4(b.layer3(b.layer2(b.layer1(y))))
        assert y.shape == (2, 512, 3, 2)
        expected = y.sum(dim=(2, 3)) / 6.0
        out = net(x)
    assert out.shape == (2, 512)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_random_initialisation() -> None:
    torch.manual_seed(0)
    net = models.create("resnet18", pretrained=False)
    b = net.base
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * kh * kw)).
    for w in (b.conv1.weight, b.layer4[0].conv2.weight, b.layer3[1].conv1.weight):
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        assert w.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
        assert abs(w.mean().item()) < 0.1 * math.sqrt(2.0 / fan_out)
    for bn in (b.bn1, b.layer2[0].bn2, b.layer4[1].bn2):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert b.fc.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.all(b.fc.bias == 0)


def test_non_cut_variant_embedding_norm_and_classifier() -> None:
    torch.manual_seed(0)
    net = ResNet(18, pretrained=False, num_features=16, norm=True).eval()
    assert net.num_features == net.out_features == 16 and net.pooled_features == 512
    with torch.no_grad():
        for p in (net.feat_bn.running_mean, net.feat_bn.running_var, net.feat_bn.weight, net.feat_bn.bias):
            p.copy_(torch.rand(16) + 0.5)
        x = torch.randn(3, 3, 64, 32)
        pooled = net.base.layer4(net.base.layer3(net.base.layer2(net.base.layer1(
            net.base.maxpool(net.base.relu(net.base.bn1(net.base.conv1(x)))))))).mean(dim=(2, 3))
        z = pooled @ net.feat.weight.T + net.feat.bias
        bn = net.feat_bn
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        expected = z / z.norm(dim=1, keepdim=True)
        out = net(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(out.norm(dim=1), torch.ones(3))

    clf = ResNet(18, pretrained=False, num_classes=5, dropout=0.5).eval()
    assert clf.out_features == 5 and clf.num_features == 512
    assert clf(torch.randn(2, 3, 64, 32)).shape == (2, 5)
    assert clf.classifier.weight.std().item() == pytest.approx(0.001, rel=0.15)

    cut = ResNet(18, pretrained=False, cut_at_pooling=True, num_features=16, num_classes=5)
    assert all(k.startswith("base.") for k in cut.state_dict())


# ---------------------------------------------------------------------------- ImageNet weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch home, and a download that fails at once as it would offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path


def test_pretrained_loads_cached_torchvision_file(torch_home) -> None:
    torch.manual_seed(1)
    fake = torchvision.models.resnet18(weights=None).state_dict()
    for v in fake.values():
        if v.is_floating_point():
            v.normal_()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(fake, folder / "resnet18-f37072fd.pth")  # torchvision's IMAGENET1K_V1 file name

    net = models.create("resnet18", pretrained=True, cut_at_pooling=True)
    loaded = net.base.state_dict()
    assert loaded.keys() == fake.keys()
    for k, v in fake.items():
        assert torch.equal(loaded[k], v), k


def test_pretrained_unavailable_says_which_file_to_put_where(torch_home) -> None:
    with pytest.raises(ConfigError) as err:
        models.create("resnet50", pretrained=True, cut_at_pooling=True)
    msg = str(err.value)
    assert "resnet50-0676ba61.pth" in msg
    assert os.path.join(str(torch_home), "hub", "checkpoints") in msg
    assert "--no-pretrained" in msg and "\n" not in msg


def test_pretrained_corrupt_cached_file(torch_home) -> None:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="resnet18-f37072fd.pth.*cannot be read"):
        models.create("resnet18", pretrained=True)


# ------------------------------------------------------------------------------ EltwiseSubEmbed


def test_eltwise_sub_embed_square_bn_classifier_by_hand() -> None:
    head = EltwiseSubEmbed("square", use_batch_norm=True, use_classifier=True, num_features=3, num_classes=2)
    with torch.no_grad():
        head.bn.running_mean.copy_(torch.tensor([1.0, 0.0, 2.0]))
        head.bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
        head.bn.weight.copy_(torch.tensor([2.0, 1.0, 1.0]))
        head.bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        head.classifier.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.0]]))
        head.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
    head.bn.eps = 0.0
    head.eval()
    x1 = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    x2 = torch.tensor([[3.0, 1.0, 3.0], [1.0, 0.0, 2.0]])
    # squared differences: [4, 1, 0] and [1, 0, 4]
    # BN (x - mean) / sqrt(var) * w + b: [(4-1)/2*2, (1-0)/1+1, (0-2)/0.5-1] = [3, 2, -5]
    #                                    [(1-1)/2*2, (0-0)/1+1, (4-2)/0.5-1] = [0, 1, 3]
    # classifier: row0 = 3 + 2*(-5) + 0.5 = -6.5, row1 = -3 + 2 - 0.5 = -1.5
    #             row0 = 0 + 2*3 + 0.5 = 6.5,     row1 = 0 + 1 - 0.5 = 0.5
    out = head(x1, x2)
    torch.testing.assert_close(out, torch.tensor([[-6.5, -1.5], [6.5, 0.5]]))


def test_eltwise_sub_embed_sum_without_classifier() -> None:
    x1 = torch.tensor([[1.0, 2.0, 3.0]])
    x2 = torch.tensor([[3.0, 1.0, 3.0]])
    torch.testing.assert_close(EltwiseSubEmbed("square")(x1, x2), torch.tensor([5.0]))
    torch.testing.assert_close(EltwiseSubEmbed("abs")(x1, x2), torch.tensor([3.0]))


def test_eltwise_sub_embed_initialisation_and_errors() -> None:
    torch.manual_seed(0)
    head = EltwiseSubEmbed("square", True, True, num_features=512, num_classes=2)
    assert torch.all(head.bn.weight == 1) and torch.all(head.bn.bias == 0)
    assert head.classifier.weight.shape == (2, 512)
    assert head.classifier.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert torch.all(head.classifier.bias == 0)
    with pytest.raises(ConfigError, match="nonlinearity 'cube'.*square, abs"):
        EltwiseSubEmbed("cube")
    with pytest.raises(ConfigError, match="num_features"):
        EltwiseSubEmbed("square", use_batch_norm=True)
    with pytest.raises(ConfigError, match="num_classes"):
        EltwiseSubEmbed("square", use_classifier=True, num_features=8)


def test_siamese_net_with_resnet18_features() -> None:
    torch.manual_seed(0)
    net = build_siamese(2, arch="resnet18").eval()
    assert net.embed_model.bn.num_features == 512
    x1, x2 = torch.randn(2, 3, 64, 32), torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        f1, f2, logits = net(x1, x2)
        torch.testing.assert_close(f1, net.base_model(x1))
        torch.testing.assert_close(f2, net.base_model(x2))
        d = (f1 - f2) ** 2
        bn = net.embed_model.bn
        d = (d - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        expected = d @ net.embed_model.classifier.weight.T + net.embed_model.classifier.bias
    assert f1.shape == (2, 512) and logits.shape == (2, 2)
    torch.testing.assert_close(logits, expected)


# --------------------------------------------------------------------------------- checkpoints


@pytest.mark.slow
def test_stage1_checkpoint_loads_and_wrong_head_is_reported(tmp_path) -> None:
    """baseline.py's form: {'state_dict': ...} with 'module.' keys, no num_batches_tracked."""
    torch.manual_seed(0)
    net_e = build_siamese(2)
    state = OrderedDict((k, torch.randn(shape)) for k, shape in shapes_of(net_e).items())
    path = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in state.items())}, path)

    copy_state_dict(load_checkpoint(path), net_e)
    loaded = net_e.state_dict()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k

    net_di = build_siamese(1)
    with pytest.raises(CheckpointError) as err:
        copy_state_dict(load_checkpoint(path), net_di)
    assert "embed_model.classifier.weight (2, 2048) vs (1, 2048)" in str(err.value)
