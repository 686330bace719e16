"""Every RNG a process draws from (torch with CUDA, Python's `random`, NumPy's global RNG), seeded from train.seed.

- Each rank: `seed_all(train.seed + 7919 * rank)` at the start of a run (train/loop.py); the checkpoint saves all
  four states per rank and a resume restores them (checkpoint/manager.py rng_state / set_rng_state).
- Each loader worker: torch seeds a worker's torch, random and NumPy from the DataLoader's generator, which is
  seeded from train.seed alone, so worker w of every rank starts alike and a resumed worker starts where a fresh
  one did. The loader reseeds them instead from (train.seed, reader, where the reader's stream stands), and before
  each sample it processes from (train.seed, reader, the sample's address): a draw made while processing a
  sample (an augmentation) is a function of the checkpointed stream position, the same in a resumed run, for a
  sample re-read from the packer's buffer at resume, and after a resume on another world size with the same
  readers. In the main process (data.num_workers=0) a sample's draws are made between saved and restored states,
  so data processing never moves the training process's own streams (dropout).
- Each GRPO rollout (objectives/grpo.py): a prompt batch's completions are sampled from torch's generators seeded
  from (train.seed, the addresses of its prompts), between saved and restored states: the same completions on any
  number of processes and after any resume, and the training streams untouched.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import get_worker_info

_U64 = (1 << 64) - 1
WORKER_STREAM, SAMPLE_STREAM = 0x5EED_0001, 0x5EED_0002  # keep worker and sample seeds apart from each other
ROLLOUT_STREAM = 0x5EED_0003  # objective=grpo: a prompt batch's sampling seed, from its prompts' addresses


def derive_seed(*words: int) -> int:
    """A 63-bit seed from integers (a seed, a reader, a sample address), through NumPy's SeedSequence: any change
    of any word gives an unrelated seed."""
    state = np.random.SeedSequence([int(w) & _U64 for w in words]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def _numpy_words(seed: int) -> list[int]:
    """NumPy's legacy seed takes 32-bit words: the seed's low and high halves (negative seeds as two's complement)
    and a tag. Both RNGs are MT19937 seeded by init_by_array, and Python's key for a seed is its 32-bit words: without
    the tag NumPy's random() would repeat Python's random() draw for draw."""
    seed &= _U64
    return [seed & 0xFFFF_FFFF, seed >> 32, 0x6E70_7979]


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), Python's random and NumPy's global RNG from one integer (any int:
    torch takes its 64-bit two's complement, as it does for a negative seed itself)."""
    torch.manual_seed(seed & _U64)
    random.seed(seed)
    np.random.seed(_numpy_words(seed))


def seed_host(seed: int) -> None:
    """Seed torch's CPU generator, Python's random and NumPy's global RNG (what a loader worker can draw from)."""
    torch.default_generator.manual_seed(seed & _U64)
    random.seed(seed)
    np.random.seed(_numpy_words(seed))


@contextmanager
def seeded_host(seed: int) -> Iterator[None]:
    """Draws inside come from the host RNGs seeded with `seed`. In a DataLoader worker the RNGs are the worker's
    own and stay seeded; in the main process their states are restored afterwards."""
    if get_worker_info() is not None:
        seed_host(seed)
        yield
        return
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    seed_host(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])
