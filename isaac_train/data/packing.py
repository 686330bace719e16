"""Sequence packing: several samples per row of at most `seq_len` decoder tokens and `max_patches` vision patches.

Rows are filled best-fit over a buffer: a row starts with the oldest waiting sample (so none waits forever),
then repeatedly takes the longest waiting sample that still fits (tokens and patches). Nothing in a row is
padding except its tail. A PackedBatch keeps per-document boundaries (`cu_seqlens`), 3-D positions restarting
at 0 in each document, all images' patches with their grids, and labels; and the same structure on the host as a
PackedLayout (padding tails, image grids, label positions), so that the model never reads the device to learn it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.packed import PackedLayout
from ..processing.processor import IGNORE_INDEX, EncodedSample
from ..processing.tensor_stream import Modality, TensorStream


@dataclass
class PackItem:
    """A processed sample waiting to be packed, with its address (so a resumed run can re-read it)."""

    sample: EncodedSample
    address: Any
    key: str
    positions: torch.Tensor  # (T, 3)
    image_tokens: int = 0  # decoder tokens that are image features
    # A preference pair: this item is the prompt + chosen answer, `pair` the prompt + rejected answer, packed right
    # after it in the same row (never split). `shared_images`: the pair's second document reuses the first's images
    # (the vision tower encodes them once per pair).
    pair: PackItem | None = None
    shared_images: bool = False
    group: int | None = None  # the label group of its answer (a GRPO completion), for per-document log-probs

    @property
    def length(self) -> int:
        return len(self.sample) + (self.pair.length if self.pair is not None else 0)

    @property
    def patches(self) -> int:
        pv = self.sample.pixel_values
        own = 0 if pv is None else int(pv.shape[0])
        return own + (self.pair.patches if self.pair is not None and not self.shared_images else 0)

    def documents(self) -> list[PackItem]:
        return [self] if self.pair is None else [self, self.pair]


def select_row(lengths: Sequence[int], patches: Sequence[int], seq_len: int, max_patches: int | None) -> list[int]:
    """Indices (into the waiting list, oldest first) of the samples that make the next row."""
    if not lengths:
        return []
    chosen = [0]
    room, patch_room = seq_len - lengths[0], (max_patches or 0) - patches[0]
    free = set(range(1, len(lengths)))
    while True:
        best, best_len = -1, -1
        for i in free:
            if best_len < lengths[i] <= room and (max_patches is None or patches[i] <= patch_room):
                best, best_len = i, lengths[i]
        if best < 0:
            return chosen
        chosen.append(best)
        free.discard(best)
        room -= lengths[best]
        patch_room -= patches[best]


def simulate_packing(
    lengths: Sequence[int], patches: Sequence[int] | None, seq_len: int, max_patches: int | None = None,
    buffer_size: int = 64,
) -> dict[str, float]:
    """Rows and fill ratio the packer would reach on a stream of sample lengths (for `isaac-data stats` and the
    packing benchmark). Samples longer than `seq_len` are left out and counted."""
    patches = list(patches) if patches is not None else [0] * len(lengths)
    waiting: list[tuple[int, int]] = []
    rows, tokens, too_long = 0, 0, 0
    stream = iter(zip(lengths, patches, strict=True))
    exhausted = False
    while True:
        while not exhausted and len(waiting) < buffer_size:
            nxt = next(stream, None)
            if nxt is None:
                exhausted = True
            elif nxt[0] > seq_len or (max_patches is not None and nxt[1] > max_patches):
                too_long += 1
            else:
                waiting.append(nxt)
        if not waiting:
            break
        idx = select_row([w[0] for w in waiting], [w[1] for w in waiting], seq_len, max_patches)
        tokens += sum(waiting[i][0] for i in idx)
        rows += 1
        waiting = [w for i, w in enumerate(waiting) if i not in set(idx)]
    return {"rows": rows, "tokens": tokens, "fill": tokens / max(rows * seq_len, 1), "too_long": too_long}


@dataclass
class PackedBatch:
    """`rows` packed rows of `seq_len` tokens, ready for `model(**batch.model_inputs())`."""

    input_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L), IGNORE_INDEX on images, prompts and the padding tail
    position_ids: torch.Tensor  # (B, L, 3)
    cu_seqlens: torch.Tensor  # (n_segments + 1,) int32 over the flattened B*L tokens; a padding tail is a segment
    pixel_values: torch.Tensor | None  # (sum H_i*W_i, 3*p*p)
    image_grid_hw: torch.Tensor  # (n_img, 2)
    sample_keys: list[list[str]] = field(default_factory=list)  # per row, the keys of its samples
    meta: dict[str, Any] = field(default_factory=dict)  # loader bookkeeping (skip counts, data wait, ...)
    layout: PackedLayout | None = None  # the host's copy of the structure (see model/packed.py)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return self.input_ids.numel() - self.num_padding

    @property
    def num_padding(self) -> int:
        return int(self.meta.get("padding", 0))

    @property
    def num_label_tokens(self) -> int:
        """Next-token targets in the batch (a document's first token is never a target): what the loss counts."""
        return self.layout.num_label_tokens

    @property
    def num_pairs(self) -> int:
        """Preference pairs in the batch (objective=dpo)."""
        return self.layout.num_groups // 2

    @property
    def fill(self) -> float:
        return self.num_tokens / self.input_ids.numel()

    def model_inputs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input_ids": self.input_ids, "labels": self.labels, "position_ids": self.position_ids}
        if self.layout is not None:
            out["packed"] = self.layout  # boundaries, grids and label positions from the host
        else:
            out.update(cu_seqlens=self.cu_seqlens, image_grid_hw=self.image_grid_hw)
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
        return out

    def to(self, device: torch.device | str) -> PackedBatch:
        """The model's inputs on `device`; the structure (cu_seqlens, image grids, layout) stays on the host."""
        host = ("cu_seqlens", "image_grid_hw")
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k not in host else v)
                 for k, v in self.__dict__.items()}
        return PackedBatch(**moved)


