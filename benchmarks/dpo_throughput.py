"""Preference tuning (objective=dpo) against SFT on the same answers, and the vision tower once per pair against
once per document: the trainer's step, same model, pairs and initial weights.

    python benchmarks/dpo_throughput.py [--mix pairs|images|both] [--rounds 3] [--steps 2] [--size 35m]
        [--pairs-per-step N] [--seq-len L] [--methods a,b,...] [--json OUT] [--tiny]

Data. Seeded synthetic preference pairs in the stored form (docs/data_format.md, "Preference pairs": a prompt,
a chosen and a rejected answer, the prompt's images as PNG members), encoded by what the loader runs
(`data.decode.encode_pair` with IsaacProcessor and the tiny tokenizer: prompt + chosen and prompt + rejected,
labels on the answer only) from the tiny corpus' words and random-noise images. The two answers' lengths are
drawn apart (log-normal), so that they differ. The same pairs in every run, checked by a fingerprint.
- pairs: a prompt of ~50 text tokens (median) with 0, 1 or 2 images (64-256 px sides, 16-64 decoder tokens
  each), answers of ~60 tokens (median); 6 pairs a step, rows of 1024 tokens.
- images: every prompt has 1-2 images of 224-352 px sides (196-484 patches, 49-121 decoder tokens each), for the
  vision-once-per-pair comparison; 3 pairs a step, rows of 1536 tokens.

Methods (each a config composed as the command line composes it, `train.cli.compose_config`, then the trainer's
pieces: `make_strategy` (single, fp32), the model and reference factories of the loop, `make_objective` and
`objective.setup`, AdamW and a constant lr 1e-4 from `build`, and the loop's own `train_step`, which calls the
objective's `micro_step` per micro-batch, clips to 1.0 and updates):
- full fine-tuning (decoder, projector and vision tower train, as in benchmarks/train_throughput.py):
    sft      objective=sft on the pairs' documents: prompt + chosen and prompt + rejected, each an SFT sample
             with labels on its answer, packed by the trainer's Packer; a step holds exactly the documents of
             the DPO step it stands for (each pair's image tensors in both of its documents, as SFT reads them).
    dpo      objective=dpo (sigmoid, beta 0.1) with its live reference: a frozen copy (objective.reference=auto).
    dpo-precomputed  objective.precompute_reference=true: in setup (untimed, its seconds reported as setup_s)
             the reference scores every pair of the run once (objectives/reference_table.py), the frozen copy is
             freed, and each step reads the stored log-probabilities instead of running a reference forward.
- LoRA (peft=lora: rank 16 on every decoder projection; vision tower and projector frozen, as recipes/dpo_lora):
    sft-lora, dpo-lora (reference: the same model with its adapters disabled), dpo-lora-precomputed.
    peft=lora's dropout (0.05) is on in sft-lora; objective=dpo turns every dropout off
    (objective.disable_dropout, TRL's default).
- only when --methods names them (mix pairs): simpo, simpo-lora (loss_type=simpo: reference-free, no
  reference at all), sft-lora-no-dropout (sft-lora with peft.dropout=0, to tell the dropout's cost apart).
- vision (mix images, full fine-tuning, reference a frozen copy):
    dpo               objective.vision_per_pair=true (configs/objective/dpo.yaml): a pair's second document
                      reuses the first's image features (PackedLayout.image_order); the tower, the policy's
                      and the reference's, encodes each image once per pair.
    dpo-per-document  vision_per_pair=false: each document's images are encoded on their own (twice per pair).
DPO packs pairs as the loader does (`item_from_pair`: a pair's two documents in one row, never split; best fit
over `--pack-buffer` waiting pairs), consecutive micro-batches (`--rows` rows each) make a step until it holds
`--pairs-per-step` pairs.

Figures. tokens/s = real (non-padding) decoder tokens that the policy processes (both documents of every pair)
per second of optimizer steps; every method of a mix trains on the same tokens, so a ratio of tokens/s is the
inverse ratio of step times. DPO's reference forward is inside its step time and is not counted as tokens.
tokens/CPU-s = the same tokens per second of the run's CPU time (user + system, all its threads, over the same
steps): the work a step costs, less sensitive than wall time to other processes on the machine. Children run
with OMP_WAIT_POLICY=PASSIVE (unless set): with another process on the cores, spinning OpenMP threads that wait
for a preempted one made steps 5-10x slower, in wall time and CPU time alike; passive ones sleep instead.
Memory as in train_throughput.py: each run's peak RSS during its steps (VmHWM, reset after setup) and that peak
minus the RSS just before the first step (weights, the frozen reference copy and the pairs are in the baseline;
gradients, AdamW state, activations and allocator slack in the increase). Ratios: each DPO method's tokens/s
over sft's (full) or sft-lora's (LoRA), target >= 0.9; dpo-lora's (and dpo-lora-precomputed's) RSS increase over
sft-lora's, target <= 1.1; on images, vision once per pair against once per document, tokens/s and memory (no
target: measured for the choice in dpo.yaml).

Measurement. Rounds alternate the methods and each run is a fresh subprocess; it rebuilds the pairs and the
model (initialised from train.seed, as the trainer builds it: the same weights in every run, checked by a
checksum), runs one untimed warm-up step (the check below; AdamW allocates its state here) and `--steps` timed
steps, the first on the warm-up's batches again. Medians over rounds; the rounds' own figures are printed too,
with the load average at each run's start (above the core count: something else was running).

Correctness first (else a MISMATCH banner and exit status 1), on the first step's numbers, same pairs and weights:
- every method counts the same label tokens (the same answers) and sees the same pairs and initial weights;
- every sigmoid DPO method starts at loss log 2 (reference = policy), live or precomputed, within 1e-5;
- the per-answer log-probabilities DPO trains on (logps/chosen + logps/rejected summed over the step's pairs) are
  minus SFT's summed token loss over the same documents, relative 1e-5, for every DPO method of the mix pairs;
- sft = sft-lora (= sft-lora-no-dropout), simpo = simpo-lora (LoRA starts at the base weights);
- images: dpo and dpo-per-document give the same loss (1e-5), log-probabilities and gradient norm (relative 1e-5).
The last lines are a markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (the house helpers: model sizes, corpus, memory, machine)

LOSS_TOLERANCE = 1e-5  # absolute, on per-pair / per-token mean losses
RELATIVE_TOLERANCE = 1e-5  # on sums (log-probabilities, token losses) and gradient norms


@dataclass(frozen=True)
class Method:
    """One way to train: an objective under full fine-tuning or LoRA."""

    objective: str  # sft | dpo
    lora: bool = False
    loss_type: str = "sigmoid"
    vision_per_pair: bool = True
    precompute: bool = False  # objective.precompute_reference: the reference's log-probs stored before step 1
    lora_dropout: float | None = None  # None: peft=lora's (0.05); DPO turns every dropout off (disable_dropout)
    label: str = ""

    def overrides(self) -> list[str]:
        out = (["peft=lora", "model.train_vision=none", "model.train_projector=false"] if self.lora else
               ["model.train_vision=all", "model.train_projector=true", "model.train_decoder=full"])
        if self.lora_dropout is not None:
            out.append(f"peft.dropout={self.lora_dropout}")
        if self.objective == "dpo":
            out += ["objective=dpo", f"objective.loss_type={self.loss_type}",
                    f"objective.vision_per_pair={str(self.vision_per_pair).lower()}",
                    f"objective.precompute_reference={str(self.precompute).lower()}"]
        return out


METHODS = {
    "sft": Method("sft", label="sft (full)"),
    "dpo": Method("dpo", label="dpo (full, reference: frozen copy)"),
    "dpo-precomputed": Method("dpo", precompute=True, label="dpo (full, reference precomputed)"),
    "simpo": Method("dpo", loss_type="simpo", label="simpo (full, no reference)"),
    "sft-lora": Method("sft", lora=True, label="sft (LoRA)"),
    "dpo-lora": Method("dpo", lora=True, label="dpo (LoRA, reference: adapters disabled)"),
    "dpo-lora-precomputed": Method("dpo", lora=True, precompute=True, label="dpo (LoRA, reference precomputed)"),
    "simpo-lora": Method("dpo", lora=True, loss_type="simpo", label="simpo (LoRA, no reference)"),
    "dpo-per-document": Method("dpo", vision_per_pair=False, label="dpo, vision once per document"),
    "sft-lora-no-dropout": Method("sft", lora=True, lora_dropout=0.0, label="sft (LoRA, peft.dropout=0)"),
}
MIX_METHODS = {"pairs": ("sft", "dpo", "dpo-precomputed", "sft-lora", "dpo-lora", "dpo-lora-precomputed"),
               "images": ("dpo", "dpo-per-document")}
OPT_IN = {"pairs": ("simpo", "simpo-lora", "sft-lora-no-dropout")}  # run only when --methods names them
# (mix, method, baseline): what the ratio of tokens/s (and of the RSS increase) is measured against
TOKEN_RATIOS = {("pairs", "dpo"): "sft", ("pairs", "dpo-precomputed"): "sft", ("pairs", "simpo"): "sft",
                ("pairs", "dpo-lora"): "sft-lora", ("pairs", "dpo-lora-precomputed"): "sft-lora",
                ("pairs", "simpo-lora"): "sft-lora", ("pairs", "sft-lora-no-dropout"): "sft-lora",
                ("images", "dpo"): "dpo-per-document"}
TOKEN_TARGETS = {m: 0.9 for m in ("dpo", "dpo-precomputed", "simpo", "dpo-lora", "dpo-lora-precomputed",
                                     "simpo-lora")}
MEMORY_TARGETS = {("pairs", "dpo-lora"): 1.1, ("pairs", "dpo-lora-precomputed"): 1.1}


@dataclass
class PairMix:
    """Preference pairs: log-normal text lengths (tokens), a prompt with a number of images."""

    name: str
    prompt_median: float
    answer_median: float
    sigma: float
    text_range: tuple[int, int]
    images: tuple[int, int]  # images per prompt (inclusive), uniform
    side: tuple[int, int]  # image side lengths in pixels (inclusive), drawn per side
    pairs_per_step: int
    seq_len: int


MIXES = {
    "pairs": PairMix("pairs", 50, 60, 0.6, (8, 300), (0, 2), (64, 256), pairs_per_step=6, seq_len=1024),
    "images": PairMix("images", 40, 60, 0.5, (8, 250), (1, 2), (224, 352), pairs_per_step=3, seq_len=1536),
}
TINY = {"pairs": dict(prompt_median=16, answer_median=16, text_range=(4, 60), side=(32, 96), pairs_per_step=4,
                      seq_len=384),
        "images": dict(prompt_median=12, answer_median=12, text_range=(4, 40), side=(64, 128), pairs_per_step=3,
                       seq_len=512)}


# ---- pairs and steps (run in every subprocess) ---------------------------------------------------------------------


def png(pixels: np.ndarray) -> bytes:
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_pairs(processor, mix: PairMix, n: int, seed: int) -> list[tuple[Any, Any]]:
    """`n` preference pairs of `mix` in the stored form, encoded as the loader encodes them (encode_pair)."""
    from isaac_train.data.decode import encode_pair

    rng = np.random.default_rng(seed)
    words = np.array(tt.corpus_words())
    probe = " ".join(np.random.default_rng(1).choice(words, 2000))
    tokens_per_word = len(processor.tokenizer(probe, add_special_tokens=False)["input_ids"]) / 2000
    lo, hi = mix.text_range

    def text(median: float, end: str) -> str:
        tokens = int(np.clip(np.exp(rng.normal(np.log(median), mix.sigma)), lo, hi))
        return " ".join(rng.choice(words, max(1, round(tokens / tokens_per_word)))).capitalize() + end

    pairs = []
    for _ in range(n):
        n_images = int(rng.integers(mix.images[0], mix.images[1] + 1))
        members = {f"{k}.png": png(rng.integers(0, 256, (int(rng.integers(mix.side[0], mix.side[1] + 1)),
                                                       int(rng.integers(mix.side[0], mix.side[1] + 1)), 3),
                                                 dtype=np.uint8)) for k in range(n_images)}
        chosen = text(mix.answer_median, ".")
        rejected = text(mix.answer_median, ".")
        while rejected.split() == chosen.split() or len(rejected.split()) == len(chosen.split()):
            rejected = text(mix.answer_median, ".")  # answers of different lengths
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text(mix.prompt_median, "?")}]
        sample = {"messages": [{"role": "user", "content": content}],
                  "chosen": [{"role": "assistant", "content": chosen}],
                  "rejected": [{"role": "assistant", "content": rejected}]}
        members["json"] = json.dumps(sample).encode()
        pairs.append(encode_pair(members, processor, mix.seq_len, normalize_pixels=False))
    return pairs


@dataclass
class Step:
    """One optimizer step's micro-batches (host PackedBatches, as the loader hands them) and what they hold."""

    micro: list[Any]
    pairs: int
    real_tokens: int
    computed_tokens: int  # decoder positions run through the model (padding tails included)
    patches: int  # vision patches the policy's tower encodes


