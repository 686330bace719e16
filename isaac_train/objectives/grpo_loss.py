"""GRPO's advantages and its clipped policy-gradient loss, as TRL's GRPOTrainer defines them (names and formulas).

Advantages, per prompt's group of G completions with rewards r_1..r_G:

    A_i = r_i - mean(r)                      scale_rewards=none (Dr. GRPO)
    A_i = (r_i - mean(r)) / (std(r) + 1e-4)  scale_rewards=group (std: unbiased, over the group)
                                             scale_rewards=batch (std over every reward of the step)

A group of one has no baseline but itself: its advantage is 0 (std taken as 0). A group whose rewards are all
equal has advantages 0 too (no signal; objective.drop_equal_groups leaves such groups out of the update).

Per completion token t, with the policy's log-probability logp, the rollout policy's old_logp (logp itself,
detached, when each rollout is optimised once: num_iterations=1) and the reference's ref_logp:

    ratio = exp(logp - old_logp)
    loss_t = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl_t
    kl_t = exp(ref_logp - logp) - (ref_logp - logp) - 1                     (the k3 estimator, >= 0)

The normaliser (objective.loss_type, TRL's names) is a per-token coefficient times the step's global count:
dapo sums the token losses over the step's completion tokens; grpo averages each completion's tokens, then over the
step's completions; dr_grpo sums over (completions x max_new_tokens). Clip statistics as TRL reports them:
clip_ratio/low (ratio < 1 - epsilon where A < 0), high (ratio > 1 + epsilon_high where A > 0), region (either).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STD_EPS = 1e-4  # TRL's: advantages / (std + 1e-4)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group",
                     batch_std: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per completion advantages (N,) and per group reward std (N / G,) from rewards (N,) in groups of
    `group_size` consecutive completions. `batch_std`: the std of every reward of the step (scale_rewards=batch;
    over all ranks, so that it does not depend on how the step is split); default: these rewards' own."""
    r = rewards.double().view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    advantages = r - mean
    if scale_rewards == "group":
        advantages = advantages / (std + STD_EPS)
    elif scale_rewards == "batch":
        if batch_std is None:
            batch_std = rewards.double().std() if rewards.numel() > 1 else torch.zeros(())
        advantages = advantages / (torch.as_tensor(batch_std, dtype=torch.float64) + STD_EPS)
    elif scale_rewards != "none":
        raise ValueError(f"objective.scale_rewards={scale_rewards!r}; choose group, batch or none")
    return advantages.view(-1).float(), std.view(-1).float()


@dataclass
class TokenLosses:
    """Per completion token (n,): the loss, the KL term (None when beta is 0) and the clip indicators."""

    loss: torch.Tensor
    kl: torch.Tensor | None
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor


def clipped_token_losses(logps: torch.Tensor, old_logps: torch.Tensor | None, advantages: torch.Tensor,
                         ref_logps: torch.Tensor | None = None, *, beta: float = 0.0, epsilon: float = 0.2,
                         epsilon_high: float | None = None) -> TokenLosses:
    """The clipped surrogate per token (see the module docstring); `old_logps` None: `logps` detached (the ratio is
    1 in value, its gradient the policy gradient)."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if beta != 0:
        if ref_logps is None:
            raise ValueError("objective.beta > 0 needs the reference's log-probabilities (objective.reference)")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    with torch.no_grad():
        low = ((ratio < 1 - epsilon) & (advantages < 0)).float()
        high = ((ratio > 1 + eps_high) & (advantages > 0)).float()
    return TokenLosses(loss, kl, low, high)


def token_coefficients(lengths: list[int], kept: list[bool], loss_type: str) -> list[float]:
    """Each completion's per-token weight in the loss sum: 1 (dapo, dr_grpo) or 1 / its length (grpo); 0 for a
    completion left out (a dropped group, a masked truncated completion)."""
    if loss_type not in ("dapo", "grpo", "dr_grpo"):
        raise ValueError(f"objective.loss_type={loss_type!r}; choose dapo, grpo or dr_grpo")
    return [0.0 if not k else (1.0 / max(n, 1) if loss_type == "grpo" else 1.0)
            for n, k in zip(lengths, kept, strict=True)]


def normaliser(lengths: list[int], kept: list[bool], loss_type: str, max_new_tokens: int) -> int:
    """This part of the step's global count: kept completion tokens (dapo), kept completions (grpo), kept
    completions x max_new_tokens (dr_grpo)."""
    if loss_type == "dapo":
        return sum(n for n, k in zip(lengths, kept, strict=True) if k)
    return sum(kept) * (max_new_tokens if loss_type == "dr_grpo" else 1)
