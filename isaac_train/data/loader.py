"""The streaming loader: shards -> decode -> IsaacProcessor -> packer -> PackedBatch, resumable exactly.

Decoding, processing and packing run in DataLoader worker processes. Each worker is one *reader*
(order.py) with its own packer; every batch it yields carries the reader's state after that batch: per source
(epoch, cursor), the mixture draw counter, the addresses of the samples waiting in the packer, and cumulative
skip counts. The main process keeps the state of the last batch *consumed* from each reader, so
`state_dict()` never counts prefetched batches; `load_state_dict()` restarts every reader where it stopped,
re-reading and re-processing the few samples that were waiting in its packer, and rotates the workers so the
round-robin order of batches continues exactly. Resuming with another world size, worker count or data
configuration is refused with a message. Each worker's RNGs (torch, random, NumPy) are seeded from train.seed, its
reader and its place in the stream, and again before each sample from the sample's address (seeding.py); images
over `max_image_pixels` are skipped from their header, never decoded (decode.py).

Data that yields nothing stops instead of hanging: a source with fewer samples than the job has readers is refused
at construction (every rank computes the same, so all refuse together), and a reader whose source completes an
epoch without one usable sample raises NoUsableSamples naming the shards and the skip reasons.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..processing.processor import IsaacProcessor
from .decode import SkipSample, encode_members, encode_pair
from .order import mixture_choice, reader_order
from .packing import PackedBatch, Packer, PackItem, item_from_pair, item_from_sample
from .prompts import PromptBatch, PromptItem, encode_prompt
from .records import DEFAULT_MAX_IMAGE_PIXELS, set_max_image_pixels
from .seeding import SAMPLE_STREAM, WORKER_STREAM, derive_seed, seed_host, seeded_host
from .shards import SampleReadError, ShardSet, read_sample

logger = logging.getLogger(__name__)


@dataclass
class SourceSpec:
    """One shard set of a mixture."""

    name: str
    shards: Any  # anything ShardSet accepts
    weight: float = 1.0


@dataclass
class LoaderSpec:
    """What the loader produces; everything here except `num_workers`/`prefetch` defines the data stream."""

    sources: list[SourceSpec]
    seq_len: int
    rows_per_batch: int = 1
    max_patches_per_row: int | None = None
    pack_buffer: int = 64
    seed: int = 0
    shuffle: bool = True
    shuffle_block: int = 1024
    epochs: int | None = None  # None: repeat forever (training); N: stop after N epochs of every source
    length_policy: str = "truncate"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # images over it are skipped from their header (image_too_large)
    max_error_rate: float = 0.1
    min_samples_for_error_rate: int = 200
    num_workers: int = 2
    prefetch_factor: int = 2
    pairs: bool = False  # preference pairs (objective=dpo): each sample two documents packed together, never cut
    shared_pair_images: bool = True  # a pair's second document reuses the first's images (vision once per pair)
    # Prompts (objective=grpo): each batch is `rows_per_batch` prompts (PromptBatch), not packed rows; a prompt
    # must leave `completion_room` tokens of seq_len for its completion
    prompts: bool = False
    completion_room: int = 0

    def fingerprint(self, shard_sets: list[ShardSet]) -> str:
        stream = {k: v for k, v in asdict(self).items() if k not in ("num_workers", "prefetch_factor",
                                                                     "max_error_rate", "min_samples_for_error_rate")}
        stream["sources"] = [(s.name, s.weight, ss.fingerprint()) for s, ss in zip(self.sources, shard_sets,
                                                                                    strict=True)]
        if stream["max_image_pixels"] == DEFAULT_MAX_IMAGE_PIXELS:  # checkpoints from before the setting still resume
            del stream["max_image_pixels"]
        if not stream["pairs"]:  # likewise from before objective=dpo
            del stream["pairs"], stream["shared_pair_images"]
        if not stream["prompts"]:  # and objective=grpo
            del stream["prompts"], stream["completion_room"]
        return hashlib.sha256(json.dumps(stream, sort_keys=True, default=str).encode()).hexdigest()[:16]


class NoUsableSamples(RuntimeError):
    """A source completed an epoch without a single usable sample for a reader: it would spin forever."""


@dataclass
class ReaderState:
    """Where one reader is: per source (epoch, cursor), mixture draws, pending packer addresses, counts."""

    epochs: list[int]
    cursors: list[int]
    draws: int = 0
    pending: list[tuple[int, int, int]] = field(default_factory=list)  # (source, epoch, index in reader order)
    seen: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    # Per source, in its current epoch: samples that loaded, and skips by reason. Kept in the state so that a resume
    # in the middle of an epoch still knows whether the epoch has had a usable sample.
    usable: list[int] = field(default_factory=list)
    epoch_skipped: list[dict[str, int]] = field(default_factory=list)


class _Reader:
    """One reader's stream of samples and packed batches (runs inside a DataLoader worker)."""

    def __init__(self, spec: LoaderSpec, shard_sets: list[ShardSet], processor: IsaacProcessor, reader: int,
                 readers: int, state: ReaderState | None) -> None:
        self.spec, self.sets, self.processor = spec, shard_sets, processor
        self.reader, self.readers = reader, readers
        n = len(shard_sets)
        self.state = copy.deepcopy(state) if state else ReaderState(epochs=[0] * n, cursors=[0] * n, usable=[0] * n)
        if len(self.state.usable) != n:  # a checkpoint from before `usable`: assume its epochs had usable samples
            self.state.usable = [1] * n
        if len(self.state.epoch_skipped) != n:
            self.state.epoch_skipped = [{} for _ in range(n)]
        self.skipped = Counter(self.state.skipped)
        self.examples: list[dict[str, str]] = [{} for _ in range(n)]  # per source: one skip message per reason
        self.packer = Packer(spec.seq_len, spec.rows_per_batch, processor.tokenizer.pad_token_id,
                             spec.max_patches_per_row, spec.pack_buffer)

    def _order(self, source: int, epoch: int):
        return reader_order(tuple(self.sets[source].counts), self.spec.seed, source, epoch, self.reader,
                            self.readers, self.spec.shuffle, self.spec.shuffle_block)

    def _active(self) -> list[bool]:
        last = self.spec.epochs
        return [last is None or e < last for e in self.state.epochs]

    def _next_address(self) -> tuple[int, int, int] | None:
        """Advance the mixture and the chosen source's cursor; None when every source is done."""
        while True:
            source = mixture_choice(self.spec.seed, self.reader, self.state.draws,
                                    [s.weight for s in self.spec.sources], self._active())
            if source is None:
                return None
            epoch, cursor = self.state.epochs[source], self.state.cursors[source]
            if cursor >= len(self._order(source, epoch)):
                if self.state.usable[source] == 0:
                    raise self._no_usable_samples(source, epoch, cursor)
                self.state.epochs[source] += 1
                self.state.cursors[source] = 0
                self.state.usable[source], self.state.epoch_skipped[source], self.examples[source] = 0, {}, {}
                continue  # the same draw picks again among the still-active sources
            self.state.draws += 1
            self.state.cursors[source] += 1
            return source, epoch, cursor

    def _no_usable_samples(self, source: int, epoch: int, tried: int) -> NoUsableSamples:
        shards, examples = self.sets[source], self.examples[source]
        reasons = [f"  {reason}: {n}" + (f", e.g. {examples[reason]}" if reason in examples else "")
                   for reason, n in sorted(self.state.epoch_skipped[source].items(), key=lambda kv: -kv[1])]
        target = shards.spec if isinstance(shards.spec, (str, Path)) else Path(shards.tars[0]).parent
        return NoUsableSamples("\n".join([
            f"no usable sample in epoch {epoch} of data source '{self.spec.sources[source].name}': loader reader "
            f"{self.reader} of {self.readers} tried {tried} samples and skipped them all.",
            f"  shards: {shards.describe()}", *reasons,
            f"Run `isaac-data validate {target}` to see each bad sample, then fix the shards or leave them out of "
            "data.train_shards / data.eval_shards.",
        ]))

    def _load(self, address: tuple[int, int, int], fresh: bool = True) -> PackItem | PromptItem | None:
        """The sample at `address` packed-ready, or None when it is skipped (counted by reason). `fresh`: its first
        read (not a pending sample re-read at resume), so it counts in its epoch's usable/skip tallies."""
        source, epoch, index = address
        shard, position = (int(x) for x in self._order(source, epoch)[index])
        ref = self.sets[source].ref(shard, position)
        try:
            # any draw while processing (an augmentation) is a function of the sample's address (seeding.py)
            key = f"{self.spec.sources[source].name}/{ref.key}"
            with seeded_host(derive_seed(SAMPLE_STREAM, self.spec.seed, self.reader, source, epoch, index)):
                if self.spec.prompts:
                    item = encode_prompt(read_sample(ref), self.processor, key, address,
                                         self.spec.seq_len - self.spec.completion_room,
                                         [f"{ref.shard}#{ref.key}"])
                elif self.spec.pairs:
                    chosen, rejected = encode_pair(read_sample(ref), self.processor, self.spec.seq_len,
                                                   normalize_pixels=False)
                    item = item_from_pair(chosen, rejected, address, key, self.spec.shared_pair_images)
                else:
                    sample = encode_members(read_sample(ref), self.processor, self.spec.seq_len,
                                            self.spec.length_policy, normalize_pixels=False)
                    item = item_from_sample(sample, address, key)
            if not self.spec.prompts and not self.packer.fits(item):
                raise SkipSample("too_long", f"{item.patches} patches exceed max_patches_per_row")
        except (SkipSample, SampleReadError) as err:
            self.skipped[err.reason] += 1
            logger.debug("skip %s (%s): %s", ref.key, err.reason, err)
            if fresh:
                tally = self.state.epoch_skipped[source]
                tally[err.reason] = tally.get(err.reason, 0) + 1
                self.examples[source].setdefault(err.reason, f"{Path(ref.shard).name} {ref.key}: {str(err)[:200]}")
            return None
        if fresh:
            self.state.usable[source] += 1
        return item

    def _fill(self, full, add) -> None:
        """Read the stream's next samples until `full()` or the stream ends, passing each usable one to `add`."""
        while not full():
            address = self._next_address()
            if address is None:
                return
            self.state.seen += 1
            item = self._load(address)
            if item is not None:
                add(item)

    def batches(self) -> Iterator[PackedBatch | PromptBatch]:
        if self.spec.prompts:
            yield from self._prompt_batches()
            return
        for address in self.state.pending:  # samples that were waiting in the packer at the checkpoint
            item = self._load(tuple(address), fresh=False)
            if item is not None:
                self.packer.add(item)
        while True:
            self._fill(self.packer.ready, self.packer.add)
            batch = self.packer.pop_batch()
            if batch is None:
                return
            self.state.batches += 1
            self.state.pending = self.packer.pending_addresses()
            self.state.skipped = dict(self.skipped)
            batch.meta["reader"] = self.reader
            batch.meta["state"] = copy.deepcopy(self.state)
            yield batch


    def _prompt_batches(self) -> Iterator[PromptBatch]:
        """Prompt mode: `rows_per_batch` usable prompts per batch, in stream order (nothing waits between batches);
        the last, short batch of a finite stream is yielded as it is."""
        while True:
            prompts: list[PromptItem] = []
            self._fill(lambda batch=prompts: len(batch) >= self.spec.rows_per_batch, prompts.append)
            if not prompts:
                return
            self.state.batches += 1
            self.state.skipped = dict(self.skipped)
            yield PromptBatch(prompts, [[p.key for p in prompts]],
                              {"reader": self.reader, "state": copy.deepcopy(self.state)})


