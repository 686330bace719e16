"""Which sample each reader takes, and in what order: a pure function of (seed, source, epoch, reader).

Every rank runs `num_workers` loader workers; reader c of C = world_size * num_workers takes every C-th sample
of the epoch's global order (shards shuffled per epoch, samples in shard order), so samples, not shards, are
split: every sample is read exactly once per epoch whatever the shard count. Within a reader, samples are
shuffled in blocks of `shuffle_block` by a permutation seeded from (seed, source, epoch, reader, block). Because
the order is a function and not a stateful buffer, a reader's whole position is (epoch, cursor) per source.
A weighted mixture of sources draws which source gives the next sample with counter-based randomness.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) & 0xFFFFFFFF for w in words])


@lru_cache(maxsize=16)
def reader_order(
    counts: tuple[int, ...], seed: int, source: int, epoch: int, reader: int, readers: int, shuffle: bool,
    shuffle_block: int,
) -> np.ndarray:
    """(n, 2) int64 array of (shard, position) addresses reader `reader` visits in `epoch`, in order."""
    n_shards = len(counts)
    shard_order = _rng(seed, source, epoch, 0xA11CE).permutation(n_shards) if shuffle else np.arange(n_shards)
    counts_arr = np.asarray(counts, dtype=np.int64)
    # Global order: shards in shard_order, samples in order within each shard.
    shard_of = np.repeat(shard_order, counts_arr[shard_order])
    starts = np.concatenate([[0], np.cumsum(counts_arr[shard_order])[:-1]])
    position = np.arange(shard_of.shape[0]) - np.repeat(starts, counts_arr[shard_order])
    mine = np.stack([shard_of, position], axis=1)[reader::readers]
    if shuffle and shuffle_block > 1:
        for b, start in enumerate(range(0, mine.shape[0], shuffle_block)):
            block = mine[start : start + shuffle_block]
            mine[start : start + shuffle_block] = block[_rng(seed, source, epoch, reader, b).permutation(len(block))]
    return mine


def mixture_choice(seed: int, reader: int, draw: int, weights: list[float], active: list[bool]) -> int | None:
    """The source for the `draw`-th sample of a reader (None when no source is active)."""
    w = np.asarray([wt if a else 0.0 for wt, a in zip(weights, active, strict=True)], dtype=np.float64)
    if w.sum() <= 0:
        return None
    if np.count_nonzero(w) == 1:
        return int(np.flatnonzero(w)[0])
    u = _rng(seed, reader, draw, 0xB0B).random()
    return int(np.searchsorted(np.cumsum(w) / w.sum(), u, side="right"))
