"""Packed training step against a per-sample loop and pad-to-longest batches: same model, samples and weights.

    python benchmarks/train_throughput.py [--mix short|long|both] [--rounds 3] [--steps 2] [--size 35m]
        [--samples-per-step N] [--seq-len L] [--padded-batching match|budget] [--profile] [--json OUT] [--tiny]

Three ways to train on the same samples, each optimizer step on the same `--samples-per-step` samples:
- packed: what `isaac-train` does. The stream of samples goes through `Packer` (best-fit over `--pack-buffer`
  waiting samples, the trainer's `data.pack_buffer`) into rows of `--seq-len` tokens, `--rows` rows per
  micro-batch (default 1, the trainer's `data.rows_per_batch`); consecutive micro-batches make a step until it
  holds `--samples-per-step` samples (gradient accumulation), and (a) and (b) train on exactly the samples of each
  packed step, in stream order. The model
  gets `cu_seqlens` (attention and positions restart at each document); nothing is padding but each row's tail.
- per-sample (a): one micro-batch per sample, batch size 1, its exact length, no padding, no mask.
- padded (b): the usual Hugging Face collator. Samples, in the step's order, are padded on the right to the
  longest of their micro-batch, labels -100 on padding, the model called with `attention_mask`. (This model's
  attention skips padding runs, so (b) pays for its padding in the embeddings, projections, MLPs, norms and LM
  head input, not in attention: a stock model with a dense (B, L, L) mask pays more.)
  Micro-batching (`--padded-batching`):
    match (default): a fixed micro-batch size B = the mean number of samples per packed micro-batch (rounded),
        i.e. `per_device_train_batch_size=B` and as many micro-batches per step as the packed run has; a
        micro-batch then holds about as many real tokens as a packed one, plus its padding.
    budget: greedy in order, a micro-batch takes samples while (samples x longest) <= seq_len x rows, the same
        token budget (and so about the same activation memory) as a packed micro-batch.
    N: a fixed micro-batch size N.
All three go through the trainer's public pieces: `make_strategy` (strategy single, fp32), its
`forward_backward(inputs, 1 / label tokens of the step)` and `step(clip_grad_norm=1.0)`; AdamW from
`build.build_optimizer` (constant lr 1e-4); everything trains (decoder, projector, vision tower). The loss of a
step is the sum of token losses over its label tokens in every method. Batches are built before the clock starts
(in the trainer, loader workers build them); positions come precomputed for all three.

Samples (built with IsaacProcessor and the tiny tokenizer from synthetic chat text and random-noise images; the
same seeded samples in every run, checked by a fingerprint):
- short: chat answers, ~150 tokens median (text log-normal), 35% with one small image (64-192 px sides).
- long: multi-image chats, ~800 tokens median, 1-3 images with sides 96-512 px (16-256 decoder tokens each).

Measurement. Rounds alternate the methods (packed, per-sample, padded, packed, ...; `--rounds`, default 3) and
each run is a fresh subprocess: it rebuilds the samples, loads the initial weights the parent wrote (one
state_dict, copied into every run), runs one untimed warm-up step (its loss is the first-step loss compared
across methods; AdamW allocates its state here) and then `--steps` timed optimizer steps. Reported per method:
the median over rounds of label tokens/s and samples/s, and memory of the run's process: peak RSS (the kernel's
VmHWM, reset through /proc/self/clear_refs once setup is done and freed memory handed back with malloc_trim, so
it covers the training steps only) and that peak minus the RSS just before the first step (weights and samples
are in the baseline; gradients, AdamW state, activations and allocator slack are in the increase). Without
clear_refs (not Linux) ru_maxrss of the whole subprocess is used and said so. torch uses every core the process
may run on (`--threads`).

The three methods must give the same first-step loss (within 1e-4) and label-token count; if not, the benchmark
prints a MISMATCH banner and exits with status 1. `--profile` adds torch.profiler's top operators of one packed
and one per-sample step. The last lines are a markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("packed", "per-sample", "padded")
TARGETS = {("short", "per-sample"): 1.5, ("long", "per-sample"): 1.0, ("short", "padded"): 1.5,
           ("long", "padded"): 1.5}
LOSS_TOLERANCE = 1e-4


@dataclass
class Mix:
    """A length distribution. Text tokens are log-normal; images carry (H/32)*(W/32) decoder tokens."""

    name: str
    text_median: float
    text_sigma: float
    text_range: tuple[int, int]
    image_prob: float  # chance a sample has images at all
    images: tuple[int, int]  # how many when it has (inclusive)
    side: tuple[int, int]  # image side lengths in pixels (inclusive), drawn per side
    answer_share: float  # fraction of the text in the assistant's answer (the label tokens)
    samples_per_step: int
    seq_len: int


MIXES = {
    "short": Mix("short", 135, 0.6, (16, 900), 0.35, (1, 1), (64, 192), 0.7, samples_per_step=64, seq_len=1024),
    "long": Mix("long", 560, 0.45, (150, 1150), 1.0, (1, 3), (96, 512), 0.6, samples_per_step=24, seq_len=2048),
}
# --tiny: the tiny model, a quarter of the text, small images, short rows.
TINY = {"short": dict(text_median=32, text_range=(8, 150), side=(32, 96), samples_per_step=8, seq_len=256),
        "long": dict(text_median=100, text_range=(30, 260), side=(32, 128), samples_per_step=4, seq_len=512)}


# ---- model and samples (run in every subprocess) -------------------------------------------------------------------


def model_config(size: str):
    """`tiny` (tests), `small` (the CPU demo, ~6M) or `35m`: 8-layer Qwen3 hidden 512 (8 heads / 4 kv of 64, MLP
    1536) + 4-layer SigLIP2 hidden 256 (MLP 1024), up to 1024 patches per image: ~35M parameters."""
    from isaac_train.model.tiny import small_config, tiny_config

    if size == "tiny":
        return tiny_config(attn_backend="auto")
    if size == "small":
        return small_config()
    if size == "35m":
        return small_config(
            text_config=dict(vocab_size=512, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                             num_attention_heads=8, num_key_value_heads=4, head_dim=64, rope_theta=1_000_000.0,
                             max_position_embeddings=8192, bos_token_id=486, eos_token_id=488, pad_token_id=486),
            vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                               patch_size=16, num_patches=256, pixel_shuffle_scale_factor=2),
            vision_max_num_patches=1024, max_sequence_length=8192,
        )
    raise ValueError(f"--size {size!r}: choose tiny, small or 35m")


def corpus_words() -> list[str]:
    import re
    from importlib import resources

    text = resources.files("isaac_train.processing").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"[a-z]+", text.lower())))


def make_samples(processor, mix: Mix, n: int, seed: int) -> list:
    """`n` chat samples of `mix`, encoded for training (labels on the answers)."""
    rng = np.random.default_rng(seed)
    words = np.array(corpus_words())
    probe = " ".join(np.random.default_rng(1).choice(words, 2000))
    tokens_per_word = len(processor.tokenizer(probe, add_special_tokens=False)["input_ids"]) / 2000  # ~3
    lo, hi = mix.text_range
    samples = []
    for _ in range(n):
        text_tokens = int(np.clip(np.exp(rng.normal(np.log(mix.text_median), mix.text_sigma)), lo, hi))
        n_answer = max(1, round(text_tokens * mix.answer_share / tokens_per_word))
        n_question = max(1, round(text_tokens * (1 - mix.answer_share) / tokens_per_word))
        n_images = int(rng.integers(mix.images[0], mix.images[1] + 1)) if rng.random() < mix.image_prob else 0
        images = [rng.integers(0, 256, (int(rng.integers(mix.side[0], mix.side[1] + 1)),
                                        int(rng.integers(mix.side[0], mix.side[1] + 1)), 3), dtype=np.uint8)
                  for _ in range(n_images)]
        question = " ".join(rng.choice(words, n_question)).capitalize() + "?"
        answer = " ".join(rng.choice(words, n_answer)).capitalize() + "."
        messages = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]},
                    {"role": "assistant", "content": answer}]
        samples.append(processor.encode_chat(messages, images, max_length=mix.seq_len, length_policy="truncate"))
    return samples


def fingerprint(samples: list) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.input_ids.numpy().tobytes())
        h.update(s.labels.numpy().tobytes())
        if s.pixel_values is not None:
            h.update(s.pixel_values.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---- the three ways of batching a step -----------------------------------------------------------------------------


@dataclass
class Step:
    """One optimizer step's micro-batches (model inputs) and what they hold."""

    micro: list[dict[str, Any]]
    samples: int
    label_tokens: int  # next-token targets: what the loss divides by
    real_tokens: int
    computed_tokens: int  # decoder positions run through the model (padding included)


