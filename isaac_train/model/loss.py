"""Next-token loss over packed rows: a sum and a count, never the whole row's fp32 logits.

Labels are aligned with the inputs (as in transformers) and shifted here, within each document: the last token
of a document predicts nothing (never the first token of the next document in the row). Returning the sum over
label tokens and their number lets gradient accumulation and data parallelism divide by the *global* count.
Only positions that carry a label go through the LM head, in chunks whose fp32 logits are recomputed in the
backward pass instead of being kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor, segment_starts: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) labels aligned with inputs -> targets for each position (next token of the same document).

    `segment_starts` is a bool (B, T) marking each document's first token; a position followed by a document
    start gets IGNORE_INDEX.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if segment_starts is not None:
        next_starts = F.pad(segment_starts[:, 1:], (0, 1), value=True)
        shifted = shifted.masked_fill(next_starts, IGNORE_INDEX)
    return shifted


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def lm_loss_sum(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of cross-entropy over positions whose target is not IGNORE_INDEX, and how many there are.

    Args:
        hidden_states: (..., D) final hidden states.
        lm_head_weight: (V, D) output projection.
        targets: (...) already-shifted targets.
        chunk_size: rows of logits materialised at once.
    """
    flat_targets = targets.reshape(-1)
    keep = flat_targets != IGNORE_INDEX
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])[keep]
    return _loss_over(hidden, lm_head_weight, flat_targets[keep], hidden_states, chunk_size), keep.sum()


def lm_loss_at(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    index: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`lm_loss_sum` with the label positions chosen on the host: `index` (n,) flattened positions and their
    `targets` (n,), CPU tensors. Nothing is read back from the device; the count is a CPU tensor."""
    device = hidden_states.device
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, index.to(device, non_blocking=True))
    wanted = targets.to(device, non_blocking=True)
    return _loss_over(hidden, lm_head_weight, wanted, hidden_states, chunk_size), torch.tensor(index.numel())


def _loss_over(hidden: torch.Tensor, lm_head_weight: torch.Tensor, wanted: torch.Tensor, hidden_states: torch.Tensor,
               chunk_size: int) -> torch.Tensor:
    """Summed cross-entropy of the selected rows `hidden` (n, D) against `wanted` (n,), in recomputed chunks."""
    total = hidden_states.new_zeros((), dtype=torch.float32)
    if hidden.shape[0] == 0:
        # Keep the graph connected so every rank runs the same backward (DDP/FSDP would otherwise hang).
        return total + 0.0 * hidden_states.sum() + 0.0 * lm_head_weight.sum()
    grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], wanted[start : start + chunk_size]
        if grad:
            total = total + checkpoint(_chunk_loss_sum, h, lm_head_weight, y, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(h, lm_head_weight, y)
    return total


def _chunk_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return -F.cross_entropy(logits, targets, reduction="none")


def lm_token_logps(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    index: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Next-token log-probabilities of the selected targets: (n,) float32, in the order of `index`.

    `index` / `targets` (n,) are host tensors as in `lm_loss_at`. The logits of the selected positions only, in
    chunks recomputed in the backward pass: never a row's logits."""
    device = hidden_states.device
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, index.to(device, non_blocking=True))
    wanted = targets.to(device, non_blocking=True)
    if hidden.shape[0] == 0:
        return hidden_states.new_zeros(0, dtype=torch.float32) + 0.0 * hidden_states.sum() + 0.0 * lm_head_weight.sum()
    grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    chunks = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], wanted[start : start + chunk_size]
        chunks.append(checkpoint(_chunk_token_logps, h, lm_head_weight, y, use_reentrant=False) if grad
                      else _chunk_token_logps(h, lm_head_weight, y))
    return torch.cat(chunks)


def group_sums(token_logps: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-group sums (num_groups,) of per-target values (n,); `groups` (n,) a host tensor (a preference pair's
    answer, a GRPO completion)."""
    where = groups.to(token_logps.device, non_blocking=True)
    return token_logps.new_zeros(num_groups).index_add(0, where, token_logps)


def lm_group_logps(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    index: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Summed next-token log-probabilities per group (a preference pair's answer): (num_groups,) float32
    (`lm_token_logps` summed by `groups`, (n,) the group of each target)."""
    return group_sums(lm_token_logps(hidden_states, lm_head_weight, index, targets, chunk_size), groups, num_groups)
