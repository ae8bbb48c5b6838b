"""ReleaseAdam equals PyTorch 0.3's Adam formula, written out by hand, over many steps and a resume."""
import io
import math

import pytest
import torch

from reid.utils.optim import load_optimizer_state
from reid.utils.release_adam import ReleaseAdam

BETAS = (0.5, 0.999)
EPS = 1e-8


class HandAdam03:
    """PyTorch 0.3's Adam, one parameter at a time, in float64."""

    def __init__(self, params, lrs):
        self.params = [p.detach().double().clone() for p in params]
        self.lrs = list(lrs)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = [0] * len(self.params)

    def step(self, grads, lr_factor=1.0):
        b1, b2 = BETAS
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.double()
            self.t[i] += 1
            t = self.t[i]
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            step_size = self.lrs[i] * lr_factor * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            self.params[i] = self.params[i] - step_size * self.m[i] / (self.v[i].sqrt() + EPS)


def _grads(step, shapes, scale):
    g = torch.Generator().manual_seed(1000 + step)
    out = [scale * torch.randn(s, generator=g) * (1 + 0.5 * math.sin(step / 7)) for s in shapes]
    if step % 5 == 3:  # the second parameter skips some steps: its step count falls behind
        out[1] = None
    return out


def _make(fused):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(7, 3)), torch.nn.Parameter(torch.randn(5)),
              torch.nn.Parameter(torch.randn(4, 2))]
    groups = [{"params": params[:2], "lr": 1e-3}, {"params": params[2:], "lr": 1e-2}]
    opt = ReleaseAdam(groups, lr=1e-3, betas=BETAS, eps=EPS, **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1 + e))
    return params, opt, sched


def _run(params, opt, sched, steps, scale, sched_at):
    shapes = [p.shape for p in params]
    for i in steps:
        if i == sched_at:
            sched.step()
        for p, g in zip(params, _grads(i, shapes, scale)):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("scale", [1.0, 1e-4, 1e-7])
def test_release_adam_is_pytorch_03_adam_over_many_steps_a_scheduler_step_and_a_resume(fused, scale):
    n, sched_at, resume_at = 400, 150, 250
    params, opt, sched = _make(fused)
    hand = HandAdam03(params, [1e-3, 1e-3, 1e-2])
    shapes = [p.shape for p in params]
    for i in range(n):
        hand.step(_grads(i, shapes, scale), lr_factor=0.5 if i >= sched_at else 1.0)

    _run(params, opt, sched, range(resume_at), scale, sched_at)
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict(),
                "sched": sched.state_dict()}, buf)
    assert [g["eps"] for g in opt.state_dict()["param_groups"]] == [EPS, EPS]  # saved as given
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    # Resume into an optimiser with the other kernel.
    params2, opt2, sched2 = _make(not fused)
    with torch.no_grad():
        for p, v in zip(params2, saved["params"]):
            p.copy_(v)
    load_optimizer_state(opt2, saved["opt"])
    sched2.load_state_dict(saved["sched"])
    _run(params2, opt2, sched2, range(resume_at, n), scale, sched_at)

    assert opt2.state[params2[1]]["step"].item() < opt2.state[params2[0]]["step"].item() == n
    moved = max((h - p0.double()).abs().max().item() for h, p0 in zip(hand.params, _make(False)[0]))
    assert moved > 1e-2
    for p, h in zip(params2, hand.params):
        torch.testing.assert_close(p.detach().double(), h, rtol=3e-6, atol=1e-6 * moved)


def test_modern_adam_moves_a_small_gradient_weight_differently():
    """The check above would fail for torch.optim.Adam: with small gradients eps matters."""
    scale = 1e-7
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(3))
    p_modern = torch.nn.Parameter(torch.zeros(3))
    ours = ReleaseAdam([p], lr=1e-3, betas=BETAS, eps=EPS)
    modern = torch.optim.Adam([p_modern], lr=1e-3, betas=BETAS, eps=EPS)
    hand = HandAdam03([p], [1e-3])
    g = torch.tensor([scale, -scale, 2 * scale])
    p.grad, p_modern.grad = g.clone(), g.clone()
    ours.step()
    modern.step()
    hand.step([g])
    # By hand: m = g / 2 -> m_hat = g; sqrt(v) = |g| sqrt(0.001) -> 0.3 update = lr * g / (|g| + eps / sqrt(0.001)).
    expected = -1e-3 * g.double() / (g.double().abs() + EPS / math.sqrt(1e-3))
    torch.testing.assert_close(hand.params[0], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=0)
    # Modern Adam: lr * g / (|g| + eps): at gradient 1e-7 about 24 % larger than 0.3's.
    torch.testing.assert_close(p_modern.detach().double(), -1e-3 * g.double() / (g.double().abs() + EPS),
                               rtol=1e-5, atol=0)
    ratio = (p_modern.detach() / p.detach()).double()
    assert ratio.min().item() > 1.2