def label_targets(sample) -> int:
    from isaac_train.processing.processor import IGNORE_INDEX

    return int((sample.labels[1:] != IGNORE_INDEX).sum())


def packed_batches(items: list, seq_len: int, rows: int, pad_id: int, buffer: int) -> list:
    """The trainer's packing of a stream of samples: a best-fit Packer over `buffer` waiting samples (the loader's
    `data.pack_buffer`), a batch popped whenever the buffer is full, the rest flushed at the end."""
    from isaac_train.data.packing import Packer

    packer = Packer(seq_len, rows, pad_id, buffer_size=buffer)
    batches = []
    for item in items:
        packer.add(item)
        if packer.ready():
            batches.append(packer.pop_batch())
    while (batch := packer.pop_batch()) is not None:
        batches.append(batch)
    return batches


def packed_step(micro: list) -> Step:
    return Step([b.model_inputs() for b in micro], sum(len(r) for b in micro for r in b.sample_keys),
                sum(b.num_label_tokens for b in micro), sum(b.num_tokens for b in micro),
                sum(b.input_ids.numel() for b in micro))


def single_inputs(item) -> dict[str, Any]:
    s = item.sample
    out = {"input_ids": s.input_ids[None], "labels": s.labels[None], "position_ids": item.positions[None],
           "image_grid_hw": s.image_grid_hw}
    if s.pixel_values is not None:
        out["pixel_values"] = s.pixel_values
    return out