def as_step(micro: list, pairs: int) -> Step:
    return Step(micro, pairs, sum(b.num_tokens for b in micro), sum(b.input_ids.numel() for b in micro),
                sum(0 if b.pixel_values is None else int(b.pixel_values.shape[0]) for b in micro))


def build_steps(method: Method, pairs: list, spec: dict[str, Any], pad_id: int) -> list[Step]:
    """DPO: the pairs' stream packed as the loader packs it (two documents of a pair in one row), consecutive
    micro-batches grouped into a step until it holds `pairs_per_step` pairs. SFT: for each such step, its pairs'
    documents as separate samples, packed by the same Packer into the step's micro-batches."""
    from isaac_train.data.packing import item_from_pair, item_from_sample

    items = [item_from_pair(c, r, None, f"p{i}", shared_images=method.vision_per_pair)
             for i, (c, r) in enumerate(pairs)]
    batches = tt.packed_batches(items, spec["seq_len"], spec["rows"], pad_id, spec["pack_buffer"])
    groups, current = [], []
    for batch in batches:
        current.append(batch)
        if sum(b.num_pairs for b in current) >= spec["pairs_per_step"]:
            groups.append(current)
            current = []
    groups = groups or [current]
    if method.objective == "dpo":
        return [as_step(g, sum(b.num_pairs for b in g)) for g in groups]
    steps = []
    for group in groups:
        keys = sorted((k for b in group for row in b.sample_keys for k in row), key=lambda k: int(k[1:]))
        docs = [item_from_sample(doc, None, f"{k}/{side}") for k in keys
                for side, doc in zip(("chosen", "rejected"), pairs[int(k[1:])], strict=True)]
        micro = tt.packed_batches(docs, spec["seq_len"], spec["rows"], pad_id, max(len(docs), 1))
        steps.append(as_step(micro, len(keys)))
    return steps


