"""Isaac's 3-D multimodal RoPE: (t, h, w) positions and the cos/sin they give.

Positions (isaac_spec.md §6.5): a counter t starts at 0 in every document; a text token takes (t, t, t) and
moves t by one; an image takes one time step for all its tokens, with h/w counted from 0 on the
pixel-shuffled grid (row-major). Frequencies (§7.2): the head_dim/2 rotary pairs are split in contiguous
blocks [t | h | w] (mrope_section, [32, 16, 16] for head_dim 128), not interleaved; cos/sin are duplicated
over the two halves (rotate_half convention), so text-only input is exactly 1-D RoPE.
"""

from __future__ import annotations

import torch
from torch import nn


class IsaacRotaryEmbedding(nn.Module):
    """cos/sin of shape (B, T, head_dim) from (B, T, 3) positions; computed in fp32, cast to `dtype`."""

    def __init__(self, head_dim: int, theta: float, mrope_section: list[int]) -> None:
        super().__init__()
        # No buffers: the 64 frequencies are recomputed per call, so meta-device init, sharding and dtype
        # casts of the model can never leave them stale or in low precision.
        self.head_dim, self.theta, self.mrope_section = head_dim, float(theta), list(mrope_section)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        device = position_ids.device
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponent)
        # the axis (t, h, w) each frequency rotates by, built on the host (repeat_interleave on the device would wait)
        axis = torch.tensor([a for a, n in enumerate(self.mrope_section) for _ in range(n)])
        axis = axis.to(device, non_blocking=True)
        per_freq = position_ids.float().index_select(-1, axis)  # (B, T, head_dim/2): the axis each freq rotates by
        phase = per_freq * inv_freq
        emb = torch.cat((phase, phase), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta:g}, mrope_section={self.mrope_section}"


def mrope_positions(
    image_mask: torch.Tensor,
    image_token_grids: torch.Tensor,
    segment_starts: torch.Tensor,
) -> torch.Tensor:
    """3-D positions for one flattened token axis.

    Args:
        image_mask: bool (N,), True where a token is an image token (images in order, each contiguous).
        image_token_grids: long (n_img, 2) virtual (pixel-shuffled) grid (H', W') of each image, in order;
            image j owns the next H'*W' image tokens.
        segment_starts: bool (N,), True at the first token of every document (positions restart there).

    Returns:
        long (N, 3): (t, t, t) for text, (t, h, w) for image tokens.
    """
    n = image_mask.shape[0]
    device = image_mask.device
    counts = image_token_grids[:, 0] * image_token_grids[:, 1]
    if int(counts.sum()) != int(image_mask.sum()):
        raise ValueError(
            f"{int(image_mask.sum())} image tokens in the sequence but the image grids account for "
            f"{int(counts.sum())}; each image needs exactly (H/32)*(W/32) placeholder tokens"
        )
    # Index of each image token within its image, and which image it belongs to.
    image_of_token = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum()), device=device) - starts[image_of_token]
    first_of_image = torch.zeros(n, dtype=torch.bool, device=device)
    first_of_image[image_mask.nonzero().squeeze(1)[starts[counts > 0]]] = True
    # Every text token and the first token of every image advance t by one; t restarts per document.
    step = (~image_mask | first_of_image).long()
    total = torch.cumsum(step, 0)
    doc = torch.cumsum(segment_starts.long(), 0) - 1
    doc_base = (total - step)[segment_starts.nonzero().squeeze(1)]
    t = total - 1 - doc_base[doc.clamp(min=0)]
    pos = t[:, None].repeat(1, 3)
    widths = image_token_grids[image_of_token, 1]
    pos[image_mask, 1] = local // widths
    pos[image_mask, 2] = local % widths
    return pos
