"""One FDGANModel step on a tiny batch: initialisation, frozen parts, losses, learning rates."""
import copy

import pytest
import torch

from fdgan.model import LOSS_NAMES, FDGANModel, GANConfig
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


def _iteration_by_updates(model, pids1, pids2, step=None):
    """One iteration of ``step`` (``model``'s own, or a :class:`_ReleasePasses` on it), update by
    update: {optimiser name: the gradients it stepped with, flattened}."""
    step = model if step is None else step
    model.train_mode()
    torch.manual_seed(10)
    model.set_input(_batch(pids1, pids2))
    step.forward()
    grads = {}
    for name, backward in (("Di", step.backward_Di), ("Dp", step.backward_Dp), ("G", step.backward_G)):
        opt = model.optimizers[name]
        opt.zero_grad(set_to_none=True)
        backward()
        grads[name] = torch.cat([p.grad.flatten() for group in opt.param_groups for p in group["params"]
                                 if p.grad is not None])
        opt.step()
    return grads


class _ReleasePasses:
    """The release's passes (its fdgan/model.py, ``FDGANModel.forward`` and ``backward_*``) on
    ``model``'s networks, inputs, losses and optimisers: Di's whole Siamese network runs on
    (origin, target), (origin, fake) and again on (origin, fake) in G's step, whose loss is
    back-propagated through Di, Dp and E (frozen in Stage II: the release computes its gradients and
    never uses them). Hard discriminator targets (no ``smooth_label``), no autocast."""

    def __init__(self, model):
        self.model = model
        self.losses = {}
        model.net_E.requires_grad_(True)

    def forward(self):
        m, b = self.model, self.model.batch_pairs
        f1, f2, self.id_score = m.net_E(m.origin[:b], m.origin[b:])
        self.fake = m.net_G(m.posemap, torch.cat([f1, f2]).view(2 * b, -1, 1, 1), m.noise)

    def backward_Di(self):
        m = self.model
        loss = 0.5 * (m.criterion_gan_d(m.net_Di(m.origin, m.target)[2], True)
                      + m.criterion_gan_d(m.net_Di(m.origin, self.fake.detach())[2], False))
        loss.backward()
        self.losses["D_i"] = loss.item()

    def backward_Dp(self):
        m = self.model
        loss = 0.5 * (m.criterion_gan_d(m.net_Dp(torch.cat([m.posemap, m.target], 1)), True)
                      + m.criterion_gan_d(m.net_Dp(torch.cat([m.posemap, self.fake.detach()], 1)), False))
        loss.backward()
        self.losses["D_p"] = loss.item()

    def backward_G(self):
        m, b, c = self.model, self.model.batch_pairs, self.model.config
        loss_gan_di = m.criterion_gan_g(m.net_Di(m.origin, self.fake)[2], True)
        loss_gan_dp = m.criterion_gan_g(m.net_Dp(torch.cat([m.posemap, self.fake], 1)), True)
        loss_r = torch.nn.functional.l1_loss(self.fake, m.target)
        loss_v = torch.nn.functional.cross_entropy(self.id_score, m.label)
        pos = m.label.bool()
        loss_sp = torch.nn.functional.l1_loss(self.fake[:b][pos], self.fake[b:][pos])
        loss = loss_gan_di + loss_gan_dp + c.lambda_recon * loss_r + c.lambda_veri * loss_v + c.lambda_sp * loss_sp
        loss.backward()
        self.losses.update(G_v=loss_v.item(), G_r=loss_r.item(), G_sp=loss_sp.item(),
                           G_gan_Di=loss_gan_di.item(), G_gan_Dp=loss_gan_dp.item())

    def get_current_errors(self):
        return {k: self.losses[k] for k in LOSS_NAMES}


def _without_fused_kernels(model):
    """Replace ``model``'s optimisers by the same ones looping over the parameters, as the release's."""
    for name, opt in model.optimizers.items():
        groups = [{k: v for k, v in g.items() if k != "fused"} for g in opt.param_groups]
        model.optimizers[name] = type(opt)(groups, **{k: v for k, v in opt.defaults.items() if k != "fused"})


@pytest.mark.slow
def test_stage1_initialisation_and_frozen_parts(stage1_file):
    path, e_ref = stage1_file
    torch.manual_seed(1)
    model = FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY))
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
    model = FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY))
    model.train_mode()
    model.set_input(_batch([1, 2], [3, 4]))
    model.optimize_parameters()
    assert model.get_current_errors()["G_sp"] == 0.0