def pairs_fingerprint(pairs: list) -> str:
    return tt.fingerprint([doc for pair in pairs for doc in pair])


# ---- one run (a subprocess) ----------------------------------------------------------------------------------------


def compose(method: Method, spec: dict[str, Any], table: Path | None = None):
    from isaac_train.train.cli import compose_config

    table_key = [] if table is None else [f"objective.reference_logps={table}"]
    base = table_key + ["train.precision=fp32", "train.clip_grad_norm=1.0", "optim.lr=1e-4", "optim.lr_vision=1e-4",
            "optim.schedule=constant", "optim.warmup_steps=0", f"train.seed={spec['seed']}",
            f"train.seq_len={spec['seq_len']}", f"data.pack_buffer={spec['pack_buffer']}",
            f"data.rows_per_batch={spec['rows']}", f"model.attn_backend={spec['attn_backend']}",
            "logging.progress=false"]
    return compose_config(base + method.overrides(), check_files=False)


def make_trainer(method: Method, spec: dict[str, Any], steps: list[Step], table: Path | None = None):
    """The loop's build (train/loop.py _train): strategy single, the model factory, AdamW and the schedule,
    the objective and its reference (a frozen copy from the reference factory, or the adapters disabled; with
    precompute, the reference's pass over the run's batches, `steps`, stored in `table`, the copy then freed).
    Returns (strategy, env, objective, cfg, seconds the objective's setup took)."""
    import torch

    from isaac_train import factory
    from isaac_train.dist_env import DistEnv
    from isaac_train.distributed.strategy import make_strategy
    from isaac_train.objectives import RunData, make_objective
    from isaac_train.train import build

    cfg = compose(method, spec, table)
    config = tt.model_config(spec["size"])
    env = DistEnv(device=torch.device("cpu"))
    strategy = make_strategy(cfg.strategy, env, cfg.train)
    strategy.setup(factory.model_factory(cfg, config), lambda m: build.build_optimizer(m, cfg),
                   lambda o: build.build_scheduler(o, cfg))
    objective = make_objective(cfg)
    data = RunData(lambda split: [b for s in steps for b in s.micro] if split == "train" else None,
                   sources={"train": f"dpo_throughput:{spec['mix']['name']}:{spec['seed']}"})
    start = time.perf_counter()
    objective.setup(strategy, factory.frozen_factory(cfg, config), data)
    setup_s = time.perf_counter() - start
    strategy.model.train()
    return strategy, env, objective, cfg, setup_s