def per_sample_step(items: list) -> Step:
    n = sum(i.length for i in items)
    return Step([single_inputs(i) for i in items], len(items), sum(label_targets(i.sample) for i in items), n, n)


def padded_inputs(items: list, pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest: the usual collator (labels -100 and attention_mask 0 on padding)."""
    import torch

    from isaac_train.processing.processor import IGNORE_INDEX

    b, longest = len(items), max(i.length for i in items)
    ids = torch.full((b, longest), pad_id, dtype=torch.long)
    labels = torch.full((b, longest), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(b, longest, 3, dtype=torch.long)
    mask = torch.zeros(b, longest, dtype=torch.long)
    for r, item in enumerate(items):
        n = item.length
        ids[r, :n], labels[r, :n], positions[r, :n], mask[r, :n] = (item.sample.input_ids, item.sample.labels,
                                                                    item.positions, 1)
    pixels = [i.sample.pixel_values for i in items if i.sample.pixel_values is not None]
    out = {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask,
           "image_grid_hw": torch.cat([i.sample.image_grid_hw for i in items])}
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
    return out


def padded_groups(items: list, batching: str, batch_size: int, budget: int) -> list[list]:
    if batching != "budget":
        return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    groups: list[list] = [[]]
    for item in items:
        group = groups[-1]
        if group and (len(group) + 1) * max(item.length, *(g.length for g in group)) > budget:
            groups.append(group := [])
        group.append(item)
    return groups


def padded_step(items: list, pad_id: int, batching: str, batch_size: int, budget: int) -> Step:
    groups = padded_groups(items, batching, batch_size, budget)
    return Step([padded_inputs(g, pad_id) for g in groups], len(items), sum(label_targets(i.sample) for i in items),
                sum(i.length for i in items), sum(len(g) * max(i.length for i in g) for g in groups))


def build_steps(method: str, samples: list, spec: dict[str, Any], pad_id: int) -> list[Step]:
    """The steps of `method` over `samples`. Packed steps are what the trainer makes of the stream: packed batches
    (`packed_batches`), consecutive ones grouped into a step until it holds `samples_per_step` samples (gradient
    accumulation); the other methods then take exactly the samples of each packed step, in stream order."""
    from isaac_train.data.packing import item_from_sample

    items = [item_from_sample(s, None, f"s{i}") for i, s in enumerate(samples)]
    by_key = {item.key: item for item in items}
    batches = packed_batches(items, spec["seq_len"], spec["rows"], pad_id, spec["pack_buffer"])
    groups, current = [], []
    for batch in batches:
        current.append(batch)
        if sum(len(r) for b in current for r in b.sample_keys) >= spec["samples_per_step"]:
            groups.append(current)
            current = []
    groups = groups or [current]  # fewer samples than one step: one step of all of them
    if method == "packed":
        return [packed_step(g) for g in groups]
    chunks = [sorted((by_key[k] for b in g for r in b.sample_keys for k in r), key=lambda i: int(i.key[1:]))
              for g in groups]
    if method == "per-sample":
        return [per_sample_step(c) for c in chunks]
    batching = spec["padded_batching"]
    batch_size = int(batching) if batching.isdigit() else max(
        1, round(sum(len(c) for c in chunks) / sum(len(g) for g in groups)))
    return [padded_step(c, pad_id, batching, batch_size, spec["seq_len"] * spec["rows"]) for c in chunks]


# ---- one run (a subprocess) ----------------------------------------------------------------------------------------


def train_config():
    from isaac_train.config.schema import Config

    cfg = Config()
    cfg.model.train_vision, cfg.model.train_projector, cfg.model.train_decoder = "all", True, "full"
    cfg.train.precision, cfg.train.clip_grad_norm = "fp32", 1.0
    cfg.optim.lr, cfg.optim.lr_vision, cfg.optim.schedule, cfg.optim.warmup_steps = 1e-4, 1e-4, "constant", 0
    return cfg


def make_trainer(spec: dict[str, Any]):
    """The `single` strategy around a model holding the parent's initial weights, with AdamW."""
    import torch
    from safetensors.torch import load_file
    from transformers.initialization import no_init_weights

    from isaac_train.dist_env import DistEnv
    from isaac_train.distributed.strategy import make_strategy
    from isaac_train.factory import set_trainable
    from isaac_train.model import IsaacForConditionalGeneration
    from isaac_train.train import build

    cfg = train_config()
    config = model_config(spec["size"])
    config.attn_backend = spec["attn_backend"]
    state = load_file(spec["weights"])

    def make_model(device):
        with no_init_weights():
            model = IsaacForConditionalGeneration(config)
        model.load_state_dict(state, strict=True)
        model.config.attn_backend = spec["attn_backend"]
        set_trainable(model, cfg)
        return model.to(device)

    strategy = make_strategy(cfg.strategy, DistEnv(device=torch.device("cpu")), cfg.train)
    strategy.setup(make_model, lambda m: build.build_optimizer(m, cfg), lambda o: build.build_scheduler(o, cfg))
    strategy.model.train()
    return strategy, cfg


def train_step(strategy, step: Step, clip: float | None) -> tuple[float, int]:
    """One optimizer step as the loop takes it: forward/backward per micro-batch, loss scaled by 1 / the step's
    label tokens, then clip and AdamW. Returns (sum of token losses, label tokens the model counted)."""
    sums, counts = [], []
    for inputs in step.micro:
        out = strategy.forward_backward(inputs, 1.0 / step.label_tokens)
        sums.append(out.loss_sum.detach())
        counts.append(out.num_label_tokens)
    strategy.step(clip, True)
    return float(sum(s.double() for s in sums)), int(sum(int(c) for c in counts))


def _status_kib(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss() -> str:
    """Give freed memory back to the OS and restart the kernel's RSS high-water mark; says which measure holds."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def peak_rss_mib(measure: str) -> float:
    if measure == "VmHWM" and (kib := _status_kib("VmHWM")) is not None:
        return kib / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(spec_path: Path) -> None:
    import torch

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    from isaac_train.processing.processor import IsaacProcessor
    from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

    config = model_config(spec["size"])
    processor = IsaacProcessor.from_settings(build_tiny_tokenizer(), config)
    mix = Mix(**{**spec["mix"], "text_range": tuple(spec["mix"]["text_range"]), "images": tuple(spec["mix"]["images"]),
                 "side": tuple(spec["mix"]["side"])})
    # a packed step holds at least samples_per_step samples: enough samples for `steps` steps
    samples = make_samples(processor, mix, int(spec["samples_per_step"] * spec["steps"] * 1.25), spec["seed"])
    pad_id = processor.tokenizer.pad_token_id
    strategy, cfg = make_trainer(spec)
    if spec["method"] == "profile":
        profile(strategy, cfg, samples, spec, pad_id)
        return
    steps = build_steps(spec["method"], samples, spec, pad_id)[: spec["steps"]]
    clip = cfg.train.clip_grad_norm
    measure = reset_peak_rss()
    rss_start = (_status_kib("VmRSS") or 0) / 1024
    start = time.perf_counter()
    first_loss, first_count = train_step(strategy, steps[0], clip)  # warm-up; the initial weights' loss
    warmup_s = time.perf_counter() - start
    times, losses = [], []
    for step in steps:
        start = time.perf_counter()
        loss, _ = train_step(strategy, step, clip)
        times.append(time.perf_counter() - start)
        losses.append(loss / step.label_tokens)
    result = {
        "method": spec["method"], "fingerprint": fingerprint(samples), "times": times, "warmup_s": warmup_s,
        "samples": [s.samples for s in steps], "label_tokens": [s.label_tokens for s in steps],
        "real_tokens": [s.real_tokens for s in steps], "computed_tokens": [s.computed_tokens for s in steps],
        "micro_batches": [len(s.micro) for s in steps],
        "first_loss": first_loss / steps[0].label_tokens, "first_label_tokens": first_count,
        "expected_label_tokens": steps[0].label_tokens, "losses": losses,
        "rss_start_mib": rss_start, "rss_peak_mib": peak_rss_mib(measure), "memory_measure": measure,
        "lengths": [len(s) for s in samples], "params": sum(p.numel() for p in strategy.model.parameters()),
        "threads": torch.get_num_threads(),
    }
    Path(spec["result"]).write_text(json.dumps(result))


def profile(strategy, cfg, samples: list, spec: dict[str, Any], pad_id: int) -> None:
    """torch.profiler's top operators (self CPU time) of one packed and one per-sample step, after a warm-up."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for method in ("packed", "per-sample"):
        step = build_steps(method, samples[: spec["samples_per_step"]], spec, pad_id)[0]
        train_step(strategy, step, cfg.train.clip_grad_norm)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step(strategy, step, cfg.train.clip_grad_norm)
        print(f"\n### torch.profiler: one {method} step of {spec['mix']['name']} ({step.samples} samples, "
              f"{len(step.micro)} micro-batches), top operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=spec["profile_rows"]))


# ---- the parent: runs, medians, ratios, tables ---------------------------------------------------------------------


@dataclass
class MixResult:
    mix: str
    settings: dict[str, Any]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    loss_check: dict[str, Any] = field(default_factory=dict)


def spawn_worker(script: Path, spec: dict[str, Any], tmp: Path, name: str,
                 env_defaults: dict[str, str] | None = None) -> dict[str, Any] | None:
    """`script --worker SPEC` in a fresh process (spec["threads"] threads, offline): the result it wrote, None if
    none; a non-zero exit is an error. `env_defaults`: variables the caller's environment may override."""
    spec_path, result = tmp / f"{name}.spec.json", tmp / f"{name}.result.json"
    spec = {**spec, "result": str(result)}
    spec_path.write_text(json.dumps(spec))
    env = {**(env_defaults or {}), **os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script), "--worker", str(spec_path)], env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} run failed with exit status {proc.returncode}")
    return json.loads(result.read_text()) if result.exists() else None


def run_child(spec: dict[str, Any], tmp: Path, name: str) -> dict[str, Any] | None:
    return spawn_worker(Path(__file__).resolve(), spec, tmp, name)


def summarize(res: MixResult) -> None:
    for method, runs in res.runs.items():
        tok_s = [sum(r["label_tokens"]) / sum(r["times"]) for r in runs]
        smp_s = [sum(r["samples"]) / sum(r["times"]) for r in runs]
        res.summary[method] = {
            "label_tokens_per_s": statistics.median(tok_s), "samples_per_s": statistics.median(smp_s),
            "step_s": statistics.median(sum(r["times"]) / len(r["times"]) for r in runs),
            "rss_peak_mib": max(r["rss_peak_mib"] for r in runs),
            "rss_increase_mib": max(r["rss_peak_mib"] - r["rss_start_mib"] for r in runs),
            "computed_per_real": sum(runs[0]["computed_tokens"]) / sum(runs[0]["real_tokens"]),
            "micro_batches_per_step": statistics.mean(runs[0]["micro_batches"]),
            "samples_per_micro": sum(runs[0]["samples"]) / sum(runs[0]["micro_batches"]),
            "first_loss": runs[0]["first_loss"], "first_label_tokens": runs[0]["first_label_tokens"],
            "rounds_label_tokens_per_s": tok_s,
        }
    packed = res.summary["packed"]
    for method in METHODS[1:]:
        if method in res.summary:
            res.ratios[method] = packed["label_tokens_per_s"] / res.summary[method]["label_tokens_per_s"]
    ref = packed["first_loss"]
    diffs = {m: abs(s["first_loss"] - ref) for m, s in res.summary.items()}
    counts = {m: s["first_label_tokens"] for m, s in res.summary.items()}
    prints = {r["fingerprint"] for runs in res.runs.values() for r in runs}
    res.loss_check = {
        "first_loss": {m: s["first_loss"] for m, s in res.summary.items()}, "max_abs_diff": max(diffs.values()),
        "label_tokens": counts, "fingerprints": sorted(prints),
        "agree": max(diffs.values()) <= LOSS_TOLERANCE and len(set(counts.values())) == 1 and len(prints) == 1,
    }


def print_mix(res: MixResult) -> None:
    s = res.settings
    lengths = res.runs["packed"][0]["lengths"]
    print(f"\n## {res.mix}: {s['samples_per_step']} samples/step (median {int(np.median(lengths))}, p90 "
          f"{int(np.percentile(lengths, 90))}, max {max(lengths)} tokens), packed rows of {s['seq_len']} x "
          f"{s['rows']}, padded batching '{s['padded_batching']}', {s['steps']} timed steps x {s['rounds']} rounds")
    columns = [("label tok/s", "label_tokens_per_s", ".1f"), ("samples/s", "samples_per_s", ".2f"),
               ("s/step", "step_s", ".2f"), ("micro/step", "micro_batches_per_step", ".1f"),
               ("samples/micro", "samples_per_micro", ".1f"), ("computed/real", "computed_per_real", ".2f"),
               ("peak RSS MiB", "rss_peak_mib", ".0f"), ("+RSS MiB", "rss_increase_mib", ".0f")]
    print(f"{'method':<11}" + "".join(f" {title:>{len(title)}}" for title, _, _ in columns) + "  rounds (label tok/s)")
    for method, m in res.summary.items():
        rounds = ", ".join(f"{x:.0f}" for x in m["rounds_label_tokens_per_s"])
        print(f"{method:<11}" + "".join(f" {m[key]:>{len(title)}{fmt}}" for title, key, fmt in columns) + f"  {rounds}")
    for method, ratio in res.ratios.items():
        target = TARGETS[(res.mix, method)]
        print(f"packed / {method}: {ratio:.2f}x  (target >= {target}x: {'met' if ratio >= target else 'NOT met'})")
    check = res.loss_check
    losses = ", ".join(f"{m} {v:.6f}" for m, v in check["first_loss"].items())
    print(f"first-step loss (sum of token losses / label tokens): {losses}; max |diff| {check['max_abs_diff']:.2e} "
          f"(tolerance {LOSS_TOLERANCE}); label tokens {check['label_tokens']}: "
          f"{'agree' if check['agree'] else 'DISAGREE'}")
    if not check["agree"]:
        bar = "!" * 100
        print(f"{bar}\nMISMATCH on {res.mix}: the three methods do not compute the same loss on the same samples and "
              f"weights (losses {check['first_loss']}, label tokens {check['label_tokens']}, sample fingerprints "
              f"{check['fingerprints']}). The throughput figures above compare different work.\n{bar}")


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "python": platform.python_version()}


