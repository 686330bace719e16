"""What the host knows about a packed batch, handed to the model so that a training forward never reads the device.

A packed batch's structure (document boundaries, padding tails, image grids, which positions carry a label) is
decided on the host by the packer. When the model is given it as a `PackedLayout`, it slices attention per
document, lays out images and selects the loss positions from these host values and copies only small index
tensors to the device: no `.item()`, `.tolist()`, `nonzero()` or boolean indexing of device tensors, which on a
GPU would stall the host until every queued kernel has run. Without one, the model derives the same layout from
its tensor inputs (one read of each from the device).

It is a dataclass of lists and CPU tensors: data-parallel wrappers (DDP, FSDP2) move tensor arguments to the
device but pass dataclasses through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .loss import IGNORE_INDEX


@dataclass
class PackedLayout:
    """Host-side layout of a (B, T) packed batch.

    Attributes:
        cu_seqlens: (n_segments + 1) boundaries over the flattened B*T tokens; a padding tail is a segment.
        padding: indices of the segments that are padding tails (never attended, never a label).
        image_grids: each image's real patch grid (H, W), in placeholder order.
        image_tokens: number of image placeholder tokens in input_ids.
        label_index: int64 (n_targets,) flattened positions whose next token (same document) is a label.
        label_targets: int64 (n_targets,) those next tokens.
        image_order: for each image in placeholder order, which of `image_grids` (the images the vision tower
            encodes) fills it; None: the k-th placeholder image is the k-th encoded one. A preference pair's two
            documents share their images this way (the tower runs once per pair).
        label_groups: int64 (n_targets,) the group each target belongs to (preference pairs: 2k the chosen answer of
            the k-th pair, 2k + 1 its rejected answer), for per-document log-probabilities; None: no groups.
        group_tokens: targets per group (host ints), len == the number of groups.
    """

    cu_seqlens: list[int]
    padding: frozenset[int] = frozenset()
    image_grids: list[tuple[int, int]] = field(default_factory=list)
    image_tokens: int = 0
    label_index: torch.Tensor | None = None
    label_targets: torch.Tensor | None = None
    image_order: list[int] | None = None
    label_groups: torch.Tensor | None = None
    group_tokens: list[int] | None = None

    @property
    def num_label_tokens(self) -> int:
        return 0 if self.label_index is None else int(self.label_index.numel())

    @property
    def num_groups(self) -> int:
        return 0 if self.group_tokens is None else len(self.group_tokens)

    def group_by_segment(self, segment_groups: list[int]) -> None:
        """Set `label_groups` / `group_tokens` from each segment's group (-1: none; every labelled segment must
        have one)."""
        import numpy as np

        index = self.label_index.numpy()
        segment = np.searchsorted(np.asarray(self.cu_seqlens), index, side="right") - 1
        groups = np.asarray(segment_groups, dtype=np.int64)[segment]
        if (groups < 0).any():
            raise ValueError("a labelled document of a grouped batch has no group")
        n = max(segment_groups) + 1 if segment_groups else 0
        self.label_groups = torch.from_numpy(groups)
        self.group_tokens = np.bincount(groups, minlength=n).tolist()

    def segment_starts(self, batch: int, length: int) -> torch.Tensor:
        """bool (B, T) on the host: the first token of every segment."""
        starts = torch.zeros(batch * length, dtype=torch.bool)
        starts[self.cu_seqlens[:-1]] = True
        return starts.view(batch, length)

    @classmethod
    def from_inputs(cls, cu_seqlens: list[int], labels: torch.Tensor | None, padding: frozenset[int] = frozenset(),
                    image_grids: list[tuple[int, int]] | None = None, image_tokens: int = 0) -> PackedLayout:
        """Layout from host values; `labels` (B, T) aligned with the inputs (-100: no label), on the host."""
        layout = cls(list(cu_seqlens), frozenset(padding), list(image_grids or []), image_tokens)
        if labels is not None:
            layout.label_index, layout.label_targets = label_positions(labels, layout.cu_seqlens)
        return layout


def label_positions(labels: torch.Tensor, cu_seqlens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened positions p whose target labels[p + 1] is a label within the same document, and those targets.

    Host arithmetic (numpy): the same selection as `shift_labels` + `targets != IGNORE_INDEX` on the device."""
    flat = labels.reshape(-1).numpy()
    nxt = flat[1:].copy()
    if len(nxt):
        ends = [b - 1 for b in cu_seqlens[1:-1]]  # the last token of a document predicts nothing
        nxt[[e for e in ends if e < len(nxt)]] = IGNORE_INDEX
    index = (nxt != IGNORE_INDEX).nonzero()[0]
    return torch.from_numpy(index.astype("int64")), torch.from_numpy(nxt[index].astype("int64"))


def check_segments(cu: list[int], batch: int, length: int) -> None:
    """Boundaries rise from 0 to B*T and every row starts a segment (none crosses a row)."""
    total = batch * length
    if not cu or cu[0] != 0 or cu[-1] != total or any(b < a for a, b in zip(cu[:-1], cu[1:], strict=True)):
        raise ValueError(
            f"cu_seqlens must rise from 0 to B*T={total} (put a row's padding tail in its own segment); got {cu[:8]}..."
        )
    if not set(range(0, total, length)) <= set(cu):
        raise ValueError("cu_seqlens has a document crossing a row boundary; every row must start a segment")