def weights_checksum(model) -> float:
    """The initial base weights (LoRA adapters left out): the same in every run of a mix."""
    import torch

    with torch.no_grad():
        return float(sum(p.double().sum() for n, p in model.named_parameters() if "lora_" not in n))


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of `spec["method"]` on `spec["mix"]`: its figures and its first step's numbers."""
    import torch

    from isaac_train.processing.processor import IsaacProcessor
    from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer
    from isaac_train.train.loop import train_step

    method = Method(**spec["method"])
    processor = IsaacProcessor.from_settings(build_tiny_tokenizer(), tt.model_config(spec["size"]))
    m = spec["mix"]
    mix = PairMix(**{**m, "text_range": tuple(m["text_range"]), "images": tuple(m["images"]), "side": tuple(m["side"])})
    # a step holds at least pairs_per_step pairs: enough pairs for `steps` steps
    pairs = make_pairs(processor, mix, int(mix.pairs_per_step * spec["steps"] * 1.25) + 1, spec["seed"])
    steps = build_steps(method, pairs, spec, processor.tokenizer.pad_token_id)[: spec["steps"]]
    with tempfile.TemporaryDirectory(prefix="dpo_reference_") as table_dir:
        strategy, env, objective, cfg, setup_s = make_trainer(method, spec, steps,
                                                              Path(table_dir) / "reference_logps.json")
    checksum = weights_checksum(strategy.model)
    clip = cfg.train.clip_grad_norm
    measure = tt.reset_peak_rss()
    rss_start = (tt._status_kib("VmRSS") or 0) / 1024
    start = time.perf_counter()
    first = train_step(strategy, env, steps[0].micro, clip, objective=objective)  # warm-up: the initial weights
    warmup_s = time.perf_counter() - start
    times, cpu_times, losses, tokens = [], [], [], []
    for step in steps:
        start, cpu_start = time.perf_counter(), time.process_time()
        out = train_step(strategy, env, step.micro, clip, objective=objective)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        losses.append(out.loss)
        tokens.append(out.tokens)
    return {
        "fingerprint": pairs_fingerprint(pairs), "weights_checksum": checksum, "times": times, "cpu_times": cpu_times,
        "setup_s": setup_s, "warmup_s": warmup_s, "load_average": os.getloadavg()[0],
        "tokens": tokens, "real_tokens": [s.real_tokens for s in steps], "pairs": [s.pairs for s in steps],
        "computed_tokens": [s.computed_tokens for s in steps], "patches": [s.patches for s in steps],
        "micro_batches": [len(s.micro) for s in steps], "losses": losses,
        "first": {"loss": first.loss, "loss_sum": first.loss_sum, "count": first.count,
                  "label_tokens": first.label_tokens, "tokens": first.tokens, "grad_norm": first.grad_norm,
                  "stats": first.stats, "pairs": steps[0].pairs},
        "rss_start_mib": rss_start, "rss_peak_mib": tt.peak_rss_mib(measure), "memory_measure": measure,
        "pair_lengths": [len(c) + len(r) for c, r in pairs],
        "trainable": sum(p.numel() for p in strategy.model.parameters() if p.requires_grad),
        "params": sum(p.numel() for n, p in strategy.model.named_parameters() if "lora_" not in n),
        "threads": torch.get_num_threads(),
    }