@pytest.mark.slow
def test_learning_rates_of_each_stage(stage1_file, tmp_path):
    path, _ = stage1_file
    m1 = FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY))
    lrs = {k: [g["lr"] for g in o.param_groups] for k, o in m1.optimizers.items()}
    assert lrs == {"G": [pytest.approx(0.001)], "Di": [pytest.approx(0.0001)], "Dp": [pytest.approx(0.01)]}
    assert m1.optimizers["G"].defaults["betas"] == (0.5, 0.999)
    assert m1.optimizers["Di"].defaults["momentum"] == 0.9 and m1.optimizers["Di"].defaults["weight_decay"] == 1e-4
    m1.save(str(tmp_path), 3)
    files = {n: str(tmp_path / f"3_net_{n}.pth") for n in ("E", "G", "Di", "Dp")}
    m2 = FDGANModel(GANConfig(stage=2, netE_pretrain=files["E"], netG_pretrain=files["G"],
                              netDi_pretrain=files["Di"], netDp_pretrain=files["Dp"], **TINY))
    lrs = {k: [g["lr"] for g in o.param_groups] for k, o in m2.optimizers.items()}
    assert lrs == {"G": [pytest.approx(0.001)] * 3, "Di": [pytest.approx(0.01)], "Dp": [pytest.approx(0.01)]}
    m3 = FDGANModel(GANConfig(stage=2, netE_pretrain=files["E"], netG_pretrain=files["G"],
                              netDi_pretrain=files["Di"], netDp_pretrain=files["Dp"], apply_lr_mult=True, **TINY))
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


@pytest.mark.slow
def test_our_update_gives_the_release_losses_and_gradients(stage1_file):
    """Sharing Di's origin pass and skipping unused weight gradients in G's step change no number."""
    path, _ = stage1_file
    results = []
    for release in (True, False):
        torch.manual_seed(5)
        model = FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY))
        step = _ReleasePasses(model) if release else model
        grads = _iteration_by_updates(model, [1, 2, 3], [1, 5, 3], step)
        e_grads = [p.grad for p in model.net_E.parameters() if p.grad is not None]
        grads["E"] = torch.cat([g.flatten() for g in e_grads]) if e_grads else None
        # What G's step left in the discriminators' gradients (their own update's, plus G's in the release).
        for name in ("Di", "Dp"):
            grads[name + " after G"] = torch.cat([p.grad.flatten() for p in model.net(name).parameters()
                                                  if p.grad is not None])
        assert all(p.requires_grad for n in ("Di", "Dp") for p in model.net(n).parameters())
        results.append((step.get_current_errors(), grads))
    (a, ga), (b, gb) = results
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    for name in ("Di", "Dp", "G"):
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-6 * ga[name].abs().max().item()), name
    for name in ("Di", "Dp"):
        # Ours: G's step added nothing; the release's G step accumulates into them.
        assert torch.equal(gb[name + " after G"], gb[name]), name
        after = ga[name + " after G"]
        assert after.shape != ga[name].shape or not torch.allclose(after, ga[name]), name
    # The frozen E: the release back-propagates G's loss through it (every parameter gets a
    # gradient but the unused ImageNet classifier's, never used); ours leaves it out of the graph.
    e_params = FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY)).net_E.named_parameters()
    n_e = sum(p.numel() for k, p in e_params if ".fc." not in k)
    assert ga["E"] is not None and ga["E"].numel() == n_e and ga["E"].abs().max() > 0
    assert gb["E"] is None


@pytest.mark.slow
def test_stage2_our_update_gives_the_release_losses_gradients_and_weights(stage1_file, tmp_path):
    """Stage III trains E too: its gradients, and every network after one iteration, are the release's."""
    path, _ = stage1_file
    torch.manual_seed(5)
    FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY)).save(str(tmp_path), 1)
    files = {f"net{n}_pretrain": str(tmp_path / f"1_net_{n}.pth") for n in ("E", "G", "Di", "Dp")}
    results = []
    for release in (True, False):
        model = FDGANModel(GANConfig(stage=2, **files, **TINY))
        step = model
        if release:
            _without_fused_kernels(model)
            step = _ReleasePasses(model)
        grads = _iteration_by_updates(model, [1, 2, 3], [1, 5, 3], step)
        grads["E"] = torch.cat([p.grad.flatten() for p in model.net_E.parameters() if p.grad is not None])
        results.append((step.get_current_errors(), grads, model))
    (a, ga, release), (b, gb, ours) = results
    assert all(g["fused"] is None for o in release.optimizers.values() for g in o.param_groups)
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
    torch.manual_seed(5)
    model = FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY))
    model.train_mode()
    before = {k: v.clone() for k, v in model.net_E.state_dict().items()}
    for pids in (([1, 2, 3], [1, 5, 3]), ([4, 2], [4, 2])):
        model.set_input(_batch(*pids))
        model.optimize_parameters()
        assert all(p.grad is None for p in model.net_E.parameters())
    for k, v in model.net_E.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_optimisers_use_fused_kernels_and_keep_them_when_resuming_a_loop_run(stage1_file):
    path, _ = stage1_file
    torch.manual_seed(5)
    loop = FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY))
    _without_fused_kernels(loop)
    loop.train_mode()
    loop.set_input(_batch([1, 2, 3], [1, 5, 3]))
    loop.optimize_parameters()
    fused = FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY))
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
        FDGANModel(GANConfig(stage=1, arch="resnet18", height=H, width=W))
    with pytest.raises(ConfigError, match="--netG-pretrain, --netDi-pretrain, --netDp-pretrain"):
        FDGANModel(GANConfig(stage=2, netE_pretrain=str(tmp_path / "x.pth"), arch="resnet18", height=H, width=W))
    with pytest.raises(ConfigError, match="file not found"):
        FDGANModel(GANConfig(stage=1, netE_pretrain=str(tmp_path / "missing.pth"), **TINY))


