"""GRPO's advantages, clipped token losses and normalisers on numbers worked by hand (TRL's GRPOTrainer
definitions: objectives/grpo_loss.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from isaac_train.objectives.grpo_loss import (
    clipped_token_losses,
    group_advantages,
    normaliser,
    token_coefficients,
)

TOL = {"rtol": 1e-6, "atol": 1e-6}
E = 1e-4  # TRL's std epsilon, written out here rather than imported

# two groups of 4: [1, 0, 0, 1] and [2, 4, 6, 8]
REWARDS = [1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0]
# group 1: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = sqrt(1/3) = 0.57735027
STD1 = math.sqrt(1.0 / 3.0)
# group 2: mean 5, deviations -3, -1, 1, 3, unbiased var = (9 + 1 + 1 + 9) / 3 = 20/3, std = 2.5819889
STD2 = math.sqrt(20.0 / 3.0)
DEV = [0.5, -0.5, -0.5, 0.5, -3.0, -1.0, 1.0, 3.0]  # r - group mean


def t(xs, **kw):
    return torch.tensor(xs, dtype=torch.float32, **kw)


# ---------------------------------------------------------------------------------------------- advantages


def test_group_scaling_two_groups():
    adv, std = group_advantages(t(REWARDS), 4, "group")
    a1 = 0.5 / (STD1 + E)  # 0.5 / 0.57745027 = 0.865876
    expected = [a1, -a1, -a1, a1] + [d / (STD2 + E) for d in (-3.0, -1.0, 1.0, 3.0)]
    assert a1 == pytest.approx(0.865876, abs=1e-6)
    assert_close(adv, t(expected), **TOL)
    assert_close(std, t([STD1, STD2]), **TOL)
    assert std.shape == (2,) and adv.shape == (8,)
    assert adv.dtype == torch.float32


def test_scale_none_is_plain_baseline():
    adv, std = group_advantages(t(REWARDS), 4, "none")
    assert_close(adv, t(DEV), rtol=0, atol=1e-7)
    assert_close(std, t([STD1, STD2]), **TOL)  # the group std is still reported


def test_scale_batch_with_given_std():
    adv, std = group_advantages(t(REWARDS), 4, "batch", batch_std=2.0)
    assert_close(adv, t([d / 2.0001 for d in DEV]), **TOL)
    assert_close(std, t([STD1, STD2]), **TOL)
    # a tensor batch_std (as gathered over ranks) gives the same
    adv_t, _ = group_advantages(t(REWARDS), 4, "batch", batch_std=torch.tensor(2.0))
    assert_close(adv_t, adv, rtol=0, atol=0)


def test_scale_batch_default_is_rewards_own_std():
    # all 8 rewards: mean 22/8 = 2.75; squared deviations 3.0625, 7.5625, 7.5625, 3.0625, 0.5625, 1.5625,
    # 10.5625, 27.5625 sum to 61.5; unbiased var 61.5 / 7 = 8.785714, std = 2.9640705
    batch_std = math.sqrt(61.5 / 7.0)
    assert batch_std == pytest.approx(2.9640705, abs=1e-6)
    adv, _ = group_advantages(t(REWARDS), 4, "batch")
    # the numerator is still r - *group* mean, only the scale is the batch's
    assert_close(adv, t([d / (batch_std + E) for d in DEV]), **TOL)


def test_equal_rewards_group_has_zero_advantage_and_std():
    rewards = t([0.5, 0.5, 0.5, 1.0, 0.0, 2.0])  # group 1 all equal; group 2 mean 1, std 1
    for scale in ("group", "none", "batch"):
        adv, std = group_advantages(rewards, 3, scale)
        assert torch.equal(adv[:3], torch.zeros(3)), scale
        assert std[0].item() == 0.0
        assert std[1].item() == pytest.approx(1.0, abs=1e-7)  # (1 + 1) / 2 = 1
    adv, _ = group_advantages(rewards, 3, "group")
    assert_close(adv[3:], t([0.0, -1.0 / (1.0 + E), 1.0 / (1.0 + E)]), **TOL)


def test_group_of_one_is_zero_not_nan():
    rewards = t([1.0, 2.0, 5.0])
    for scale in ("group", "none", "batch"):
        adv, std = group_advantages(rewards, 1, scale)
        assert torch.equal(adv, torch.zeros(3)), scale
        assert torch.equal(std, torch.zeros(3)), scale
    # a single reward in all (batch default std of one value would be NaN with torch.std)
    adv, std = group_advantages(t([3.0]), 1, "batch")
    assert torch.equal(adv, torch.zeros(1)) and torch.equal(std, torch.zeros(1))


def test_unknown_scale_rewards_raises():
    with pytest.raises(ValueError, match="objective.scale_rewards"):
        group_advantages(t(REWARDS), 4, "per_token")


# ---------------------------------------------------------------------------------------------- clipped loss


def run(deltas, advantages, **kw):
    """Tokens with logp - old_logp = delta; returns the losses and d(sum loss)/d logps."""
    old = t([-1.0] * len(deltas))
    logps = (old + t(deltas)).requires_grad_()
    out = clipped_token_losses(logps, old, t(advantages), **kw)
    out.loss.sum().backward()
    return out, logps.grad


def test_clip_cases_eps_02():
    # delta  ratio = e^delta   A    ratio*A      clip(ratio)*A  min        loss      case
    #  0.1   1.1051709        2    2.2103418    2.2103418      2.2103418  -2.2103418 inside
    #  0.5   1.6487213        1    1.6487213    1.2            1.2        -1.2       clipped high (grad 0)
    # -0.5   0.6065307       -1   -0.6065307   -0.8           -0.8         0.8       clipped low (grad 0)
    #  0.5   1.6487213       -1   -1.6487213   -1.2           -1.6487213   1.6487213 above 1+eps, A<0: unclipped
    # -0.5   0.6065307        1    0.6065307    0.8            0.6065307  -0.6065307 below 1-eps, A>0: unclipped
    out, grad = run([0.1, 0.5, -0.5, 0.5, -0.5], [2.0, 1.0, -1.0, -1.0, 1.0], epsilon=0.2)
    assert_close(out.loss, t([-2.2103418, -1.2, 0.8, 1.6487213, -0.6065307]), **TOL)
    # d(-ratio * A)/d logp = -ratio * A where unclipped, 0 where the clipped branch is the min
    assert_close(grad, t([-2.2103418, 0.0, 0.0, 1.6487213, -0.6065307]), **TOL)
    assert grad[1].item() == 0.0 and grad[2].item() == 0.0
    assert out.clipped_high.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert out.clipped_low.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert out.kl is None


def test_epsilon_high_dapo():
    # epsilon 0.2, epsilon_high 0.28: range [0.8, 1.28]
    #  0.25  ratio 1.2840254 > 1.28, A=1  -> loss -1.28, clipped high, grad 0
    #  0.22  ratio 1.2460767 (> 1.2 but < 1.28), A=1 -> unclipped: loss -1.2460767, grad -1.2460767
    # -0.3   ratio 0.7408182 < 0.8, A=-1 -> loss 0.8 (low side still uses epsilon=0.2), clipped low
    out, grad = run([0.25, 0.22, -0.3], [1.0, 1.0, -1.0], epsilon=0.2, epsilon_high=0.28)
    assert_close(out.loss, t([-1.28, -1.2460767, 0.8]), **TOL)
    assert_close(grad, t([0.0, -1.2460767, 0.0]), **TOL)
    assert out.clipped_high.tolist() == [1.0, 0.0, 0.0]
    assert out.clipped_low.tolist() == [0.0, 0.0, 1.0]
    # the same 0.22 token with the symmetric 0.2 range is clipped at 1.2
    sym, sym_grad = run([0.22], [1.0], epsilon=0.2)
    assert_close(sym.loss, t([-1.2]), **TOL)
    assert sym_grad.item() == 0.0 and sym.clipped_high.item() == 1.0


def test_no_old_logps_is_reinforce():
    logps = t([-1.0, -2.0, -0.5]).requires_grad_()
    adv = t([1.5, -2.0, 0.25])
    out = clipped_token_losses(logps, None, adv)
    # ratio = exp(0) = 1 in value: loss = -A; gradient of -ratio * A wrt logp = -A
    assert_close(out.loss.detach(), t([-1.5, 2.0, -0.25]), **TOL)
    out.loss.sum().backward()
    assert_close(logps.grad, t([-1.5, 2.0, -0.25]), **TOL)
    assert out.clipped_low.tolist() == [0.0, 0.0, 0.0] and out.clipped_high.tolist() == [0.0, 0.0, 0.0]


def test_kl_term():
    # ref - logp = 0.5, 0, -0.5
    # kl = e^0.5 - 0.5 - 1 = 1.6487213 - 1.5 = 0.1487213; 0; e^-0.5 + 0.5 - 1 = 0.6065307 - 0.5 = 0.1065307
    logps = t([-1.0, -2.0, -0.3]).requires_grad_()
    ref = t([-0.5, -2.0, -0.8])
    adv = t([1.0, -1.0, 2.0])
    beta = 0.1
    out = clipped_token_losses(logps, None, adv, ref, beta=beta)
    kl = [0.1487213, 0.0, 0.1065307]
    assert_close(out.kl.detach(), t(kl), **TOL)
    assert (out.kl >= 0).all()
    assert out.kl[1].item() == 0.0  # ref == logp
    # loss = -A + beta * kl = -1 + 0.01487213, 1 + 0, -2 + 0.01065307
    assert_close(out.loss.detach(), t([-0.98512787, 1.0, -1.98934693]), **TOL)
    # d kl / d logp = -e^delta + 1: 1 - 1.6487213 = -0.6487213; 0; 1 - 0.6065307 = 0.3934693
    out.loss.sum().backward()
    assert_close(logps.grad, t([-1.0 - 0.06487213, 1.0, -2.0 + 0.03934693]), **TOL)


def test_beta_without_reference_raises():
    with pytest.raises(ValueError, match="objective.reference"):
        clipped_token_losses(t([-1.0]), None, t([1.0]), None, beta=0.04)


# ---------------------------------------------------------------------------------------------- normalisers

LENGTHS, KEPT, MAX_NEW = [3, 5, 2], [True, False, True], 8


@pytest.mark.parametrize(("loss_type", "coefs", "count"), [
    ("dapo", [1.0, 0.0, 1.0], 5),          # kept tokens 3 + 2
    ("grpo", [1 / 3, 0.0, 1 / 2], 2),      # kept completions
    ("dr_grpo", [1.0, 0.0, 1.0], 16),      # kept completions x max_new_tokens = 2 * 8
])
def test_coefficients_and_count(loss_type, coefs, count):
    got = token_coefficients(LENGTHS, KEPT, loss_type)
    assert got == pytest.approx(coefs, abs=1e-12)
    assert normaliser(LENGTHS, KEPT, loss_type, MAX_NEW) == count


@pytest.mark.parametrize(("loss_type", "expected"), [
    ("dapo", 24.0 / 6.0),                       # sum of all kept token losses / kept tokens
    ("grpo", ((1 + 3) / 2 + (2 + 4 + 6 + 8) / 4) / 2),  # mean of the completions' token means: (2 + 5) / 2
    ("dr_grpo", 24.0 / (2 * 8)),                # sum / (completions x max_new_tokens)
])
def test_normalisation_end_to_end(loss_type, expected):
    # completions of lengths 2 and 4, and a third (length 3, losses 100) left out of the update
    losses = [[1.0, 3.0], [2.0, 4.0, 6.0, 8.0], [100.0, 100.0, 100.0]]
    lengths, kept = [2, 4, 3], [True, True, False]
    coef = token_coefficients(lengths, kept, loss_type)
    count = normaliser(lengths, kept, loss_type, MAX_NEW)
    total = sum(c * x for c, toks in zip(coef, losses, strict=True) for x in toks)
    assert total / count == pytest.approx(expected, abs=1e-12)
    assert expected == {"dapo": 4.0, "grpo": 3.5, "dr_grpo": 1.5}[loss_type]


def test_unknown_loss_type_raises():
    with pytest.raises(ValueError, match="objective.loss_type"):
        token_coefficients(LENGTHS, KEPT, "bnpo")