def worker(spec_path: Path) -> None:
    import torch

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    Path(spec["result"]).write_text(json.dumps(measure(spec)))


# ---- the parent: runs, medians, ratios, checks, tables -------------------------------------------------------------


@dataclass
class MixResult:
    mix: str
    settings: dict[str, Any]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, dict[str, float]] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return all(c["ok"] for c in self.checks)


def run_child(spec: dict[str, Any], tmp: Path, name: str) -> dict[str, Any]:
    # passive OpenMP waits: spinning threads made steps 5-10x slower with another process on the cores
    result = tt.spawn_worker(Path(__file__).resolve(), spec, tmp, name, {"OMP_WAIT_POLICY": "PASSIVE"})
    if result is None:
        raise RuntimeError(f"the {name} run exited 0 without writing its result")
    return result


def logps_total(first: dict[str, Any]) -> float:
    return first["stats"]["logps/chosen"] + first["stats"]["logps/rejected"]


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def correctness(res: MixResult) -> list[dict[str, Any]]:
    """The first-step checks of the docstring, each {what, value, tolerance, ok}."""
    firsts = {m: runs[0]["first"] for m, runs in res.runs.items()}
    checks = []

    def check(what: str, value: float, tolerance: float) -> None:
        checks.append({"what": what, "value": value, "tolerance": tolerance, "ok": value <= tolerance})

    prints = {r["fingerprint"] for runs in res.runs.values() for r in runs}
    sums = [r["weights_checksum"] for runs in res.runs.values() for r in runs]
    labels = {f["label_tokens"] for f in firsts.values()}
    check(f"pair fingerprints {sorted(prints)}: one", len(prints) - 1, 0)
    check("initial weights checksum (relative spread)", relative(max(sums), min(sums)), 1e-12)
    check(f"label tokens of the first step {sorted(labels)}: one", len(labels) - 1, 0)
    for m, f in firsts.items():
        if METHODS[m].objective == "dpo" and METHODS[m].loss_type == "sigmoid":
            check(f"{m}: |first loss - log 2| (reference = policy)", abs(f["loss"] - math.log(2)), LOSS_TOLERANCE)
    for sft in ("sft", "sft-lora"):
        if sft not in firsts:
            continue
        for m, f in firsts.items():
            if METHODS[m].objective == "dpo" and METHODS[m].lora == METHODS[sft].lora:
                check(f"{m}: -(logps/chosen + logps/rejected) against {sft}'s token loss sum (relative)",
                      relative(-logps_total(f), firsts[sft]["loss_sum"]), RELATIVE_TOLERANCE)
    for a, b in (("sft", "sft-lora"), ("simpo", "simpo-lora"), ("sft-lora", "sft-lora-no-dropout")):
        if a in firsts and b in firsts:
            check(f"{a} = {b}: |first loss diff|", abs(firsts[a]["loss"] - firsts[b]["loss"]), LOSS_TOLERANCE)
    if "dpo" in firsts and "dpo-per-document" in firsts:
        a, b = firsts["dpo"], firsts["dpo-per-document"]
        check("vision once per pair = once per document: |first loss diff|", abs(a["loss"] - b["loss"]),
              LOSS_TOLERANCE)
        check("vision once per pair = once per document: log-probabilities (relative)",
              relative(logps_total(a), logps_total(b)), RELATIVE_TOLERANCE)
        check("vision once per pair = once per document: gradient norm (relative)",
              relative(a["grad_norm"], b["grad_norm"]), RELATIVE_TOLERANCE)
    return checks


