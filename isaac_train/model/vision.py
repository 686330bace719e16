"""Isaac's vision side over packed patches: SigLIP2 (NaFlex) tower, pixel shuffle, MLP projector.

Input is every image's patches concatenated, (sum_i H_i*W_i, 3*p*p) with patch vectors ordered
(row-in-patch, col-in-patch, channel), plus each image's real grid (H_i, W_i) (a (n, 2) tensor or, from the
host, a list of pairs). Attention is per image (bidirectional), images of one size batched together, and never
crosses images. Key names follow Perceptron's checkpoints:
`vision_embedding.0.{embeddings,encoder,post_layernorm}`, `vision_embedding.1` and `.3` for the projector.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.siglip2.modeling_siglip2 import Siglip2Encoder, Siglip2VisionEmbeddings

from ..processing.image_processing import normalize_patches
from .attention import ATTN_FUNCTION_NAME, AttentionSpec, resolve_backend
from .config import IsaacConfig, IsaacVisionConfig

Grids = torch.Tensor | list[tuple[int, int]]


def grid_list(grids: Grids) -> list[tuple[int, int]]:
    """Image grids as host (H, W) pairs (a device tensor is read once)."""
    rows = grids.tolist() if isinstance(grids, torch.Tensor) else grids
    return [(int(h), int(w)) for h, w in rows]


def grid_cu_seqlens(grids: Grids) -> list[int]:
    """(n+1) cumulative patch counts of images with real grids (H_i, W_i)."""
    cu = [0]
    for h, w in grid_list(grids):
        cu.append(cu[-1] + h * w)
    return cu


class IsaacVisionEmbeddings(Siglip2VisionEmbeddings):
    """SigLIP2's patch + learned position embeddings, for packed images of any size.

    The 16x16 position table is resized per image to its real grid with bilinear, antialiased interpolation
    (as Perceptron does), even when the grid is already 16x16 (then it is the identity).
    """

    def forward(self, patches: torch.Tensor, grids: Grids) -> torch.Tensor:  # type: ignore[override]
        weight = self.patch_embedding.weight
        embeds = self.patch_embedding(patches.to(weight.dtype))
        side = self.position_embedding_size
        table = self.position_embedding.weight.reshape(side, side, -1).permute(2, 0, 1)[None].float()
        resized: dict[tuple[int, int], torch.Tensor] = {}
        parts = []
        for h, w in grid_list(grids):
            if (h, w) not in resized:
                grid = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
                resized[(h, w)] = grid[0].reshape(grid.shape[1], h * w).T.to(embeds.dtype)
            parts.append(resized[(h, w)])
        return embeds + torch.cat(parts, dim=0)


def pixel_shuffle_index(grids: Grids, scale: int) -> torch.Tensor:
    """Gather index (N / scale^2, scale^2) for space-to-depth over packed images (isaac_spec.md §4).

    Output token (br, bc) of image i takes inputs o_i + (br*s + dr) * W_i + (bc*s + dc) for (dr, dc) in
    row-major order (top-left, top-right, bottom-left, bottom-right for s = 2); blocks are row-major. Built on
    the host.
    """
    parts, offset = [], 0
    sub = torch.arange(scale)
    for h, w in grid_list(grids):
        if h % scale or w % scale:
            raise ValueError(f"image grid {h}x{w} is not divisible by the pixel shuffle scale {scale}")
        br = torch.arange(h // scale)[:, None, None, None]
        bc = torch.arange(w // scale)[None, :, None, None]
        dr = sub[None, None, :, None]
        dc = sub[None, None, None, :]
        idx = offset + (br * scale + dr) * w + (bc * scale + dc)
        parts.append(idx.reshape(-1, scale * scale))
        offset += h * w
    return torch.cat(parts, dim=0)


class IsaacVisionTransformer(nn.Module):
    """`vision_embedding.0`: embeddings, SigLIP2 encoder over packed images, post-layernorm, pixel shuffle."""

    def __init__(self, config: IsaacVisionConfig, parent: IsaacConfig) -> None:
        super().__init__()
        # A private copy whose attention implementation is ours; the parent config may be re-dispatched by
        # transformers (sdpa/eager) without touching the layers.
        layer_config = copy.deepcopy(config)
        layer_config._attn_implementation = ATTN_FUNCTION_NAME
        self.config = config
        self.parent_config = parent  # the one `attn_backend` switch lives there
        self.embeddings = IsaacVisionEmbeddings(layer_config)
        self.encoder = Siglip2Encoder(layer_config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.scale = config.pixel_shuffle_scale_factor

    def forward(self, patches: torch.Tensor, grids: Grids) -> torch.Tensor:
        grids = grid_list(grids)
        hidden = self.embeddings(patches, grids)
        backend = resolve_backend(self.parent_config.attn_backend, hidden.device, hidden.dtype)
        spec = AttentionSpec.for_segments(backend, False, grid_cu_seqlens(grids), hidden.device)
        hidden = self.encoder(inputs_embeds=hidden[None], attention_mask=spec).last_hidden_state[0]
        hidden = self.post_layernorm(hidden)
        if self.scale > 1:
            index = pixel_shuffle_index(grids, self.scale).to(hidden.device, non_blocking=True)
            hidden = hidden[index].reshape(index.shape[0], -1)
        return hidden


class IsaacVisionEmbedding(nn.Sequential):
    """`model.vision_embedding`: [0] vision transformer, [1] Linear, [2] SiLU, [3] Linear (no biases).

    An nn.Sequential so that the state-dict indices match Perceptron's checkpoints; its forward takes the
    image grids as well.
    """

    def __init__(self, config: IsaacConfig) -> None:
        vc = config.vision_config
        merged = vc.hidden_size * vc.pixel_shuffle_scale_factor**2
        super().__init__(
            IsaacVisionTransformer(vc, config),
            nn.Linear(merged, 4 * merged, bias=False),
            nn.SiLU(),
            nn.Linear(4 * merged, config.hidden_size, bias=False),
        )
        self.parent_config = config  # normalisation settings for uint8 patches

    def forward(self, patches: torch.Tensor, grids: Grids) -> torch.Tensor:  # type: ignore[override]
        """(sum H_i*W_i, 3*p*p) patches and (n, 2) real grids -> (sum H_i*W_i / s^2, text hidden) features.

        Patches are normalised floats, or raw uint8 that are normalised here (bit-exact with the processor)."""
        if patches.dtype == torch.uint8:
            c = self.parent_config
            patches = normalize_patches(patches, c.vision_rescale_factor, c.vision_mean, c.vision_std)
        hidden = self[0](patches, grids)
        return self[3](self[2](self[1](hidden)))