class PackedDataset(IterableDataset):
    """The IterableDataset the DataLoader workers run: worker w of this rank is reader rank*W + slot."""

    def __init__(self, spec: LoaderSpec, processor: IsaacProcessor, rank: int, world_size: int) -> None:
        super().__init__()
        self.spec, self.processor, self.rank, self.world_size = spec, processor, rank, world_size
        self.shard_sets = [ShardSet(s.shards) for s in spec.sources]
        self.slots = max(spec.num_workers, 1)
        self.rotation = 0
        self.states: list[ReaderState | None] = [None] * self.slots

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        slot = (worker + self.rotation) % self.slots
        reader = self.rank * self.slots + slot
        torch.set_num_threads(1)
        set_max_image_pixels(self.spec.max_image_pixels)  # inherited from the main process, but not under spawn
        if info is not None:  # torch seeded this worker alike on every rank and at every resume: reseed (seeding.py)
            state = self.states[slot]
            seed_host(derive_seed(WORKER_STREAM, self.spec.seed, reader, state.batches if state else 0))
        stream = _Reader(self.spec, self.shard_sets, self.processor, reader, self.world_size * self.slots,
                         self.states[slot])
        for batch in stream.batches():
            batch.meta["slot"] = slot
            yield batch


class PackedLoader:
    """Iterate PackedBatches; `state_dict()`/`load_state_dict()` resume exactly; skip counts and data wait time.

    Args:
        spec: the stream definition (sources, seq_len, packing, shuffling, workers).
        processor: turns samples into tokens, labels and patches.
        rank, world_size: this process's place in data parallelism.
    """

    def __init__(self, spec: LoaderSpec, processor: IsaacProcessor, rank: int = 0, world_size: int = 1) -> None:
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.dataset = PackedDataset(spec, processor, rank, world_size)
        self._refuse_empty_readers()
        set_max_image_pixels(spec.max_image_pixels)  # the process's image checks and PIL's own (records.py)
        self.fingerprint = spec.fingerprint(self.dataset.shard_sets)
        self.consumed = 0
        self.states: list[ReaderState | None] = [None] * self.dataset.slots
        self.data_wait_s = 0.0
        self._iter: Iterator[PackedBatch] | None = None

    def _refuse_empty_readers(self) -> None:
        """Reader c of C takes every C-th sample of a source (order.py): a source with fewer than C samples leaves
        some reader, on some rank, with nothing, and that rank would hang the others. Every rank refuses alike."""
        readers = self.world_size * self.dataset.slots
        for source, shards in zip(self.spec.sources, self.dataset.shard_sets, strict=True):
            if len(shards) < readers:
                raise ValueError(
                    f"data source '{source.name}' [{shards.describe()}] holds {len(shards)} sample(s) but the job has "
                    f"{readers} loader readers ({self.world_size} processes x data.num_workers={self.spec.num_workers}"
                    f"{' (counted as 1)' if self.spec.num_workers == 0 else ''}), and each reader needs at least one "
                    f"sample of every source. Run fewer processes, lower data.num_workers, or give this source at "
                    f"least {readers} samples."
                )

    def _dataloader(self) -> DataLoader:
        workers = self.spec.num_workers
        return DataLoader(
            self.dataset, batch_size=None, num_workers=workers,
            prefetch_factor=self.spec.prefetch_factor if workers else None,
            persistent_workers=False,
            # its own generator: creating the iterator must not draw from the global RNG (dropout, LoRA), or a
            # resumed run would diverge from an uninterrupted one
            generator=torch.Generator().manual_seed(self.spec.seed),
            worker_init_fn=ignore_stop_signals if workers else None,
        )

    def __iter__(self) -> Iterator[PackedBatch]:
        self.dataset.rotation = self.consumed % self.dataset.slots
        self.dataset.states = copy.deepcopy(self.states)
        it = iter(self._dataloader())
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            except NoUsableSamples as err:  # from a worker, torch puts its traceback first: the message goes first
                failure = _worker_message(err)
                err.with_traceback(None)  # torch's reraise leaves it in a cycle with its frames, which hold `it`
                break
            self.data_wait_s += time.perf_counter() - start
            self.states[batch.meta["slot"]] = batch.meta.pop("state")
            self.consumed += 1
            self._check_error_rate()
            yield batch
        # Freed here (not by a later garbage collection) the DataLoader iterator stops its workers at once; left to
        # the collector, its shutdown takes 5 s per worker.
        del it
        raise NoUsableSamples(failure)

    # ---- accounting --------------------------------------------------------------------------------------

    def skip_counts(self) -> dict[str, int]:
        """Samples skipped so far on this rank, by reason (exact, up to the last consumed batch)."""
        total: Counter = Counter()
        for s in self.states:
            if s is not None:
                total.update(s.skipped)
        return dict(total)

    def samples_seen(self) -> int:
        return sum(s.seen for s in self.states if s is not None)

    def _check_error_rate(self) -> None:
        seen, skipped = self.samples_seen(), self.skip_counts()
        bad = sum(skipped.values())
        if seen >= self.spec.min_samples_for_error_rate and bad > self.spec.max_error_rate * seen:
            worst = max(skipped, key=skipped.get)
            raise RuntimeError(
                f"{bad} of {seen} samples were skipped ({bad / seen:.1%} > data.max_error_rate="
                f"{self.spec.max_error_rate}); most are '{worst}' ({skipped[worst]}): {skipped}. Run "
                "`isaac-data validate` on the shards to see each bad sample, fix or drop them, or raise "
                "data.max_error_rate."
            )

    # ---- resume ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint, "world_size": self.world_size, "rank": self.rank,
            "num_workers": self.dataset.slots, "consumed": self.consumed,
            "readers": [asdict(s) if s is not None else None for s in self.states],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        problems = []
        if state["fingerprint"] != self.fingerprint:
            problems.append("the data configuration or the shards changed (data.*, train.seq_len, train.seed)")
        if state["world_size"] != self.world_size:
            problems.append(f"world size {state['world_size']} -> {self.world_size}")
        if state["num_workers"] != self.dataset.slots:
            problems.append(f"data.num_workers {state['num_workers']} -> {self.dataset.slots}")
        if problems:
            raise ValueError(
                "cannot resume the data loader exactly: " + "; ".join(problems) + ". Resume with the settings of "
                "the checkpoint, or start a new run directory."
            )
        self.consumed = state["consumed"]
        self.states = [ReaderState(**s) if s is not None else None for s in state["readers"]]


