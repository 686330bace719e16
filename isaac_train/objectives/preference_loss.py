"""Preference losses on per-answer log-probabilities, as TRL defines them (names and formulas).

For pair i: pi_c, pi_r are the policy's summed log-probabilities of the chosen and rejected answers, ref_c, ref_r
the reference's, n_c, n_r their token counts. With h = beta * logits:

    sigmoid (DPO)  logits = (pi_c - ref_c) - (pi_r - ref_r)
                   loss = -log sigmoid(h) (1 - label_smoothing) - log sigmoid(-h) label_smoothing
    ipo            the same logits from length-averaged log-probabilities (pi / n, ref / n, TRL's ipo);
                   loss = (logits - 1 / (2 beta))^2
    simpo          reference-free: logits = pi_c / n_c - pi_r / n_r - gamma / beta; loss as sigmoid's
                   (TRL's CPOTrainer loss_type="simpo", simpo_gamma)

Rewards (TRL's rewards/chosen, rewards/rejected): beta * (pi - ref) on the log-probabilities the loss uses
(beta * pi / n for simpo). rpo_alpha adds rpo_alpha * (-pi_c / n_c): the chosen answer's mean token NLL, per pair
(TRL averages it over the batch's chosen tokens instead; per pair keeps a pair's loss independent of its batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLosses:
    """Per pair (P,) tensors: the loss and what is reported."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def preference_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                      ref_chosen: torch.Tensor | None, ref_rejected: torch.Tensor | None,
                      chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor, *, loss_type: str = "sigmoid",
                      beta: float = 0.1, label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                      rpo_alpha: float | None = None) -> PairLosses:
    """Per-pair losses and rewards (all (P,) float32; token counts (P,) float)."""
    pc, pr = policy_chosen.float(), policy_rejected.float()
    nc, nr = chosen_tokens.to(pc), rejected_tokens.to(pc)
    if loss_type == "simpo":
        pc, pr = pc / nc, pr / nr
        logits = pc - pr - simpo_gamma / beta
        chosen_rewards, rejected_rewards = beta * pc.detach(), beta * pr.detach()
    else:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"loss_type={loss_type} needs reference log-probabilities (objective.reference)")
        rc, rr = ref_chosen.float(), ref_rejected.float()
        if loss_type == "ipo":
            pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
        logits = (pc - rc) - (pr - rr)
        chosen_rewards, rejected_rewards = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    if loss_type == "ipo":
        loss = (logits - 1 / (2 * beta)) ** 2
    elif loss_type in ("sigmoid", "simpo"):
        loss = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    else:
        raise ValueError(f"objective.loss_type={loss_type!r}; choose sigmoid, ipo or simpo")
    if rpo_alpha:
        loss = loss + rpo_alpha * (-policy_chosen.float() / nc)
    return PairLosses(loss, chosen_rewards, rejected_rewards)