def markdown(results: list[MixResult], info: dict[str, Any], args: argparse.Namespace, params: int) -> str:
    lines = [
        f"Packed training step vs per-sample loop (a) and pad-to-longest (b): `python benchmarks/train_throughput.py "
        f"{' '.join(sys.argv[1:])}`".rstrip(),
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, {info['date']}; model {args.size} "
        f"({params / 1e6:.1f}M parameters, fp32, attn_backend={args.attn_backend}), AdamW, median of {args.rounds} "
        f"alternating rounds x {args.steps} steps; peak memory = VmHWM of each run's process during its steps, "
        f"increase = over its RSS before the first step.",
        "",
        "| mix | method | samples/step | label tok/s | samples/s | computed / real tokens | peak RSS (MiB) "
        "| RSS increase (MiB) | packed / method | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for method, m in res.summary.items():
            ratio = res.ratios.get(method)
            target = TARGETS.get((res.mix, method))
            verdict = "" if ratio is None else f"{ratio:.2f}x"
            goal = "" if target is None else f">= {target}x {'(met)' if ratio >= target else '(NOT met)'}"
            lines.append(f"| {res.mix} | {method} | {res.settings['samples_per_step']} | {m['label_tokens_per_s']:.0f} "
                         f"| {m['samples_per_s']:.2f} | {m['computed_per_real']:.2f} | {m['rss_peak_mib']:.0f} "
                         f"| {m['rss_increase_mib']:.0f} | {verdict} | {goal} |")
    checks = "; ".join(f"{r.mix}: max |diff| {r.loss_check['max_abs_diff']:.1e} "
                       f"({'agree' if r.loss_check['agree'] else 'DISAGREE'})" for r in results)
    lines += ["", f"First-step loss of the three methods (same samples and weights): {checks}."]
    return "\n".join(lines)


def save_weights(size: str, seed: int, path: Path) -> int:
    import torch
    from safetensors.torch import save_file

    from isaac_train.model import IsaacForConditionalGeneration

    torch.manual_seed(seed)
    model = IsaacForConditionalGeneration(model_config(size))
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return sum(p.numel() for p in model.parameters())


def padded_batching(value: str) -> str:
    if value in ("match", "budget") or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: use match, budget or a positive micro-batch size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mix", choices=("short", "long", "both"), default="both")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; 1 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run (default 2; 1 with --tiny)")
    p.add_argument("--samples-per-step", type=int, default=None, help="default: short 64, long 24")
    p.add_argument("--seq-len", type=int, default=None, help="packed row length (default: short 1024, long 2048)")
    p.add_argument("--rows", type=int, default=1, help="packed rows per micro-batch (data.rows_per_batch)")
    p.add_argument("--pack-buffer", type=int, default=64, help="samples the packer chooses from (data.pack_buffer)")
    p.add_argument("--padded-batching", default="match", type=padded_batching,
                   help="match | budget | a fixed micro-batch size N (see above)")
    p.add_argument("--size", choices=("tiny", "small", "35m"), default=None, help="model (default 35m; tiny w/ --tiny)")
    p.add_argument("--attn-backend", default="auto")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset (packed always runs)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny model and samples: a quick check of the benchmark")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler top operators of one packed and one per-sample step")
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.tiny else 3)
    args.steps = args.steps or (1 if args.tiny else 2)
    args.size = args.size or ("tiny" if args.tiny else "35m")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0
    started = time.perf_counter()
    methods = ["packed", *[m for m in args.methods.split(",") if m in METHODS[1:]]]
    info = machine()
    mixes = ["short", "long"] if args.mix == "both" else [args.mix]
    results = []
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp_name:
        tmp = Path(tmp_name)
        weights = tmp / "initial.safetensors"
        params = save_weights(args.size, args.seed, weights)
        print(f"train_throughput: model {args.size} ({params / 1e6:.1f}M parameters), {info['cores']} cores "
              f"({info['cpu']}), torch {info['torch']}, {args.threads} threads, methods {', '.join(methods)}")
        for name in mixes:
            mix = MIXES[name]
            if args.tiny:
                mix = Mix(**{**asdict(mix), **TINY[name]})
            if args.samples_per_step:
                mix.samples_per_step = args.samples_per_step
            if args.seq_len:
                mix.seq_len = args.seq_len
            settings = {"samples_per_step": mix.samples_per_step, "seq_len": mix.seq_len, "rows": args.rows,
                        "pack_buffer": args.pack_buffer,
                        "padded_batching": args.padded_batching, "steps": args.steps, "rounds": args.rounds}
            spec = {**settings, "mix": asdict(mix), "size": args.size, "seed": args.seed, "weights": str(weights),
                    "threads": args.threads, "attn_backend": args.attn_backend, "profile_rows": args.profile_rows}
            res = MixResult(name, settings, {m: [] for m in methods})
            mix_start = time.perf_counter()
            for r in range(args.rounds):
                for method in methods:
                    t0 = time.perf_counter()
                    out = run_child({**spec, "method": method}, tmp, f"{name}-{method}-{r}")
                    res.runs[method].append(out)
                    print(f"  {name} round {r + 1}/{args.rounds} {method:<10}: "
                          f"{sum(out['label_tokens']) / sum(out['times']):8.1f} label tok/s, "
                          f"{sum(out['times']) / len(out['times']):6.2f} s/step, peak RSS {out['rss_peak_mib']:.0f} "
                          f"MiB ({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
                if r == 0 and args.rounds > 1:
                    print(f"  {name}: about {(time.perf_counter() - mix_start) * (args.rounds - 1) / 60:.1f} min "
                          "more for this mix", flush=True)
            summarize(res)
            print_mix(res)
            results.append(res)
            if args.profile:
                run_child({**spec, "method": "profile"}, tmp, f"{name}-profile")
    table = markdown(results, info, args, params)
    elapsed = time.perf_counter() - started
    print(f"\n{table}\n\n(total {elapsed:.0f} s)")
    agree = all(r.loss_check["agree"] for r in results)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "params": params, "elapsed_s": elapsed, "losses_agree": agree, "markdown": table,
            "mixes": [asdict(r) for r in results],
        }, indent=2))
    if not agree:
        print("MISMATCH: the methods disagree on the first-step loss; see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