# ---------------------------------------------------------------- the release's step, re-stated
def _release_bce(logits, real):
    """PyTorch 0.3's BCE of sigmoid(logits) against a hard target, mean over elements."""
    x = torch.sigmoid(logits)
    t = 1.0 if real else 0.0
    return -(t * torch.log(x + 1e-12) + (1 - t) * torch.log(1 - x + 1e-12)).mean()


class _ReleaseOptim:
    """PyTorch 0.3's SGD (momentum, weight decay) or Adam (eps outside the bias correction), by hand."""

    def __init__(self, params, lr, adam):
        self.params, self.lr, self.adam, self.state = list(params), lr, adam, {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, factor):
        lr = self.lr * factor
        for p in self.params:
            if p.grad is None:
                continue
            g, s = p.grad, self.state.setdefault(p, {})
            if self.adam:
                s["t"] = s.get("t", 0) + 1
                s["m"] = 0.5 * s.get("m", torch.zeros_like(p)) + 0.5 * g
                s["v"] = 0.999 * s.get("v", torch.zeros_like(p)) + 0.001 * g * g
                step = lr * (1 - 0.999 ** s["t"]) ** 0.5 / (1 - 0.5 ** s["t"])
                p.sub_(step * s["m"] / (s["v"].sqrt() + 1e-8))
            else:
                d = g + 1e-4 * p
                s["buf"] = d.clone() if "buf" not in s else 0.9 * s["buf"] + d
                p.sub_(lr * s["buf"])


def _release_modes(nets, stage):
    for name in ("G", "Dp", "Di", "E"):
        nets[name].train()
    for name in ("Di",) + (("E",) if stage == 2 else ()):
        for m in nets[name].modules():
            if "BatchNorm" in type(m).__name__:  # the release's set_bn_fix test
                m.eval()
    if stage == 1:
        nets["E"].eval()


def _release_iteration(nets, opts, inputs, factor):
    """The release's FDGANModel.optimize_parameters, written from the spec (section 5)."""
    origin, target, posemap, noise, label = inputs
    b = label.numel()
    f1, f2, id_score = nets["E"](origin[:b], origin[b:])
    fake = nets["G"](posemap, torch.cat([f1, f2]).view(2 * b, -1, 1, 1), noise)
    opts["Di"].zero_grad()
    loss_di = 0.5 * (_release_bce(nets["Di"](origin, target)[2], True)
                     + _release_bce(nets["Di"](origin, fake.detach())[2], False))
    loss_di.backward()
    opts["Di"].step(factor)
    opts["Dp"].zero_grad()
    loss_dp = 0.5 * (_release_bce(nets["Dp"](torch.cat([posemap, target], 1)), True)
                     + _release_bce(nets["Dp"](torch.cat([posemap, fake.detach()], 1)), False))
    loss_dp.backward()
    opts["Dp"].step(factor)
    opts["G"].zero_grad()
    pos = label.bool()
    loss_gan_di = _release_bce(nets["Di"](origin, fake)[2], True)
    loss_gan_dp = _release_bce(nets["Dp"](torch.cat([posemap, fake], 1)), True)
    loss_r = (fake - target).abs().mean()
    loss_v = torch.nn.functional.cross_entropy(id_score, label)
    loss_sp = (fake[:b][pos] - fake[b:][pos]).abs().mean()
    loss = loss_gan_di + loss_gan_dp + 2.0 * loss_r + 0.5 * loss_v + 3.0 * loss_sp
    loss.backward()
    opts["G"].step(factor)
    return {"G_v": loss_v.item(), "G_r": loss_r.item(), "G_sp": loss_sp.item(), "G_gan_Di": loss_gan_di.item(),
            "G_gan_Dp": loss_gan_dp.item(), "D_i": loss_di.item(), "D_p": loss_dp.item()}


