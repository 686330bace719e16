"""Each preference loss type on numbers worked by hand (TRL's definitions: objectives/preference_loss.py)."""

from __future__ import annotations

import math

import pytest
import torch

from isaac_train.objectives.preference_loss import preference_losses

# one pair: policy log-probs of the chosen / rejected answers, the reference's, the answers' token counts
PC, PR, RC, RR, NC, NR = -1.0, -2.0, -1.5, -1.5, 2.0, 4.0


def losses(**kw):
    t = lambda x: torch.tensor([x])  # noqa: E731
    return preference_losses(t(PC), t(PR), t(RC), t(RR), t(NC), t(NR), **kw)


def test_sigmoid():
    # logits = (-1 + 1.5) - (-2 + 1.5) = 1; loss = -log sigmoid(0.1 * 1) = log(1 + e^-0.1)
    out = losses(loss_type="sigmoid", beta=0.1)
    assert out.loss.item() == pytest.approx(0.6443966600735709, abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(0.05, abs=1e-7)  # 0.1 * (-1 + 1.5)
    assert out.rejected_rewards.item() == pytest.approx(-0.05, abs=1e-7)  # 0.1 * (-2 + 1.5)


def test_sigmoid_with_label_smoothing():
    # 0.8 * log(1 + e^-0.1) + 0.2 * log(1 + e^0.1) = 0.8 * 0.64439666 + 0.2 * 0.74439666
    out = losses(loss_type="sigmoid", beta=0.1, label_smoothing=0.2)
    assert out.loss.item() == pytest.approx(0.6643966600735709, abs=1e-7)


def test_ipo_uses_length_averaged_log_probs():
    # (-1/2 + 1.5/2) - (-2/4 + 1.5/4) = 0.25 + 0.125 = 0.375; loss = (0.375 - 1 / (2 * 0.1))^2 = (-4.625)^2
    out = losses(loss_type="ipo", beta=0.1)
    assert out.loss.item() == pytest.approx(21.390625, abs=1e-5)
    assert out.chosen_rewards.item() == pytest.approx(0.1 * 0.25, abs=1e-7)


def test_simpo_is_reference_free_and_length_normalised():
    # beta 2, gamma 0.5: h = 2 * (-1/2 - (-2/4)) - 0.5 = -0.5; loss = -log sigmoid(-0.5) = log(1 + e^0.5)
    t = lambda x: torch.tensor([x])  # noqa: E731
    out = preference_losses(t(PC), t(PR), None, None, t(NC), t(NR), loss_type="simpo", beta=2.0, simpo_gamma=0.5)
    assert out.loss.item() == pytest.approx(0.9740769841801067, abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(-1.0) and out.rejected_rewards.item() == pytest.approx(-1.0)


def test_rpo_alpha_adds_the_chosen_answers_mean_nll():
    # sigmoid's 0.64439666 + 0.5 * (1 / 2): the chosen answer's -log-prob per token, weighted
    out = losses(loss_type="sigmoid", beta=0.1, rpo_alpha=0.5)
    assert out.loss.item() == pytest.approx(0.6443966600735709 + 0.25, abs=1e-7)


def test_equal_policy_and_reference_give_log_2():
    t = torch.tensor([-3.0, -7.5])
    out = preference_losses(t, t.flip(0), t, t.flip(0), torch.tensor([3.0, 5.0]), torch.tensor([4.0, 2.0]))
    assert torch.allclose(out.loss, torch.full((2,), math.log(2)), atol=1e-7)


def test_gradient_of_sigmoid_matches_its_derivative():
    # d loss / d pi_c = -beta * sigmoid(-beta * logits) = -0.1 * sigmoid(-0.1); d / d pi_r is its negative
    pc, pr = torch.tensor([PC], requires_grad=True), torch.tensor([PR], requires_grad=True)
    t = lambda x: torch.tensor([x])  # noqa: E731
    preference_losses(pc, pr, t(RC), t(RR), t(NC), t(NR), beta=0.1).loss.sum().backward()
    expected = -0.1 / (1 + math.exp(0.1))
    assert pc.grad.item() == pytest.approx(expected, abs=1e-7) and pr.grad.item() == pytest.approx(-expected, abs=1e-7)


def test_a_reference_loss_without_reference_is_refused():
    t = torch.tensor([-1.0])
    with pytest.raises(ValueError, match="objective.reference"):
        preference_losses(t, t, None, None, t, t, loss_type="sigmoid")
