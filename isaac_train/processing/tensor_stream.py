"""TensorStream: a sample as an ordered list of text and image events (isaac_spec.md §6), our own code.

An event is a run of text token ids or one image's patches, with its layout in decoder tokens
(`dims_virtual`: text (n, 1, 1), image (1, H/32, W/32)) and in real tensor rows (`dims_real`: image
(1, H/16, W/16)), the live part of its virtual tokens (`idx_range`, partial after left truncation) and a role
(None = always in the loss, as in Perceptron's streams). A TensorStream holds one list of events per batch row.
The model embeds a stream directly (`IsaacModel.embed_stream`) and derives the 3-D RoPE positions from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum

import torch


class Modality(IntEnum):
    """Perceptron's codes: VisionType.image = 0, TextType.text = 1, TextType.padding = 2."""

    image = 0
    text = 1
    padding = 2


@dataclass
class Event:
    """One text run or one image of a stream."""

    type: Modality
    data: torch.Tensor  # text: (n,) long ids; image: (H*W, 3*p*p) float patches
    dims_virtual: tuple[int, int, int]
    dims_real: tuple[int, int, int]
    idx_range: tuple[int, int]
    role: str | None = None
    time: tuple[float, float] = (0.0, 0.0)
    tags: dict = field(default_factory=dict)

    @classmethod
    def text(cls, ids: torch.Tensor | list[int], role: str | None = None, time: float = 0.0) -> Event:
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        n = ids.numel()
        return cls(Modality.text, ids, (n, 1, 1), (n, 1, 1), (0, n), role, (time, time))

    @classmethod
    def image(
        cls, patches: torch.Tensor, grid: tuple[int, int], merge: int, role: str | None = None, time: float = 0.0
    ) -> Event:
        h, w = int(grid[0]), int(grid[1])
        if patches.shape[0] != h * w:
            raise ValueError(f"image event has {patches.shape[0]} patches but its grid {h}x{w} needs {h * w}")
        if h % merge or w % merge:
            raise ValueError(f"image grid {h}x{w} is not divisible by the pixel shuffle scale {merge}")
        virtual = (1, h // merge, w // merge)
        return cls(Modality.image, patches, virtual, (1, h, w), (0, virtual[1] * virtual[2]), role, (time, time))

    def num_tokens(self, partial: bool = True) -> int:
        if partial:
            return self.idx_range[1] - self.idx_range[0]
        return self.dims_virtual[0] * self.dims_virtual[1] * self.dims_virtual[2]

    def slice_tokens(self, start: int, end: int) -> Event:
        """Narrow the live range to virtual tokens [start, end) of this event (within the current range)."""
        lo, hi = self.idx_range
        return replace(self, idx_range=(max(lo, start), min(hi, end)))


@dataclass
class TensorStream:
    """One list of events per batch row.

    A row may hold several documents (a packed row): `doc_starts[r]` lists the indices of the events that start
    a document in row r (always including 0). Positions restart at every document start and attention must not
    cross them (`cu_seqlens()`).
    """

    rows: list[list[Event]]
    doc_starts: list[list[int]] | None = None

    @classmethod
    def pack(cls, samples: list[TensorStream]) -> TensorStream:
        """Concatenate single-row streams (one document each) into one packed row."""
        events, starts = [], []
        for sample in samples:
            if len(sample.rows) != 1 or (sample.doc_starts and sample.doc_starts[0] != [0]):
                raise ValueError("TensorStream.pack takes single-row, single-document streams")
            starts.append(len(events))
            events.extend(sample.rows[0])
        return cls([events], [starts])

    def _doc_starts(self, row: int) -> set[int]:
        return set(self.doc_starts[row]) if self.doc_starts else {0}

    def cu_seqlens(self) -> torch.Tensor:
        """int32 boundaries of the documents over the flattened (B*T) tokens (padding counts as its own)."""
        bounds, offset = [0], 0
        for r, row in enumerate(self.rows):
            starts = self._doc_starts(r)
            for i, e in enumerate(row):
                if i and (i in starts or e.type == Modality.padding or row[i - 1].type == Modality.padding):
                    bounds.append(offset)
                offset += e.num_tokens()
            bounds.append(offset)
        return torch.tensor(sorted(set(bounds)), dtype=torch.int32)

    def slice(self, start: int, end: int) -> TensorStream:
        """Keep tokens [start, end) of every row (events partly inside keep a narrowed idx_range), as
        Perceptron's `slice`: positions of kept tokens are those they had (h/w of a cut image included)."""
        rows, doc_starts = [], []
        for r, row in enumerate(self.rows):
            kept, new_starts, offset, starts = [], [], 0, self._doc_starts(r)
            for i, e in enumerate(row):
                n = e.num_tokens()
                lo, hi = max(start - offset, 0), min(end - offset, n)
                offset += n
                if lo >= hi:
                    continue
                if i in starts or not kept:
                    new_starts.append(len(kept))
                base = e.idx_range[0]
                kept.append(e if (lo, hi) == (0, n) else e.slice_tokens(base + lo, base + hi))
            rows.append(kept)
            doc_starts.append(new_starts)
        return TensorStream(rows, doc_starts if self.doc_starts else None)

    @property
    def shape(self) -> tuple[int, int]:
        lengths = {sum(e.num_tokens() for e in row) for row in self.rows}
        if len(lengths) != 1:
            raise ValueError(f"TensorStream rows have different lengths {sorted(lengths)}; pad them first")
        return len(self.rows), lengths.pop()

    def events(self, modality: Modality | None = None) -> list[Event]:
        """All events of all rows in order, optionally of one modality."""
        return [e for row in self.rows for e in row if modality is None or e.type == modality]

    def modality_mask(self) -> torch.Tensor:
        """(B, T) long: the modality code of every live token."""
        return torch.stack([
            torch.cat([torch.full((e.num_tokens(),), int(e.type), dtype=torch.long) for e in row]) for row in self.rows
        ])

    def position_ids(self) -> torch.Tensor:
        """(B, T, 3) long mRoPE positions (isaac_spec.md §6.5), text as (t, t, t), padding as (0, 0, 0)."""
        rows = []
        for r, row in enumerate(self.rows):
            parts, counter, starts = [], 0, self._doc_starts(r)
            for i, e in enumerate(row):
                if i in starts:
                    counter = 0
                if e.type == Modality.padding:
                    # Padding (our batched inference only) sits outside the sequence: position 0, no time step.
                    parts.append(torch.zeros(e.num_tokens(), 3, dtype=torch.long))
                    continue
                t_len, h, w = e.dims_virtual
                t = torch.arange(counter, counter + t_len).repeat_interleave(h * w)
                hh = torch.arange(h).repeat_interleave(w).repeat(t_len)
                ww = torch.arange(w).repeat(t_len * h)
                pos = torch.stack([t, hh, ww], dim=-1) if e.type == Modality.image else torch.stack([t, t, t], -1)
                parts.append(pos[e.idx_range[0] : e.idx_range[1]])
                counter += t_len
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def input_ids(self, image_token_id: int, pad_token_id: int = 0) -> torch.Tensor:
        """(B, T) ids: text ids, `image_token_id` at image positions, `pad_token_id` at padding."""
        rows = []
        for row in self.rows:
            parts = []
            for e in row:
                lo, hi = e.idx_range
                if e.type == Modality.text:
                    parts.append(e.data.reshape(-1)[lo:hi].long())
                else:
                    fill = image_token_id if e.type == Modality.image else pad_token_id
                    parts.append(torch.full((hi - lo,), fill, dtype=torch.long))
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def image_patches(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """All images' full patches concatenated in stream order, and their real grids (n, 2)."""
        images = self.events(Modality.image)
        if not images:
            return None, None
        patches = images[0].data if len(images) == 1 else torch.cat([e.data for e in images])
        grids = torch.tensor([e.dims_real[1:] for e in images], dtype=torch.long)
        return patches, grids

    def image_token_slices(self) -> list[tuple[int, int]]:
        """For each image in order, the live part (start, end) of its full run of projected features."""
        return [e.idx_range for e in self.events(Modality.image)]