@pytest.fixture
def float64_default():
    """Float64 everywhere: Adam turns float32 rounding of a tiny gradient into a full-size step of
    noise (sign(g) * lr), which would hide the formula under test."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


STEP_BATCHES = [([1, 2], [1, 5], 20), ([4, 6], [4, 8], 21), ([9, 3], [9, 2], 22)]


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.slow
def test_three_iterations_a_scheduler_step_and_a_resume_equal_the_release_step(stage1_file, tmp_path, stage,
                                                                               float64_default):
    """Iterations 1, 2, a scheduler step, iteration 3 (niter 2, niter_decay 2: the rate falls to 2/3):
    ours, with and without a resume after iteration 2, equal the release's step with 0.3's Adam."""
    path, _ = stage1_file
    kw = dict(TINY, drop=0.0, lambda_recon=2.0, lambda_veri=0.5, lambda_sp=3.0, niter=2, niter_decay=2)
    torch.manual_seed(5)
    if stage == 1:
        files = dict(netE_pretrain=str(path))
    else:
        FDGANModel(GANConfig(stage=1, netE_pretrain=str(path), **TINY)).save(str(tmp_path), 1)
        files = {f"net{n}_pretrain": str(tmp_path / f"1_net_{n}.pth") for n in ("E", "G", "Di", "Dp")}
    model = FDGANModel(GANConfig(stage=stage, **files, **kw))
    nets = {n: copy.deepcopy(model.net(n)).requires_grad_(True) for n in ("E", "G", "Di", "Dp")}
    g_start = copy.deepcopy(model.net_G.state_dict())
    lr = kw["lr"]
    g_params = list(nets["G"].parameters()) if stage == 1 else \
        list(nets["E"].parameters()) + list(nets["G"].parameters())
    opts = {"G": _ReleaseOptim(g_params, lr * 0.1, adam=True),
            "Di": _ReleaseOptim(nets["Di"].parameters(), lr * (0.01 if stage == 1 else 1.0), adam=False),
            "Dp": _ReleaseOptim(nets["Dp"].parameters(), lr, adam=False)}

    def ours(m, i):
        m.train_mode()
        torch.manual_seed(30 + i)
        m.set_input(_batch(*STEP_BATCHES[i][:2], seed=STEP_BATCHES[i][2]))
        m.optimize_parameters()
        return m.get_current_errors(), (m.origin, m.target, m.posemap, m.noise, m.label)

    errors = {}
    for i in range(2):
        _, inputs = ours(model, i)
        _release_modes(nets, stage)
        errors["release", i] = _release_iteration(nets, opts, inputs, 1.0)
    resume = tmp_path / "resume.pth"
    torch.save(model.state_dict(), resume)
    resumed = FDGANModel(GANConfig(stage=stage, **files, **kw))
    resumed.load_state_dict(torch.load(resume, weights_only=True))
    model.update_learning_rate()
    resumed.update_learning_rate()
    assert [g["lr"] for g in model.optimizers["G"].param_groups][0] == pytest.approx(lr * 0.1 * 2 / 3)
    errors["ours", 2], inputs = ours(model, 2)
    errors["resumed", 2], inputs_resumed = ours(resumed, 2)
    assert all(torch.equal(a, b) for a, b in zip(inputs, inputs_resumed))
    _release_modes(nets, stage)
    errors["release", 2] = _release_iteration(nets, opts, inputs, 2 / 3)

    for run in ("ours", "resumed"):
        for k, v in errors["release", 2].items():
            assert errors[run, 2][k] == pytest.approx(v, rel=1e-7, abs=1e-10), (run, k)
        m = model if run == "ours" else resumed
        for n in ("E", "G", "Di", "Dp"):
            for k, v in nets[n].state_dict().items():
                w = m.net(n).state_dict()[k]
                if v.is_floating_point():
                    # Float64 rounding, amplified by Adam where a gradient is near 0: below 1e-3 of a G step.
                    torch.testing.assert_close(w, v, rtol=1e-6, atol=1e-3 * lr * 0.1,
                                               msg=lambda text: f"{run} {n} {k}: {text}")
                else:
                    assert torch.equal(w, v), (run, n, k)
    moved = max((g_start[k] - v).abs().max().item() for k, v in nets["G"].state_dict().items()
                if v.is_floating_point())
    assert moved > 1e-3
    assert errors["release", 2]["G_sp"] > 0