def summarize(res: MixResult) -> None:
    for method, runs in res.runs.items():
        tok_s = [sum(r["tokens"]) / sum(r["times"]) for r in runs]
        tok_cpu_s = [sum(r["tokens"]) / sum(r["cpu_times"]) for r in runs]
        res.summary[method] = {
            "tokens_per_s": statistics.median(tok_s), "rounds_tokens_per_s": tok_s,
            "tokens_per_cpu_s": statistics.median(tok_cpu_s), "rounds_tokens_per_cpu_s": tok_cpu_s,
            "load_average": [r["load_average"] for r in runs],
            "pairs_per_s": statistics.median(sum(r["pairs"]) / sum(r["times"]) for r in runs),
            "step_s": statistics.median(sum(r["times"]) / len(r["times"]) for r in runs),
            "setup_s": statistics.median(r["setup_s"] for r in runs),
            "rss_peak_mib": max(r["rss_peak_mib"] for r in runs),
            "rss_increase_mib": max(r["rss_peak_mib"] - r["rss_start_mib"] for r in runs),
            "rounds_rss_increase_mib": [r["rss_peak_mib"] - r["rss_start_mib"] for r in runs],
            "computed_per_real": sum(runs[0]["computed_tokens"]) / sum(runs[0]["real_tokens"]),
            "micro_batches_per_step": statistics.mean(runs[0]["micro_batches"]),
            "patches_per_step": statistics.mean(runs[0]["patches"]),
            "tokens_per_step": statistics.mean(runs[0]["tokens"]),
            "first": runs[0]["first"], "trainable": runs[0]["trainable"],
        }
    for (mix, method), base in TOKEN_RATIOS.items():
        if mix == res.mix and method in res.summary and base in res.summary:
            m, b = res.summary[method], res.summary[base]
            res.ratios[method] = {"against": base, "tokens_per_s": m["tokens_per_s"] / b["tokens_per_s"],
                                  "tokens_per_cpu_s": m["tokens_per_cpu_s"] / b["tokens_per_cpu_s"],
                                  "rss_increase": m["rss_increase_mib"] / b["rss_increase_mib"],
                                  "rss_peak": m["rss_peak_mib"] / b["rss_peak_mib"],
                                  # the same ratio within each round (runs next to each other): the spread
                                  **{f"rounds_{k}": [x / y for x, y in zip(m[f"rounds_{k}"], b[f"rounds_{k}"],
                                                                           strict=True)]
                                     for k in ("tokens_per_s", "tokens_per_cpu_s")}}
    res.checks = correctness(res)


def spread(ratios: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in ratios)


def verdicts(res: MixResult, method: str) -> tuple[str, str]:
    """(tokens/s target, memory target) of `method` as text, '' where it has none."""
    ratio = res.ratios.get(method)
    if ratio is None:
        return "", ""
    tok = TOKEN_TARGETS.get(method) if res.mix == "pairs" else None
    mem = MEMORY_TARGETS.get((res.mix, method))
    tok_text = "" if tok is None else f">= {tok}x: {'met' if ratio['tokens_per_s'] >= tok else 'NOT met'}"
    mem_text = "" if mem is None else f"<= {mem}x: {'met' if ratio['rss_increase'] <= mem else 'NOT met'}"
    return tok_text, mem_text