def item_from_sample(sample: EncodedSample, address: Any, key: str) -> PackItem:
    stream = TensorStream([sample.events])
    image_tokens = sum(e.num_tokens() for e in sample.events if e.type == Modality.image)
    return PackItem(sample, address, key, stream.position_ids()[0], image_tokens)


def item_from_pair(chosen: EncodedSample, rejected: EncodedSample, address: Any, key: str,
                   shared_images: bool = True) -> PackItem:
    """A preference pair as one packing unit of two documents (prompt + chosen, prompt + rejected)."""
    item = item_from_sample(chosen, address, key)
    item.pair = item_from_sample(rejected, address, key)
    item.shared_images = shared_images
    return item


def build_batch(rows: list[list[PackItem]], seq_len: int, pad_id: int) -> PackedBatch:
    """Concatenate each row's samples, pad its tail, and gather images in order. A preference pair's documents
    are two segments (its chosen answer's label group 2k, its rejected 2k + 1, k counting pairs in the batch)."""
    ids, labels, positions, bounds, keys, patches, grids = [], [], [], [0], [], [], []
    padding = 0
    pad_segments: list[int] = []
    segment_groups: list[int] = []  # per segment: its label group (pairs), -1 for none
    image_order: list[int] = []  # per placeholder image: which encoded image fills it
    pairs = encoded = 0
    for r, row in enumerate(rows):
        base = r * seq_len
        used = 0
        for item in row:
            first_image = len(image_order)
            for d, doc in enumerate(item.documents()):
                ids.append(doc.sample.input_ids)
                labels.append(doc.sample.labels)
                positions.append(doc.positions)
                used += len(doc.sample)
                bounds.append(base + used)
                segment_groups.append(2 * pairs + d if item.pair is not None else
                                      item.group if item.group is not None else -1)
                count = int(doc.sample.image_grid_hw.shape[0]) if doc.sample.pixel_values is not None else 0
                if d == 1 and item.shared_images:
                    image_order.extend(image_order[first_image:first_image + count])
                    continue
                if count:
                    image_order.extend(range(encoded, encoded + count))
                    encoded += count
                    patches.append(doc.sample.pixel_values)
                    grids.append(doc.sample.image_grid_hw)
            pairs += item.pair is not None
        if used > seq_len:
            raise ValueError(f"row of {used} tokens exceeds seq_len={seq_len}")
        tail = seq_len - used
        if tail:
            ids.append(torch.full((tail,), pad_id, dtype=torch.long))
            labels.append(torch.full((tail,), IGNORE_INDEX, dtype=torch.long))
            positions.append(torch.zeros(tail, 3, dtype=torch.long))
            pad_segments.append(len(bounds) - 1)
            segment_groups.append(-1)
            bounds.append(base + seq_len)
            padding += tail
        keys.append([item.key for item in row])
    b = len(rows)
    input_ids = torch.cat(ids).view(b, seq_len)
    label_rows = torch.cat(labels).view(b, seq_len)
    grid_hw = torch.cat(grids) if grids else torch.zeros(0, 2, dtype=torch.long)
    merge_tokens = sum(doc.image_tokens for row in rows for item in row for doc in item.documents())
    layout = PackedLayout.from_inputs(bounds, label_rows, frozenset(pad_segments),
                                      [tuple(g) for g in grid_hw.tolist()], merge_tokens)
    if image_order != list(range(len(image_order))):
        layout.image_order = image_order
    if pairs or any(g >= 0 for g in segment_groups):
        layout.group_by_segment(segment_groups)
    return PackedBatch(
        input_ids=input_ids,
        labels=label_rows,
        position_ids=torch.cat(positions).view(b, seq_len, 3),
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        pixel_values=torch.cat(patches) if patches else None,
        image_grid_hw=grid_hw,
        sample_keys=keys,
        meta={"padding": padding},
        layout=layout,
    )


class Packer:
    """Best-fit packer over a buffer of `buffer_size` waiting samples; emits batches of `rows` rows."""

    def __init__(self, seq_len: int, rows: int, pad_id: int, max_patches: int | None = None,
                 buffer_size: int = 64) -> None:
        if buffer_size < 1 or rows < 1:
            raise ValueError("packing buffer_size and rows_per_batch must be at least 1")
        self.seq_len, self.rows, self.pad_id = seq_len, rows, pad_id
        self.max_patches, self.buffer_size = max_patches, buffer_size
        self.waiting: list[PackItem] = []

    def fits(self, item: PackItem) -> bool:
        return item.length <= self.seq_len and (self.max_patches is None or item.patches <= self.max_patches)

    def add(self, item: PackItem) -> None:
        if not self.fits(item):
            raise ValueError(f"sample {item.key} ({item.length} tokens, {item.patches} patches) cannot fit a row")
        self.waiting.append(item)

    def ready(self) -> bool:
        return len(self.waiting) >= self.buffer_size

    def pop_batch(self) -> PackedBatch | None:
        """The next batch from the waiting samples (None if there are none)."""
        rows = []
        while self.waiting and len(rows) < self.rows:
            idx = select_row([w.length for w in self.waiting], [w.patches for w in self.waiting], self.seq_len,
                             self.max_patches)
            rows.append([self.waiting[i] for i in idx])
            taken = set(idx)
            self.waiting = [w for i, w in enumerate(self.waiting) if i not in taken]
        return build_batch(rows, self.seq_len, self.pad_id) if rows else None

    def pending_addresses(self) -> list[Any]:
        return [w.address for w in self.waiting]