def ignore_stop_signals(_worker_id: int) -> None:
    """In each DataLoader worker: SIGTERM / SIGUSR1 from anyone but the main process are for the training
    process. A batch system (or torchrun) signals the whole process group; a worker that died of it would end
    the run before its checkpoint. SIGTERM from the main process still ends the worker at once, as torch's own
    handler does (its shutdown path), and the worker dies with the main process (a parent-death signal: torch's own
    watchdog would take up to 5 s, and a kill -9 of the rank must leave no worker behind)."""
    from ..distributed.lifecycle import die_with_parent

    die_with_parent()
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the rank died before the request took effect
        os._exit(0)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit the mask

    def wait_for_parent() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
                os._exit(0)

    threading.Thread(target=wait_for_parent, name="sigterm-from-parent", daemon=True).start()


def _worker_message(err: NoUsableSamples) -> str:
    """The reader's own message, out of the text torch makes for an exception raised in a DataLoader worker
    ("Caught NoUsableSamples in DataLoader worker process 0. Original Traceback ...: <message>")."""
    text = str(err)
    marker = f"{NoUsableSamples.__name__}: "
    if not text.startswith("Caught ") or marker not in text:
        return text
    return text.rsplit(marker, 1)[1].strip()


def reshard_loader_state(saved: list[dict[str, Any]], rank: int, world_size: int, num_workers: int) -> dict[str, Any]:
    """This rank's loader state, made from the states of every rank of a run with another world size.

    Exact when the total number of readers (processes x workers) is the same and every reader has produced the
    same number of batches (true at a step boundary when each step takes one batch from every reader, e.g.
    2 processes x 1 worker x grad_accum 1 -> 1 process x 2 workers x grad_accum 2)."""
    saved = sorted(saved, key=lambda s: s["rank"])
    old_world, old_slots = saved[0]["world_size"], saved[0]["num_workers"]
    slots = max(num_workers, 1)
    if [s["rank"] for s in saved] != list(range(old_world)):
        raise ValueError(f"the checkpoint holds data states of ranks {[s['rank'] for s in saved]}, expected "
                         f"0..{old_world - 1}: it is incomplete")
    if old_world * old_slots != world_size * slots:
        raise ValueError(
            f"cannot resume the data loader exactly: the checkpoint read with {old_world} processes x {old_slots} "
            f"workers = {old_world * old_slots} readers, this run has {world_size} x {slots} = {world_size * slots}. "
            "Choose data.num_workers so that processes x workers is the same (and train.grad_accum so that processes "
            "x grad_accum is the same), or start a new run directory.")
    if any(s["consumed"] % old_slots for s in saved) or len({s["consumed"] for s in saved}) != 1:
        raise ValueError("cannot move the data loader to another world size: the checkpoint's readers are not all "
                         "at the same batch (consumed: " + ", ".join(str(s["consumed"]) for s in saved) + ")")
    per_reader = saved[0]["consumed"] // old_slots
    readers = [r for s in saved for r in s["readers"]]
    return {"fingerprint": saved[0]["fingerprint"], "world_size": world_size, "rank": rank, "num_workers": slots,
            "consumed": per_reader * slots, "readers": readers[rank * slots:(rank + 1) * slots]}