def print_mix(res: MixResult) -> None:
    s = res.settings
    lengths = res.runs[next(iter(res.runs))][0]["pair_lengths"]
    print(f"\n## {res.mix}: {s['pairs_per_step']} pairs/step (pair = both documents: median "
          f"{int(np.median(lengths))}, max {max(lengths)} tokens), rows of {s['seq_len']} x {s['rows']}, "
          f"{s['steps']} timed steps x {s['rounds']} rounds")
    columns = [("tok/s", "tokens_per_s", ".1f"), ("tok/CPU-s", "tokens_per_cpu_s", ".1f"),
               ("pairs/s", "pairs_per_s", ".2f"), ("s/step", "step_s", ".2f"), ("setup s", "setup_s", ".2f"),
               ("tok/step", "tokens_per_step", ".0f"), ("micro/step", "micro_batches_per_step", ".1f"),
               ("computed/real", "computed_per_real", ".2f"), ("patches/step", "patches_per_step", ".0f"),
               ("peak RSS MiB", "rss_peak_mib", ".0f"), ("+RSS MiB", "rss_increase_mib", ".0f")]
    print(f"{'method':<17}" + "".join(f" {title}" for title, _, _ in columns)
          + "  rounds: tok/s; tok/CPU-s; +RSS MiB; load average at start")
    for method, m in res.summary.items():
        rounds = "; ".join(", ".join(f"{x:.{d}f}" for x in m[key]) for key, d in (
            ("rounds_tokens_per_s", 0), ("rounds_tokens_per_cpu_s", 0), ("rounds_rss_increase_mib", 0),
            ("load_average", 1)))
        print(f"{method:<19}" + "".join(f" {m[key]:>{len(title)}{fmt}}" for title, key, fmt in columns)
              + f"  {rounds}")
    for method, r in res.ratios.items():
        tok, mem = verdicts(res, method)
        print(f"{method} / {r['against']}: tokens/s {r['tokens_per_s']:.2f}x{f' (target {tok})' if tok else ''}, "
              f"tokens/CPU-s {r['tokens_per_cpu_s']:.2f}x, RSS increase {r['rss_increase']:.2f}x"
              f"{f' (target {mem})' if mem else ''}, peak RSS {r['rss_peak']:.2f}x; within each round: tokens/s "
              f"{spread(r['rounds_tokens_per_s'])}, tokens/CPU-s {spread(r['rounds_tokens_per_cpu_s'])}")
    for c in res.checks:
        print(f"check {'ok ' if c['ok'] else 'BAD'} {c['what']}: {c['value']:.2e} (tolerance {c['tolerance']:.0e})")
    if not res.agree:
        bar = "!" * 100
        bad = "; ".join(c["what"] for c in res.checks if not c["ok"])
        print(f"{bar}\nMISMATCH on {res.mix}: {bad}. The throughput figures above may compare different work.\n{bar}")


