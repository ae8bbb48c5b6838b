"""One FDGANModel step on a tiny batch: initialisation, frozen parts, losses, learning rates."""
import copy

import pytest
import torch

from fdgan.model import FDGANModel
from reid.errors import ConfigError
from reid.models import build_siamese
from reid.utils.serialization import save_checkpoint

H, W = 64, 32
TINY = dict(arch="resnet18", height=H, width=W, pose_feature_size=8, noise_feature_size=8, lr=0.01,
            pretrained=False)


def _batch(pids1, pids2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def half(pids):
        n = len(pids)
        return {"origin": torch.randn(n, 3, H, W, generator=g), "target": torch.randn(n, 3, H, W, generator=g),
                "posemap": torch.rand(n, 18, H, W, generator=g), "pid": torch.tensor(pids)}
    return [half(pids1), half(pids2)]


@pytest.fixture(scope="module")
def stage1_file(tmp_path_factory):
    torch.manual_seed(0)
    net = build_siamese("resnet18", pretrained=False, num_classes=2)
    with torch.no_grad():
        net.embed_model.classifier.weight.normal_()
        net.embed_model.classifier.bias.copy_(torch.tensor([0.3, -0.7]))
    path = tmp_path_factory.mktemp("stage1") / "model_best.pth.tar"
    save_checkpoint({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path, net


def _bn_stats(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def _iteration_by_updates(model, pids1, pids2):
    """One iteration, update by update: {optimiser name: the gradients it stepped with, flattened}."""
    model.train_mode()
    torch.manual_seed(10)
    model.set_input(_batch(pids1, pids2))
    model.forward()
    grads = {}
    for name, backward in (("Di", model.backward_Di), ("Dp", model.backward_Dp), ("G", model.backward_G)):
        opt = model.optimizers[name]
        opt.zero_grad(set_to_none=True)
        backward()
        grads[name] = torch.cat([p.grad.flatten() for group in opt.param_groups for p in group["params"]
                                 if p.grad is not None])
        opt.step()
    return grads


@pytest.mark.slow
def test_stage1_initialisation_and_frozen_parts(stage1_file):
    path, e_ref = stage1_file
    torch.manual_seed(1)
    model = FDGANModel(stage=1, netE_pretrain=str(path), **TINY)
    w = e_ref.embed_model.classifier.weight
    assert torch.equal(model.net_Di.embed_model.classifier.weight, w[1:2])
    assert torch.equal(model.net_Di.embed_model.classifier.bias, torch.tensor([-0.7]))
    assert torch.equal(model.net_Di.base_model.base.conv1.weight, e_ref.base_model.base.conv1.weight)
    e_before = copy.deepcopy(model.net_E.state_dict())
    di_bn, e_bn = _bn_stats(model.net_Di), _bn_stats(model.net_E)
    di_w = model.net_Di.base_model.base.conv1.weight.clone()
    g_w = model.net_G.en_conv1.weight.clone()
    model.train_mode()
    model.set_input(_batch([1, 2, 3], [1, 5, 6]))
    model.optimize_parameters()
    for k, v in model.net_E.state_dict().items():
        assert torch.equal(v, e_before[k]), k
    for k, v in _bn_stats(model.net_Di).items():
        assert torch.equal(v, di_bn[k]), k
    for k, v in _bn_stats(model.net_E).items():
        assert torch.equal(v, e_bn[k]), k
    assert not torch.equal(model.net_Di.base_model.base.conv1.weight, di_w)  # Di itself is trained
    assert not torch.equal(model.net_G.en_conv1.weight, g_w)
    errors = model.get_current_errors()
    assert list(errors) == ["G_v", "G_r", "G_sp", "G_gan_Di", "G_gan_Dp", "D_i", "D_p"]
    assert all(torch.isfinite(torch.tensor(v)) for v in errors.values())
    # The only positive pair (pid 1) was asked for one pose: its second target is the first's.
    assert torch.equal(model.target[3], model.target[0]) and torch.equal(model.posemap[3], model.posemap[0])
    assert torch.equal(model.noise[:3], model.noise[3:])
    assert errors["G_sp"] > 0


@pytest.mark.slow
def test_same_pose_loss_is_zero_without_positive_pairs(stage1_file):
    path, _ = stage1_file
    model = FDGANModel(stage=1, netE_pretrain=str(path), **TINY)
    model.train_mode()
    model.set_input(_batch([1, 2], [3, 4]))
    model.optimize_parameters()
    assert model.get_current_errors()["G_sp"] == 0.0


@pytest.mark.slow
def test_learning_rates_of_each_stage(stage1_file, tmp_path):
    path, _ = stage1_file
    m1 = FDGANModel(stage=1, netE_pretrain=str(path), **TINY)
    lrs = {k: [g["lr"] for g in o.param_groups] for k, o in m1.optimizers.items()}
    assert lrs == {"G": [pytest.approx(0.001)], "Di": [pytest.approx(0.0001)], "Dp": [pytest.approx(0.01)]}
    assert m1.optimizers["G"].defaults["betas"] == (0.5, 0.999)
    assert m1.optimizers["Di"].defaults["momentum"] == 0.9 and m1.optimizers["Di"].defaults["weight_decay"] == 1e-4
    m1.save(str(tmp_path), 3)
    files = {n: str(tmp_path / f"3_net_{n}.pth") for n in ("E", "G", "Di", "Dp")}
    m2 = FDGANModel(stage=2, netE_pretrain=files["E"], netG_pretrain=files["G"], netDi_pretrain=files["Di"],
                    netDp_pretrain=files["Dp"], **TINY)
    lrs = {k: [g["lr"] for g in o.param_groups] for k, o in m2.optimizers.items()}
    assert lrs == {"G": [pytest.approx(0.001)] * 3, "Di": [pytest.approx(0.01)], "Dp": [pytest.approx(0.01)]}
    m3 = FDGANModel(stage=2, netE_pretrain=files["E"], netG_pretrain=files["G"], netDi_pretrain=files["Di"],
                    netDp_pretrain=files["Dp"], apply_lr_mult=True, **TINY)
    assert [g["lr"] for g in m3.optimizers["G"].param_groups] == [pytest.approx(x) for x in (0.001, 0.01, 0.001)]
    for n in ("E", "G", "Di", "Dp"):
        for k, v in m1.net(n).state_dict().items():
            assert torch.equal(v, m2.net(n).state_dict()[k]), (n, k)
    # Stage 2 trains E but keeps its BatchNorm statistics.
    e_bn = _bn_stats(m2.net_E)
    e_w = m2.net_E.base_model.base.conv1.weight.clone()
    m2.train_mode()
    m2.set_input(_batch([1, 2], [1, 4]))
    m2.optimize_parameters()
    assert not torch.equal(m2.net_E.base_model.base.conv1.weight, e_w)
    for k, v in _bn_stats(m2.net_E).items():
        assert torch.equal(v, e_bn[k]), k


@pytest.mark.parametrize("share,skip", [(True, False), (False, True), (True, True)])
@pytest.mark.slow
def test_faster_update_gives_the_release_losses_and_gradients(stage1_file, share, skip):
    """Sharing Di's origin pass and skipping Di/Dp weight gradients in G's step change no number."""
    path, _ = stage1_file
    results = []
    for flags in (dict(share_di_features=False, skip_unused_grads=False),
                  dict(share_di_features=share, skip_unused_grads=skip)):
        torch.manual_seed(5)
        model = FDGANModel(stage=1, netE_pretrain=str(path), **flags, **TINY)
        grads = _iteration_by_updates(model, [1, 2, 3], [1, 5, 3])
        e_grads = [p.grad for p in model.net_E.parameters() if p.grad is not None]
        grads["E"] = torch.cat([g.flatten() for g in e_grads]) if e_grads else None
        # What G's step left in the discriminators' gradients (their own update's, plus G's in the release).
        for name in ("Di", "Dp"):
            grads[name + " after G"] = torch.cat([p.grad.flatten() for p in model.net(name).parameters()
                                                  if p.grad is not None])
        assert all(p.requires_grad for n in ("Di", "Dp") for p in model.net(n).parameters())
        results.append((model.get_current_errors(), grads))
    (a, ga), (b, gb) = results
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    for name in ("Di", "Dp", "G"):
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-6 * ga[name].abs().max().item()), name
    for name in ("Di", "Dp"):
        own = gb[name]
        if skip:  # G's step added nothing
            assert torch.equal(gb[name + " after G"], own), name
        else:  # the release's G step accumulates into them
            after = gb[name + " after G"]
            assert after.shape != own.shape or not torch.allclose(after, own), name
    # The frozen E: the release back-propagates G's loss through it (every parameter gets a
    # gradient but the unused ImageNet classifier's, never used); skipping unused gradients leaves
    # it out of the graph.
    e_params = FDGANModel(stage=1, netE_pretrain=str(path), **TINY).net_E.named_parameters()
    n_e = sum(p.numel() for k, p in e_params if ".fc." not in k)
    assert ga["E"] is not None and ga["E"].numel() == n_e and ga["E"].abs().max() > 0
    assert (gb["E"] is None) == skip


@pytest.mark.slow
def test_stage2_faster_update_gives_the_release_losses_gradients_and_weights(stage1_file, tmp_path):
    """Stage III trains E too: its gradients, and every network after one iteration, are the release's."""
    path, _ = stage1_file
    torch.manual_seed(5)
    FDGANModel(stage=1, netE_pretrain=str(path), **TINY).save(str(tmp_path), 1)
    files = {f"net{n}_pretrain": str(tmp_path / f"1_net_{n}.pth") for n in ("E", "G", "Di", "Dp")}
    results = []
    for flags in (dict(share_di_features=False, skip_unused_grads=False, fused_optimizers=False), {}):
        model = FDGANModel(stage=2, **files, **flags, **TINY)
        grads = _iteration_by_updates(model, [1, 2, 3], [1, 5, 3])
        grads["E"] = torch.cat([p.grad.flatten() for p in model.net_E.parameters() if p.grad is not None])
        results.append((model.get_current_errors(), grads, model))
    (a, ga, release), (b, gb, ours) = results
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    assert ga["E"].numel() == gb["E"].numel() > 0 and ga["E"].abs().max() > 0
    for name in ("Di", "Dp", "G", "E"):
        assert ga[name].shape == gb[name].shape, name
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-6 * ga[name].abs().max().item()), name
    for n in ("E", "G", "Di", "Dp"):
        for k, v in release.net(n).state_dict().items():
            w = ours.net(n).state_dict()[k]
            assert torch.allclose(v.float(), w.float(), rtol=1e-5, atol=1e-6), (n, k)
    # E's weights moved (it is trained in this stage), by the same step in both.
    before = torch.load(files["netE_pretrain"], weights_only=True)
    conv1 = "module.base_model.base.conv1.weight"
    assert not torch.equal(before[conv1], ours.net_E.base_model.base.conv1.weight)


@pytest.mark.slow
def test_stage1_never_changes_or_keeps_gradients_of_the_frozen_encoder(stage1_file):
    path, _ = stage1_file
    for skip in (False, True):
        torch.manual_seed(5)
        model = FDGANModel(stage=1, netE_pretrain=str(path), skip_unused_grads=skip, **TINY)
        model.train_mode()
        before = {k: v.clone() for k, v in model.net_E.state_dict().items()}
        for pids in (([1, 2, 3], [1, 5, 3]), ([4, 2], [4, 2])):
            model.set_input(_batch(*pids))
            model.optimize_parameters()
            assert all(p.grad is None for p in model.net_E.parameters()), skip
        for k, v in model.net_E.state_dict().items():
            assert torch.equal(v, before[k]), (skip, k)


@pytest.mark.slow
def test_optimisers_use_fused_kernels_and_keep_them_when_resuming_a_loop_run(stage1_file):
    path, _ = stage1_file
    torch.manual_seed(5)
    loop = FDGANModel(stage=1, netE_pretrain=str(path), fused_optimizers=False, **TINY)
    loop.train_mode()
    loop.set_input(_batch([1, 2, 3], [1, 5, 3]))
    loop.optimize_parameters()
    fused = FDGANModel(stage=1, netE_pretrain=str(path), **TINY)
    assert {n: [g["fused"] for g in o.param_groups] for n, o in loop.optimizers.items()} == \
        {"G": [None], "Di": [None], "Dp": [None]}
    fused.load_state_dict(loop.state_dict())
    assert {n: [g["fused"] for g in o.param_groups] for n, o in fused.optimizers.items()} == \
        {"G": [True], "Di": [True], "Dp": [True]}
    for name in ("G", "Dp"):
        saved, loaded = loop.optimizers[name], fused.optimizers[name]
        for p_saved, p_loaded in zip(saved.param_groups[0]["params"], loaded.param_groups[0]["params"]):
            for k, v in saved.state[p_saved].items():
                assert torch.equal(loaded.state[p_loaded][k], v), (name, k)


def test_missing_pretrain_files_are_reported_up_front(tmp_path):
    with pytest.raises(ConfigError, match="--netE-pretrain"):
        FDGANModel(stage=1, arch="resnet18", height=H, width=W)
    with pytest.raises(ConfigError, match="--netG-pretrain, --netDi-pretrain, --netDp-pretrain"):
        FDGANModel(stage=2, netE_pretrain=str(tmp_path / "x.pth"), arch="resnet18", height=H, width=W)
    with pytest.raises(ConfigError, match="file not found"):
        FDGANModel(stage=1, netE_pretrain=str(tmp_path / "missing.pth"), **TINY)
