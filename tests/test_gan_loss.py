"""GANLoss against hand-computed values and gradients, in and out of the float32 sigmoid's
saturation, for the release's form (sigmoid + PyTorch 0.3's BCELoss) and the logits form."""
from __future__ import annotations

import math

import pytest
import torch

from fdgan.losses import GANLoss
from reid.errors import ConfigError

EPS = 1e-12
# float32 sigmoid(z) = 1 / (1 + exp(-z)) for the logits below; 1 + exp(-17) rounds to 1 in float32.
SIGMOID32 = {-30.0: 9.357623589846195e-14, -17.0: 4.139937814784389e-08, 0.0: 0.5, 17.0: 1.0, 30.0: 1.0}
TARGETS = (0.0, 1.0, 0.8)  # fake, real, and a smoothed real target


def release_by_hand(z: float, t: float) -> tuple:
    """The release's loss and d loss / d logit: BCELoss(eps 1e-12) after a float32 sigmoid, with
    THNN's gradient -(t - x) / ((1 - x + eps)(x + eps)) and the sigmoid's x (1 - x)."""
    x = SIGMOID32[z]
    loss = -(t * math.log(x + EPS) + (1 - t) * math.log(1 - x + EPS))
    grad = -(t - x) / ((1 - x + EPS) * (x + EPS)) * x * (1 - x)
    return loss, grad


def logits_by_hand(z: float, t: float) -> tuple:
    """BCE with logits: softplus(z) - t z, gradient sigmoid(z) - t (exact, no saturation)."""
    loss = max(z, 0.0) + math.log1p(math.exp(-abs(z))) - t * z
    return loss, 1 / (1 + math.exp(-z)) - t


def _loss_and_grad(mode: str, z: float, t: float) -> tuple:
    criterion = GANLoss(mode=mode)
    criterion.target_value = lambda is_real: t  # a fixed (possibly smoothed) target
    logits = torch.tensor([z], requires_grad=True)
    loss = criterion(logits, True)
    loss.backward()
    return loss.item(), logits.grad.item()


@pytest.mark.parametrize("t", TARGETS)
@pytest.mark.parametrize("z", sorted(SIGMOID32))
def test_release_form_matches_hand_values_and_gradients(z: float, t: float) -> None:
    loss, grad = _loss_and_grad("release", z, t)
    want_loss, want_grad = release_by_hand(z, t)
    assert loss == pytest.approx(want_loss, rel=1e-6, abs=1e-7)
    assert grad == pytest.approx(want_grad, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("t", TARGETS)
@pytest.mark.parametrize("z", sorted(SIGMOID32))
def test_logits_form_matches_hand_values_and_gradients(z: float, t: float) -> None:
    loss, grad = _loss_and_grad("logits", z, t)
    want_loss, want_grad = logits_by_hand(z, t)
    assert loss == pytest.approx(want_loss, rel=1e-6, abs=1e-6)
    assert grad == pytest.approx(want_grad, rel=1e-5, abs=1e-7)


def test_the_two_forms_part_in_saturation_as_the_issue_states() -> None:
    # A confident discriminator: logit 17 against target 0, logit -30 against target 1.
    assert _loss_and_grad("release", 17.0, 0.0) == (pytest.approx(-math.log(EPS), rel=1e-6), 0.0)
    assert _loss_and_grad("logits", 17.0, 0.0)[1] == pytest.approx(1.0, abs=1e-6)
    assert _loss_and_grad("release", -30.0, 1.0)[1] == pytest.approx(-0.0856, abs=5e-4)
    assert _loss_and_grad("logits", -30.0, 1.0)[1] == pytest.approx(-1.0, abs=1e-6)


def test_release_form_is_the_mean_over_elements_with_gradient_divided_by_n() -> None:
    zs = [-30.0, 0.0, 17.0, -17.0]
    logits = torch.tensor(zs, requires_grad=True)
    loss = GANLoss()(logits, True)  # hard real target 1, release form by default
    loss.backward()
    by_hand = [release_by_hand(z, 1.0) for z in zs]
    assert loss.item() == pytest.approx(sum(v for v, _ in by_hand) / 4, rel=1e-6)
    assert logits.grad.tolist() == pytest.approx([g / 4 for _, g in by_hand], rel=1e-5, abs=1e-9)


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--gan-loss"):
        GANLoss(mode="hinge")