def markdown(results: list[MixResult], info: dict[str, Any], args: argparse.Namespace, params: int) -> str:
    lines = [
        f"objective=dpo against sft on the same answers: `python benchmarks/dpo_throughput.py "
        f"{' '.join(sys.argv[1:])}`".rstrip(),
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, {info['date']}; model {args.size} "
        f"({params / 1e6:.1f}M parameters, fp32, attn_backend={args.attn_backend}), AdamW, median of {args.rounds} "
        f"alternating rounds x {args.steps} steps; tok/s = real decoder tokens (both documents of each pair) per "
        "second of optimizer steps; peak memory = VmHWM of each run's process during its steps, increase = over its "
        "RSS before the first step.",
        "",
        "| mix | method | pairs/step | tok/s | tok/CPU-s | s/step | computed / real | patches/step | peak RSS (MiB) "
        "| RSS increase (MiB) | tok/s ratio | tok/CPU-s ratio | RSS increase ratio | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for method, m in res.summary.items():
            r = res.ratios.get(method)
            tok, mem = verdicts(res, method)
            ratio = "" if r is None else (f"{r['tokens_per_s']:.2f}x of {r['against']} (rounds "
                                          f"{spread(r['rounds_tokens_per_s'])})")
            cpu_ratio = "" if r is None else f"{r['tokens_per_cpu_s']:.2f}x ({spread(r['rounds_tokens_per_cpu_s'])})"
            mem_ratio = "" if r is None else f"{r['rss_increase']:.2f}x"
            goals = "; ".join(x for x in (f"tok/s {tok}" if tok else "", f"memory {mem}" if mem else "") if x)
            lines.append(f"| {res.mix} | {METHODS[method].label} | {res.settings['pairs_per_step']} "
                         f"| {m['tokens_per_s']:.0f} | {m['tokens_per_cpu_s']:.0f} | {m['step_s']:.2f} "
                         f"| {m['computed_per_real']:.2f} "
                         f"| {m['patches_per_step']:.0f} | {m['rss_peak_mib']:.0f} | {m['rss_increase_mib']:.0f} "
                         f"| {ratio} | {cpu_ratio} | {mem_ratio} | {goals} |")
    checks = "; ".join(f"{r.mix}: {sum(c['ok'] for c in r.checks)}/{len(r.checks)} checks "
                       f"({'agree' if r.agree else 'MISMATCH'})" for r in results)
    lines += ["", f"First-step checks (same pairs and weights): {checks}."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mix", choices=("pairs", "images", "both"), default="both")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; 1 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run (default 2; 1 with --tiny)")
    p.add_argument("--pairs-per-step", type=int, default=None, help="default: pairs 6, images 3")
    p.add_argument("--seq-len", type=int, default=None, help="packed row length (default: pairs 1024, images 1536)")
    p.add_argument("--rows", type=int, default=1, help="packed rows per micro-batch (data.rows_per_batch)")
    p.add_argument("--pack-buffer", type=int, default=64, help="pairs the packer chooses from (data.pack_buffer)")
    p.add_argument("--size", choices=("tiny", "small", "35m"), default=None, help="model (default 35m; tiny w/ --tiny)")
    p.add_argument("--attn-backend", default="auto")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {', '.join(METHODS)} (default: every method of each mix)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny model and pairs: a quick check of the benchmark")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.tiny else 3)
    args.steps = args.steps or (1 if args.tiny else 2)
    args.size = args.size or ("tiny" if args.tiny else "35m")
    if args.methods is not None:
        unknown = set(args.methods.split(",")) - set(METHODS)
        if unknown:
            p.error(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0
    started = time.perf_counter()
    info = tt.machine()
    chosen = None if args.methods is None else args.methods.split(",")
    mixes = ["pairs", "images"] if args.mix == "both" else [args.mix]
    results, params = [], 0
    print(f"dpo_throughput: model {args.size}, {info['cores']} cores ({info['cpu']}), torch {info['torch']}, "
          f"{args.threads} threads")
    with tempfile.TemporaryDirectory(prefix="dpo_throughput_") as tmp_name:
        tmp = Path(tmp_name)
        for name in mixes:
            methods = [m for m in (*MIX_METHODS[name], *OPT_IN.get(name, ())) if
                       (m in chosen if chosen is not None else m in MIX_METHODS[name])]
            if not methods:
                continue
            mix = MIXES[name]
            if args.tiny:
                mix = PairMix(**{**asdict(mix), **TINY[name]})
            mix.pairs_per_step = args.pairs_per_step or mix.pairs_per_step
            mix.seq_len = args.seq_len or mix.seq_len
            settings = {"pairs_per_step": mix.pairs_per_step, "seq_len": mix.seq_len, "rows": args.rows,
                        "pack_buffer": args.pack_buffer, "steps": args.steps, "rounds": args.rounds}
            spec = {**settings, "mix": asdict(mix), "size": args.size, "seed": args.seed, "threads": args.threads,
                    "attn_backend": args.attn_backend}
            res = MixResult(name, settings, {m: [] for m in methods})
            mix_start = time.perf_counter()
            for r in range(args.rounds):
                for method in methods:
                    t0 = time.perf_counter()
                    out = run_child({**spec, "method": asdict(METHODS[method])}, tmp, f"{name}-{method}-{r}")
                    res.runs[method].append(out)
                    params = out["params"]
                    print(f"  {name} round {r + 1}/{args.rounds} {method:<19}: "
                          f"{sum(out['tokens']) / sum(out['times']):8.1f} tok/s, "
                          f"{sum(out['tokens']) / sum(out['cpu_times']):8.1f} tok/CPU-s, "
                          f"{sum(out['times']) / len(out['times']):6.2f} s/step, +RSS "
                          f"{out['rss_peak_mib'] - out['rss_start_mib']:.0f} MiB (peak {out['rss_peak_mib']:.0f}) "
                          f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
                if r == 0 and args.rounds > 1:
                    print(f"  {name}: about {(time.perf_counter() - mix_start) * (args.rounds - 1) / 60:.1f} min "
                          "more for this mix", flush=True)
            summarize(res)
            print_mix(res)
            results.append(res)
    table = markdown(results, info, args, params)
    elapsed = time.perf_counter() - started
    print(f"\n{table}\n\n(total {elapsed:.0f} s)")
    agree = all(r.agree for r in results)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "params": params, "elapsed_s": elapsed, "checks_agree": agree, "markdown": table,
            "mixes": [asdict(r) for r in results],
        }, indent=2))
    if not agree:
        print("MISMATCH: a first-step check failed; see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
