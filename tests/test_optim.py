"""Fused optimiser kernels: same updates as PyTorch's per-parameter loop, kept across resumes."""
import pytest
import torch
from torch import nn

from reid.utils.optim import fused_kwargs, load_optimizer_state


def _net() -> nn.Module:
    # No bias before the BatchNorm: its gradient is zero up to rounding, which Adam would scale up
    # to full-size steps of noise.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3))


def _sgd(net: nn.Module, **kw) -> torch.optim.SGD:
    params = list(net.parameters())
    groups = [{"params": params[:2], "lr_mult": 0.1}, {"params": params[2:], "lr_mult": 1.0}]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4, **kw)


def _adam(net: nn.Module, **kw) -> torch.optim.Adam:
    return torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.5, 0.999), **kw)


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for i in steps:
        x = torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()


def _params(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_fused_kwargs_pick_the_fused_kernel_only_where_pytorch_has_it():
    assert fused_kwargs("cpu") == {"fused": True}
    assert fused_kwargs(torch.device("cuda", 1)) == {"fused": True}
    assert fused_kwargs("cpu", enabled=False) == {}
    assert fused_kwargs("meta") == {}


@pytest.mark.parametrize("make", [_sgd, _adam])
def test_the_fused_kernel_updates_like_the_per_parameter_loop(make):
    results = []
    for kw in ({}, fused_kwargs("cpu")):
        net = _net()
        opt = make(net, **kw)
        assert opt.param_groups[0]["fused"] is (True if kw else None)
        _train(net, opt, range(4))
        results.append(_params(net))
    loop, fused = results
    moved = (loop - _params(_net())).abs().max().item()
    assert moved > 1e-2
    # The same arithmetic, fused into one pass (with multiply-adds): equal up to rounding.
    torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-6 * moved)


@pytest.mark.parametrize("saved_kw,loading_kw", [({}, {"fused": True}), ({"fused": True}, {})])
def test_a_resumed_optimiser_keeps_its_own_kernel_and_the_files_state(saved_kw, loading_kw):
    # Train 2 steps, save, resume into an optimiser built with the other kernel, train 2 more:
    # the result is that of 4 uninterrupted steps, up to the kernels' rounding.
    net = _net()
    opt = _sgd(net, **saved_kw)
    _train(net, opt, range(2))
    saved = opt.state_dict()
    saved_params = {k: v.clone() for k, v in net.state_dict().items()}

    resumed_net = _net()
    resumed_net.load_state_dict(saved_params)
    resumed = _sgd(resumed_net, **loading_kw)
    load_optimizer_state(resumed, saved)
    assert [g.get("fused") for g in resumed.param_groups] == [loading_kw.get("fused")] * 2
    assert [g["lr_mult"] for g in resumed.param_groups] == [0.1, 1.0]
    for p_saved, p_new in zip(opt.param_groups[1]["params"], resumed.param_groups[1]["params"]):
        assert torch.equal(opt.state[p_saved]["momentum_buffer"], resumed.state[p_new]["momentum_buffer"])
    _train(resumed_net, resumed, range(2, 4))

    straight = _net()
    _train(straight, _sgd(straight), range(4))
    torch.testing.assert_close(_params(resumed_net), _params(straight), rtol=1e-6, atol=1e-8)
    # Without the momentum the last 2 steps land far from there: the state carried weight.
    forgetful = _net()
    forgetful.load_state_dict(saved_params)
    _train(forgetful, _sgd(forgetful), range(2, 4))
    assert (_params(forgetful) - _params(straight)).abs().max() > 1e-3
    assert saved["param_groups"][0].get("fused") == saved_kw.get("fused")  # the caller's dict is untouched


def test_a_state_of_another_shape_is_still_refused():
    net = _net()
    single_group = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    _train(net, single_group, range(1))
    with pytest.raises(ValueError, match="parameter groups"):
        load_optimizer_state(_sgd(_net(), fused=True), single_group.state_dict())
