"""One GPU command: every GPU figure of the project in one unattended run, written as JSON and markdown.

    python benchmarks/gpu_report.py [--out DIR] [--budget-s 480] [--quick]
    python benchmarks/gpu_report.py --dry-run          # every part on CPU with tiny models (tests/test_gpu_report.py)

Parts, in the order they run (each guarded: a failure is recorded with its error and the others still run):
  matmul      bf16 matmul ceiling (8192^3, plus the 2B MLP shapes): TFLOP/s, against the datasheet peak of
              isaac_train/metrics/flops.py (PEAK_TFLOPS, by device name); the measured ceiling is the second
              denominator of every MFU below.
  attention   the attention backends (sdpa, varlen, flash_attn when installed; eager on a short row) on the same
              packed row of a 2B-wide, 4+4-layer random Isaac in bf16: max |logit diff| vs sdpa, forward+backward time.
  model       the Isaac-2B-shaped model (isaac_spec.md 1.4 dimensions, random init built on the GPU through the
              trainer's model_factory: what strategy=single with train.precision=bf16 runs) on one packed row of
              8192 tokens (8 documents, 4 images): tokens/s, MFU (the trainer's FLOPs formula: step_flops on the
              PackedBatch), peak memory; full fine-tuning (recipe sft_full) and LoRA (recipe sft_lora), each with and
              without torch.compile and activation checkpointing. The step is the loop's: strategy.forward_backward,
              the loss read back, clipping, the optimizer and schedule step.
  syncs       host syncs of one such training step (torch.cuda.set_sync_debug_mode("warn")), by source line.
  strategies  single, ddp, fsdp, zero2, zero3 on one process (a 1-rank NCCL group, as `isaac-train strategy=fsdp`
              makes on one GPU), same ~200M model and batch, a few steps: losses and max |diff| vs single.

The run has a total time budget (--budget-s); each part gets a share of what is left (unused time passes on), stops
its own sub-measurements when its share runs out and, on CUDA, runs in a child process that is killed at the end of
its share (a hang, a CUDA fault or an OOM then costs that part only; what it measured until then is kept). Parts
that do not fit in what is left are skipped with the reason. Nothing is downloaded: models are random, data is
synthetic. Writes DIR/report.json (all figures, device, versions, date) and DIR/report.md (ready to paste into
docs/performance.md) after every part.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the hub; make sure nothing tries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PARTS = ("matmul", "attention", "model", "syncs", "strategies")
WEIGHTS = {"matmul": 0.05, "attention": 0.10, "model": 0.56, "syncs": 0.07, "strategies": 0.22}
MIN_PART_S = 5.0  # a part with less than this left is skipped
RESERVE_S = 5.0  # kept for writing the report
T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


@dataclass
class Ctx:
    """What a part needs to know; it writes its figures into `results` (saved after each sub-measurement)."""

    name: str
    device: str  # "cuda" | "cpu"
    tiny: bool
    quick: bool
    attn_backend: str
    deadline: float  # time.time() by which the part should be done
    t0: float = 0.0  # start of the whole run (for progress lines)
    ceiling_tflops: float | None = None
    peak_tflops: float | None = None
    inject: list[str] = field(default_factory=list)
    result_path: str | None = None
    results: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.time()

    def torch_device(self):
        import torch

        return torch.device("cuda", 0) if self.device == "cuda" else torch.device("cpu")

    def save(self, status: str = "running", **extra: Any) -> None:
        if self.result_path:
            write_json(Path(self.result_path), {"status": status, "results": self.results, **extra})


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def short_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:400] if str(err).strip() else ''}"


# ---- models and data -------------------------------------------------------------------------------------------


def isaac_2b_config(text_layers: int = 28, vision_layers: int = 27, vocab: int = 151936, backend: str = "auto"):
    """Isaac-2B's dimensions (isaac_spec.md 1.4: Qwen3-1.7B decoder, SigLIP2-so400m/16 tower, projector 4608 ->
    18432 -> 2048, untied LM head: 2.57B parameters); fewer layers or a smaller vocabulary for the mid-size
    checks (then the special ids sit at the top of that vocabulary)."""
    from isaac_train.model.config import IsaacConfig

    full = vocab == 151936
    bos, eos, image = (151643, 151645, 151655) if full else (vocab - 3, vocab - 2, vocab - 1)
    text = dict(vocab_size=vocab, hidden_size=2048, intermediate_size=6144, num_hidden_layers=text_layers,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
                max_position_embeddings=40960, hidden_act="silu", bos_token_id=bos, eos_token_id=eos,
                pad_token_id=bos)
    vision = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=vision_layers, num_attention_heads=16,
                  patch_size=16, num_channels=3, num_patches=256, pixel_shuffle_scale_factor=2,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    return IsaacConfig(text_config=text, vision_config=vision, video_patch_size=16, vision_max_num_patches=6144,
                       vision_min_num_patches=256, pixel_shuffle_scale=2, max_sequence_length=16384,
                       image_token_id=image, attn_backend=backend, bos_token_id=bos, eos_token_id=eos,
                       pad_token_id=bos)


def strategies_config():
    """~200M parameters: 12 decoder layers of hidden 1024, a 6-block vision tower of 512, vocabulary 4096."""
    from isaac_train.model.config import IsaacConfig

    v = 4096
    return IsaacConfig(
        text_config=dict(vocab_size=v, hidden_size=1024, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=64, rope_theta=1e6,
                         max_position_embeddings=8192, bos_token_id=v - 3, eos_token_id=v - 2, pad_token_id=v - 3),
        vision_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                           patch_size=16, num_channels=3, num_patches=256, pixel_shuffle_scale_factor=2),
        video_patch_size=16, pixel_shuffle_scale=2, image_token_id=v - 1, bos_token_id=v - 3, eos_token_id=v - 2,
        pad_token_id=v - 3,
    )


def tiny_model_config():
    from isaac_train.model.tiny import tiny_config

    return tiny_config()


def describe_config(config) -> str:
    t, v = config.text_config, config.vision_config
    return (f"decoder {t.num_hidden_layers} x {t.hidden_size} ({t.num_attention_heads} heads / "
            f"{t.num_key_value_heads} kv of {t.head_dim}, vocab {t.vocab_size}), vision {v.num_hidden_layers} x "
            f"{v.hidden_size} ({v.num_attention_heads} heads)")


def synthetic_batch(config, seq: int, docs: int, grids: list[tuple[int, int]], seed: int = 0):
    """One packed row of exactly `seq` tokens: `docs` documents of random text (all of it labelled, as in
    pre-training), the i-th of the first len(grids) documents holding image i after 8 text tokens; positions,
    cu_seqlens and label count as the packer makes them. Returns a PackedBatch on the CPU."""
    import torch

    from isaac_train.data.packing import PackedBatch
    from isaac_train.model.packed import PackedLayout
    from isaac_train.model.rope import mrope_positions

    gen = torch.Generator().manual_seed(seed)
    merge = config.vision_config.pixel_shuffle_scale_factor
    specials = [config.image_token_id, config.text_config.bos_token_id, config.text_config.eos_token_id,
                config.text_config.pad_token_id]
    lo = 10
    hi = min([config.text_config.vocab_size, 150000] + [s for s in specials if s is not None and s > lo])
    image_tokens = [h * w // merge**2 for h, w in grids]
    text = seq - sum(image_tokens)
    if len(grids) > docs or text < docs * 16:
        raise ValueError(f"cannot pack {len(grids)} images and {docs} documents into {seq} tokens")
    ids, labels, lengths = [], [], []
    for d in range(docs):
        n_text = text // docs if d < docs - 1 else text - (text // docs) * (docs - 1)
        doc = torch.randint(lo, hi, (n_text,), generator=gen)
        lab = doc.clone()
        if d < len(grids):
            img = torch.full((image_tokens[d],), config.image_token_id)
            doc = torch.cat([doc[:8], img, doc[8:]])
            lab = torch.cat([lab[:8], torch.full_like(img, -100), lab[8:]])
        ids.append(doc)
        labels.append(lab)
        lengths.append(len(doc))
    input_ids = torch.cat(ids)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    starts = torch.zeros(seq, dtype=torch.bool)
    starts[cu[:-1].long()] = True
    grid_t = torch.tensor(grids, dtype=torch.long).reshape(-1, 2)
    positions = mrope_positions(input_ids == config.image_token_id, grid_t // merge, starts)
    vc = config.vision_config
    patches = torch.randn(sum(h * w for h, w in grids), vc.num_channels * vc.patch_size**2, generator=gen)
    label_rows = torch.cat(labels)[None]
    # the host's layout, as the packer makes it: the step reads nothing back from the device to learn it
    layout = PackedLayout.from_inputs(cu.tolist(), label_rows, image_grids=[tuple(g) for g in grids],
                                      image_tokens=sum(image_tokens))
    return PackedBatch(
        input_ids=input_ids[None], labels=label_rows, position_ids=positions[None], cu_seqlens=cu,
        pixel_values=patches if grids else None, image_grid_hw=grid_t,
        sample_keys=[[f"doc{d}" for d in range(docs)]], meta={"padding": 0}, layout=layout,
    )


def describe_batch(batch) -> dict:
    cu = batch.cu_seqlens.tolist()
    grids = batch.image_grid_hw.tolist()
    return {"tokens": batch.num_tokens, "documents": len(cu) - 1, "document_lengths": [b - a for a, b in
            zip(cu[:-1], cu[1:], strict=True)], "images": len(grids), "image_grids": grids,
            "patches": sum(h * w for h, w in grids), "label_tokens": batch.num_label_tokens}


def row_text(row: dict) -> str:
    return f"{row['tokens']} tokens, {row['documents']} docs, {row['images']} images ({row['patches']} patches)"


# ---- the trainer's pieces ----------------------------------------------------------------------------------------


def compose(overrides: list[str]):
    """A Config exactly as `isaac-train OVERRIDES` composes and validates it (paths not checked)."""
    from isaac_train.train.cli import compose_config

    return compose_config(["data.demo=true", "model.size=tiny", *overrides], check_files=False)


def on_device(make):
    """model_factory's `make`, building the model directly on its CUDA device (random init on the GPU: seconds
    for 2.5B parameters instead of minutes on the CPU); the model is the same as the trainer's otherwise."""
    import torch

    def build_there(device, weights: bool = True):
        if torch.device(device).type != "cuda":
            return make(device, weights)
        with torch.device(device):
            return make(device, weights)

    return build_there


def setup_strategy(cfg, model_config, env, build_on_device: bool):
    """make_strategy + strategy.setup with the trainer's model factory, optimizer and schedule."""
    from isaac_train import factory
    from isaac_train.distributed.strategy import make_strategy
    from isaac_train.train import build

    strategy = make_strategy(cfg.strategy, env, cfg.train)
    make = factory.model_factory(cfg, model_config)
    strategy.setup(on_device(make) if build_on_device else make, lambda m: build.build_optimizer(m, cfg),
                   lambda o: build.build_scheduler(o, cfg))
    strategy.model.train()
    return strategy


def train_step(strategy, env, cpu_batch, clip: float | None) -> tuple[float, float]:
    """One step as the trainer runs it (isaac_train.train.loop.train_step, one micro-batch): (loss, grad norm)."""
    from isaac_train.train.loop import train_step as loop_step

    step = loop_step(strategy, env, [cpu_batch], clip)
    return step.loss_sum / step.label_tokens, step.grad_norm


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device) -> float:
    """Collect garbage and return the CUDA memory still allocated (GiB)."""
    import torch

    gc.collect()
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device) / 2**30


class BackendProbe:
    """Which kernel the attention layers actually ran: reads the AttentionSpec the first decoder layer and the
    first vision block hand to their attention module (no change to the model; removed after one step)."""

    def __init__(self, isaac) -> None:
        self.seen: dict[str, str] = {}
        self.handles = []
        try:
            targets = {"decoder": isaac.model.layers[0].self_attn,
                       "vision": isaac.model.vision_embedding[0].encoder.layers[0].self_attn}
            for name, module in targets.items():
                self.handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        except Exception as err:  # the model's structure changed: report, do not fail the measurement
            self.seen["probe"] = short_error(err)

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            spec = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            self.seen.setdefault(name, str(getattr(spec, "backend", type(spec).__name__)))

        return hook

    def remove(self) -> dict[str, str]:
        for h in self.handles:
            h.remove()
        self.handles = []
        return self.seen


def backend_text(seen: dict | None) -> str:
    if not seen:
        return "?"
    return " / ".join(str(seen.get(k, "?")) for k in ("decoder", "vision"))


def mfu_fields(tflops: float, ctx: Ctx) -> dict:
    return {"tflops": tflops,
            "mfu_datasheet": tflops / ctx.peak_tflops if ctx.peak_tflops else None,
            "mfu_measured_ceiling": tflops / ctx.ceiling_tflops if ctx.ceiling_tflops else None}


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


# ---- matmul ----------------------------------------------------------------------------------------------


def part_matmul(ctx: Ctx) -> None:
    import torch

    device = ctx.torch_device()
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 GEMMs on a CPU say nothing; the dry run uses fp32
    n = 256 if ctx.tiny else 8192
    shapes = [(n, n, n)] + ([] if ctx.tiny else [(8192, 2048, 6144), (8192, 6144, 2048)])
    res = ctx.results
    res.update(dtype=str(dtype).replace("torch.", ""), shapes=[], datasheet_tflops=ctx.peak_tflops)
    for m, k, nn in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, nn, device=device, dtype=dtype)
        c = torch.empty(m, nn, device=device, dtype=dtype)
        warm_until = time.perf_counter() + (1.0 if cuda and (m, k, nn) == shapes[0] else 0.1)  # let clocks ramp
        while time.perf_counter() < warm_until:
            torch.matmul(a, b, out=c)
            sync(device)
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        sync(device)
        iters = max(3, min(200, int(0.2 / max(time.perf_counter() - t, 1e-6))))
        best = math.inf
        for _ in range(3 if ctx.quick else 5):
            t = time.perf_counter()
            for _ in range(iters):
                torch.matmul(a, b, out=c)
            sync(device)
            best = min(best, (time.perf_counter() - t) / iters)
        tflops = 2 * m * k * nn / best / 1e12
        res["shapes"].append({"m": m, "k": k, "n": nn, "ms": best * 1e3, "tflops": tflops})
        say(f"[matmul] {m}x{k}x{nn} {res['dtype']}: {fmt(tflops)} TFLOP/s ({best * 1e3:.3f} ms)")
        del a, b, c
        ctx.save()
    res["ceiling_tflops"] = res["shapes"][0]["tflops"]
    if ctx.peak_tflops:
        res["ceiling_vs_datasheet"] = res["ceiling_tflops"] / ctx.peak_tflops
        say(f"[matmul] measured ceiling {res['ceiling_tflops']:.0f} TFLOP/s = {pct(res['ceiling_vs_datasheet'])} "
            f"of the datasheet's {ctx.peak_tflops:.0f}")


# ---- attention backends -------------------------------------------------------------------------------


def part_attention(ctx: Ctx) -> None:
    import torch

    from isaac_train.model import IsaacForConditionalGeneration
    from isaac_train.model.attention import flash_attn_available

    device = ctx.torch_device()
    cuda = device.type == "cuda"
    config = tiny_model_config() if ctx.tiny else isaac_2b_config(text_layers=4, vision_layers=4, vocab=4096)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = IsaacForConditionalGeneration(config)
    model.to(dtype)
    rows = {"main": synthetic_batch(config, *((128, 3, [(4, 6), (8, 4)]) if ctx.tiny else
                                             (4096, 4, [(32, 32), (16, 48)]))),
            "short": synthetic_batch(config, *((64, 2, [(4, 4)]) if ctx.tiny else (1024, 2, [(16, 16)])), seed=1)}
    res = ctx.results
    res.update(model=describe_config(config), dtype=str(dtype).replace("torch.", ""),
               rows={k: describe_batch(v) for k, v in rows.items()}, backends=[])
    warm, timed = (1, 1) if ctx.tiny else ((1, 3) if ctx.quick else (2, 5))
    refs: dict[str, Any] = {}
    plan = [("sdpa", "main"), ("varlen", "main"), ("flash_attn", "main"), ("sdpa", "short"), ("eager", "short")]
    for backend, row in plan:
        entry = {"backend": backend, "row": row}
        res["backends"].append(entry)
        if backend in ("varlen", "flash_attn") and not cuda:
            entry["skipped"] = "needs CUDA (varlen flash kernels run on a GPU in bf16/fp16)"
        elif backend == "flash_attn" and not flash_attn_available():
            entry["skipped"] = "the flash-attn package is not installed"
        elif ctx.left() < 3:
            entry["skipped"] = f"part time budget spent ({ctx.left():.0f} s left)"
        if "skipped" in entry:
            say(f"[attention] {backend} on the {row} row: skipped: {entry['skipped']}")
            continue
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            entry.update(measure_backend(model, backend, rows[row].to(device), refs, row, warm, timed, device))
            diff = (f"max |logit diff| vs sdpa {entry['max_abs_logit_diff']:.3e} "
                    f"(mean {entry['mean_abs_logit_diff']:.2e})" if "max_abs_logit_diff" in entry else "reference")
            say(f"[attention] {backend} on the {row} row ({row_text(res['rows'][row])}): {diff}, forward+backward "
                f"{entry['fwd_bwd_ms']:.1f} ms, kernels {backend_text(entry.get('ran'))}")
        except Exception as err:
            entry["error"] = short_error(err)
            say(f"[attention] {backend} on the {row} row: ERROR {entry['error']}")
            if cuda and "CUDA error" in str(err):
                raise  # the CUDA context is unusable now: the rest of this part cannot run
        ctx.save()
    del model, refs
    free_memory(device)


def measure_backend(model, backend, batch, refs, row, warm, timed, device) -> dict:
    import torch

    model.config.attn_backend = backend  # the one switch for the decoder and the vision tower
    inputs = batch.model_inputs()
    out: dict[str, Any] = {}
    model.eval()
    probe = BackendProbe(model)
    with torch.no_grad():
        result = model(**inputs)
    out["ran"] = probe.remove()
    logits = result.logits.float()
    out["loss"] = float(result.loss)
    if backend == "sdpa":
        refs[row] = (logits, out["loss"])
    elif row in refs:
        ref_logits, ref_loss = refs[row]
        diff = (logits - ref_logits).abs()
        out["max_abs_logit_diff"] = float(diff.max())
        out["mean_abs_logit_diff"] = float(diff.mean())
        out["loss_diff_vs_sdpa"] = out["loss"] - ref_loss
    del result, logits
    model.train()
    times = []
    for _ in range(warm + timed):
        sync(device)
        t = time.perf_counter()
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t)
    out["fwd_bwd_ms"] = statistics.median(times[warm:]) * 1e3
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


# ---- the 2B-shaped model through the trainer -------------------------------------------------------------

MODEL_RUNS = [  # (training, torch.compile, activation checkpointing): cheapest and most asked-for first
    ("full", False, False), ("full", False, True), ("lora", False, False), ("lora", False, True),
    ("full", True, False), ("full", True, True), ("lora", True, False), ("lora", True, True),
]


def part_model(ctx: Ctx) -> None:
    import copy

    from isaac_train.metrics import flops

    device = ctx.torch_device()
    cuda = device.type == "cuda"
    config = tiny_model_config() if ctx.tiny else isaac_2b_config()
    config.attn_backend = ctx.attn_backend
    seq, docs, grids = (256, 4, [(8, 8), (4, 8)]) if ctx.tiny else (8192, 8, [(40, 40), (32, 48), (24, 64), (48, 32)])
    batch = synthetic_batch(config, seq, docs, grids)
    common = ["strategy=single", "train.precision=bf16", f"train.seq_len={seq}",
              f"model.attn_backend={ctx.attn_backend}", "train.max_steps=1000"]
    recipes = {"full": compose(["recipe=sft_full", *common]), "lora": compose(["recipe=sft_lora", *common])}
    res = ctx.results
    res.update(model=describe_config(config), row=describe_batch(batch), strategy="single", precision="bf16",
               formula=flops.__doc__.strip(), runs=[])
    warm, timed = (1, 1) if ctx.tiny else ((2, 3) if ctx.quick else (3, 5))
    eager_s: dict[str, float] = {}  # the longest eager run so far, by training mode
    compiled_once: set[str] = set()  # training modes whose blocks were compiled once (Inductor caches them)
    ran_by: dict[tuple[str, str], dict] = {}  # kernels seen in the eager runs, by (training, attn_backend)

    def need(training: str, compiled: bool) -> float:
        """Seconds a run should take: its eager twin, plus a first compilation (optimistic: a child is killed at
        the end of its share anyway, and the runs after a compiled one are compiled ones too)."""
        first_compile = compiled and training not in compiled_once and not ctx.tiny
        return eager_s.get(training, 5.0 if ctx.tiny else 30.0) + (60.0 if first_compile else 0.0)

    queue = [(t, c, a, None) for t, c, a in MODEL_RUNS]
    first = True
    while queue:
        training, compiled, ac, backend = queue.pop(0)
        entry = {"training": training, "compile": compiled, "activation_checkpointing": ac,
                 "attn_backend": backend or ctx.attn_backend}
        res["runs"].append(entry)
        label = (f"{training} fine-tuning, compile {'on' if compiled else 'off'}, activation checkpointing "
                 f"{'on' if ac else 'off'}, attn_backend={entry['attn_backend']}")
        if ctx.quick and compiled:
            entry["skipped"] = "--quick: torch.compile runs left out"
        elif ctx.left() < need(training, compiled):
            entry["skipped"] = (f"part time budget: ~{need(training, compiled):.0f} s needed, "
                                f"{max(ctx.left(), 0):.0f} s left")
        if "skipped" in entry:
            say(f"[model] {label}: skipped: {entry['skipped']}")
            ctx.save()
            continue
        cfg = copy.deepcopy(recipes[training])
        cfg.model.compile, cfg.model.activation_checkpointing = compiled, ac
        if backend:
            cfg.model.attn_backend = backend
        say(f"[model] {label} ...")
        start = time.time()
        try:
            entry.update(measure_training(ctx, cfg, config, batch, warm, timed, label))
            say(f"[model] {label}: {entry['tokens_per_s']:,.0f} tokens/s, {entry['step_s']:.3f} s/step, "
                f"{fmt(entry['tflops'])} TFLOP/s, MFU {pct(entry['mfu_datasheet'])} of the datasheet, "
                f"{pct(entry['mfu_measured_ceiling'])} of the measured ceiling, peak {fmt(entry.get('peak_gib'))} "
                f"GiB, kernels {backend_text(entry.get('ran'))}")
        except Exception as err:
            entry["error"] = short_error(err)
            say(f"[model] {label}: ERROR {entry['error']}")
            if cuda and "CUDA error" in str(err):
                raise  # the CUDA context is unusable now: the rest of this part cannot run
        if compiled:
            compiled_once.add(training)
            if "ran" not in entry and (training, entry["attn_backend"]) in ran_by:
                # the AttentionSpec is built outside the compiled blocks: the same kernels as the eager run
                entry["ran"] = ran_by[(training, entry["attn_backend"])]
        else:
            eager_s[training] = max(eager_s.get(training, 0.0), time.time() - start)
            if entry.get("ran"):
                ran_by.setdefault((training, entry["attn_backend"]), entry["ran"])
        left_over = free_memory(device)
        if left_over > 1.0:  # compiled code can keep the last model alive: drop it
            import torch

            torch._dynamo.reset()
            left_over = free_memory(device)
            entry["memory_left_after_gib"] = left_over
        ctx.save()
        kernel = (entry.get("ran") or {}).get("decoder")
        if (first and cuda and not ctx.tiny and ctx.attn_backend not in ("varlen", "flash_attn")
                and kernel not in ("varlen", "flash_attn")):
            # What a user gets with this attn_backend failed or was not a varlen kernel: time varlen as well.
            entry["note"] = (f"attn_backend={ctx.attn_backend} " + (f"ran {backend_text(entry.get('ran'))} "
                             "(decoder / vision)" if kernel else "failed") + "; the next run sets attn_backend=varlen")
            say(f"[model] note: {entry['note']}")
            queue.insert(0, ("full", False, False, "varlen"))
        first = False


def measure_training(ctx: Ctx, cfg, model_config, cpu_batch, warm: int, timed: int, label: str) -> dict:
    import torch

    from isaac_train.dist_env import DistEnv
    from isaac_train.metrics.flops import model_parts, step_flops
    from isaac_train.model import isaac_of
    from isaac_train.train import build

    device = ctx.torch_device()
    cuda = device.type == "cuda"
    env = DistEnv(device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    strategy = setup_strategy(cfg, model_config, env, build_on_device=True)
    out: dict[str, Any] = {"build_s": time.perf_counter() - t}
    isaac = isaac_of(strategy.model)
    out["parameters"] = build.count_parameters(strategy.model)
    out["trainable_parameters"] = build.count_parameters(strategy.model, trainable=True)
    trains = (cfg.model.train_decoder != "frozen", cfg.model.train_vision != "none", cfg.model.train_projector)
    parts = model_parts(isaac)
    flops = step_flops(parts, cpu_batch, *trains)  # what the loop's MFU counts
    out.update(model_parts=parts, trains={"decoder": trains[0], "vision": trains[1], "projector": trains[2]},
               flops_per_step=flops)
    if cfg.peft.kind == "lora":  # the base decoder is frozen: its weight gradients are not computed (4 P T, not 6)
        out["flops_per_step_frozen_base"] = step_flops(parts, cpu_batch, False, trains[1], trains[2])
    probe = None if cfg.model.compile else BackendProbe(isaac)
    stats_before = compile_stats() if cfg.model.compile else None
    # No Inductor on the CPU dry run (minutes of C++ builds on 2 cores): the compile runs go through the same
    # config and code path but execute eagerly there.
    stance = (torch.compiler.set_stance("force_eager") if cfg.model.compile and not cuda
              else contextlib.nullcontext())
    times, losses = [], []
    with stance:
        for i in range(warm + timed):
            sync(device)
            t = time.perf_counter()
            loss, norm = train_step(strategy, env, cpu_batch, cfg.train.clip_grad_norm)
            sync(device)
            times.append(time.perf_counter() - t)
            losses.append(loss)
            if probe is not None:
                out["ran"] = probe.remove()
                probe = None
            say(f"[model]   step {i + 1}/{warm + timed} {'(warm-up) ' if i < warm else ''}{times[-1]:.3f} s, "
                f"loss {loss:.4f}, grad norm {norm:.3g}")
            if i >= warm and ctx.left() < 0:
                out["note"] = f"out of part time after {i + 1 - warm} timed steps"
                break
    step_s = statistics.median(times[warm:])
    out.update(first_step_s=times[0], step_times_s=times, losses=losses, step_s=step_s,
               tokens_per_s=cpu_batch.num_tokens / step_s, **mfu_fields(flops / step_s / 1e12, ctx))
    if "flops_per_step_frozen_base" in out:
        out["mfu_datasheet_frozen_base"] = (out["flops_per_step_frozen_base"] / step_s / 1e12 / ctx.peak_tflops
                                            if ctx.peak_tflops else None)
    if stats_before is not None:
        out["compile_stats"] = {k: v - stats_before.get(k, 0) for k, v in compile_stats().items()}
        if not cuda:
            out["note"] = "torch.compile forced eager (CPU dry run)"
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    del strategy, isaac
    return out


def compile_stats() -> dict:
    try:
        from torch._dynamo.utils import counters

        return {k: int(v) for k, v in counters["stats"].items()}
    except Exception:
        return {}


# ---- host syncs --------------------------------------------------------------------------------------


def tally_sync_warnings(caught: list) -> tuple[int, list[tuple[str, int]]]:
    """(number of synchronizing-call warnings, [(file:line, count)] most frequent first)."""
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where = Counter()
    for w in syncs:
        path = Path(w.filename)
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(ROOT)
        if "site-packages" in path.parts:
            path = Path(*path.parts[path.parts.index("site-packages") + 1:])
        where[f"{path}:{w.lineno}"] += 1
    return len(syncs), where.most_common()


def part_syncs(ctx: Ctx) -> None:
    import torch

    device = ctx.torch_device()
    config = tiny_model_config() if ctx.tiny else isaac_2b_config(text_layers=4, vision_layers=4, vocab=4096)
    config.attn_backend = ctx.attn_backend
    seq = 256 if ctx.tiny else 4096
    batch = synthetic_batch(config, seq, 4, [(8, 8), (4, 8)] if ctx.tiny else [(32, 32), (16, 48)])
    cfg = compose(["recipe=sft_full", "strategy=single", "train.precision=bf16", f"train.seq_len={seq}",
                   "model.activation_checkpointing=false", f"model.attn_backend={ctx.attn_backend}"])
    res = ctx.results
    res.update(model=describe_config(config), row=describe_batch(batch), training="full, no compile, no checkpointing")
    from isaac_train.dist_env import DistEnv

    env = DistEnv(device=device)
    strategy = setup_strategy(cfg, config, env, build_on_device=True)
    train_step(strategy, env, batch, cfg.train.clip_grad_norm)  # warm-up: lazy state (optimizer) is created once
    sync(device)
    if device.type != "cuda":
        train_step(strategy, env, batch, cfg.train.clip_grad_norm)  # the step itself still runs on the dry run
        res["skipped"] = "needs CUDA: torch.cuda.set_sync_debug_mode reports synchronizing CUDA calls only"
        say(f"[syncs] skipped: {res['skipped']}")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(strategy, env, batch, cfg.train.clip_grad_norm)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    res["host_syncs"], where = tally_sync_warnings(caught)
    res["by_location"] = [{"where": k, "count": v} for k, v in where]
    say(f"[syncs] one training step: {res['host_syncs']} synchronizing CUDA calls")
    for k, v in where[:12]:
        say(f"[syncs]   {v:4d}  {k}")
    del strategy
    free_memory(device)


# ---- strategies on one process ----------------------------------------------------------------------------

STRATEGIES = ("single", "ddp", "fsdp", "zero2", "zero3")


def one_rank_group(device) -> bool:
    """The private one-rank process group that init_distributed makes for fsdp/zero* on one process (a HashStore,
    torchrun's variables for DeepSpeed), on this part's device. True when it was created here."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                            world_size=1, timeout=timedelta(seconds=300))
    return True


def part_strategies(ctx: Ctx) -> None:
    import importlib.util

    import torch
    import torch.distributed as dist

    from isaac_train.dist_env import DistEnv

    class DDPOneRank(DistEnv):
        """World size 1 that counts as distributed: LocalStrategy wraps the model in DDP (strategy=ddp) and the
        loop's collectives really run, over the one-rank group."""

        @property
        def distributed(self) -> bool:
            return True

    device = ctx.torch_device()
    cuda = device.type == "cuda"
    config = tiny_model_config() if ctx.tiny else strategies_config()
    seq = 128 if ctx.tiny else 2048
    batch = synthetic_batch(config, seq, 4, [(4, 6), (8, 4)] if ctx.tiny else [(32, 32), (16, 48)])
    steps = 2 if ctx.tiny else (3 if ctx.quick else 5)
    res = ctx.results
    res.update(model=describe_config(config), row=describe_batch(batch), steps=steps, precision="bf16",
               attn_backend="sdpa", strategies={},
               note="The same batch every step; bf16 autocast over fp32 weights (single, ddp, zero*), bf16 weights "
                    "with fp32 reduction (fsdp): agreement to ~1e-2 expected for fsdp, closer for the others.")
    created = one_rank_group(device)
    try:
        for name in STRATEGIES:
            entry = res["strategies"].setdefault(name, {})
            if name.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
                entry["skipped"] = "DeepSpeed is not installed (pip install 'isaac-train[deepspeed]')"
            elif name.startswith("zero") and not cuda and torch.cuda.is_available():
                entry["skipped"] = "DeepSpeed picks the CUDA accelerator when one is present; run this part on it"
            elif ctx.left() < 3:
                entry["skipped"] = f"part time budget spent ({ctx.left():.0f} s left)"
            if "skipped" in entry:
                say(f"[strategies] {name}: skipped: {entry['skipped']}")
                continue
            strategy = None
            try:
                cfg = compose(["recipe=demo_cpu", f"strategy={name}", "train.precision=bf16", f"train.seq_len={seq}",
                               "model.attn_backend=sdpa", "optim.warmup_steps=0", "train.max_steps=100"])
                env = DDPOneRank(device=device) if name == "ddp" else DistEnv(device=device)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                # Built on the CPU from train.seed as the trainer does, so every strategy starts from the same weights.
                strategy = setup_strategy(cfg, config, env, build_on_device=False)
                losses, times = [], []
                for _ in range(steps):
                    sync(device)
                    t = time.perf_counter()
                    loss, _ = train_step(strategy, env, batch, cfg.train.clip_grad_norm)
                    sync(device)
                    times.append(time.perf_counter() - t)
                    losses.append(loss)
                entry.update(losses=losses, step_ms=statistics.median(times[1:] or times) * 1e3,
                             wrapped=type(strategy.model).__name__)
                if cuda:
                    entry["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                say(f"[strategies] {name}: losses {', '.join(f'{x:.5f}' for x in losses)} "
                    f"({entry['step_ms']:.0f} ms/step, {entry['wrapped']})")
            except Exception as err:
                entry["error"] = short_error(err)
                say(f"[strategies] {name}: ERROR {entry['error']}")
                if cuda and "CUDA error" in str(err):
                    raise
            finally:
                teardown(strategy)
                strategy = None
                free_memory(device)
            ctx.save()
        base = res["strategies"].get("single", {}).get("losses")
        for entry in res["strategies"].values():
            if base and entry.get("losses"):
                entry["max_abs_diff_vs_single"] = max(abs(a - b) for a, b in zip(entry["losses"], base, strict=False))
        say("[strategies] max |loss - single|: " + ", ".join(
            f"{k} {v['max_abs_diff_vs_single']:.2e}" for k, v in res["strategies"].items()
            if "max_abs_diff_vs_single" in v))
    finally:
        if created:
            dist.destroy_process_group()


def teardown(strategy) -> None:
    if strategy is None:
        return
    engine = getattr(strategy, "engine", None)
    with contextlib.suppress(Exception):
        if engine is not None:
            engine.destroy()
    if hasattr(strategy, "_hf_config"):
        strategy._hf_config = None  # transformers reads ZeRO-3 from a global weak reference to this object


PART_FNS = {"matmul": part_matmul, "attention": part_attention, "model": part_model, "syncs": part_syncs,
            "strategies": part_strategies}


# ---- running the parts ------------------------------------------------------------------------------------------


def run_inline(ctx: Ctx, fns: dict) -> dict:
    """Run one part in this process; an exception becomes the part's error, its figures so far are kept."""
    start = time.time()
    status, reason, trace = "ok", None, None
    try:
        if ctx.name in ctx.inject:
            raise RuntimeError(f"injected failure (--inject-failure {ctx.name})")
        fns[ctx.name](ctx)
    except Exception as err:
        status, reason, trace = "error", short_error(err), traceback.format_exc()[-4000:]
        say(f"[{ctx.name}] FAILED: {reason}")
    with contextlib.suppress(Exception):
        free_memory(ctx.torch_device())
    entry = {"status": status, "reason": reason, "seconds": time.time() - start, "results": ctx.results}
    if trace:
        entry["traceback"] = trace
    return entry


def run_child(ctx: Ctx, work: Path, timeout: float) -> dict:
    """Run one part in a child process (its own CUDA context), killed after `timeout` s; its figures come back
    through a file it rewrites after every sub-measurement, so a kill keeps what it measured."""
    ctx_path = work / f"{ctx.name}.ctx.json"
    result_path = work / f"{ctx.name}.json"
    result_path.unlink(missing_ok=True)
    ctx.result_path = str(result_path)
    write_json(ctx_path, asdict(ctx))
    start = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(ctx_path)], cwd=ROOT,
                            env=env, start_new_session=True)
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:  # timed out or we are being stopped: end the child and what it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    saved: dict = {}
    with contextlib.suppress(Exception):
        saved = json.loads(result_path.read_text())
    entry = {"status": saved.get("status", "error"), "reason": saved.get("reason"), "seconds": time.time() - start,
             "results": saved.get("results", {})}
    if saved.get("traceback"):
        entry["traceback"] = saved["traceback"]
    if timed_out:
        entry.update(status="timeout", reason=f"killed at the end of its time share ({timeout:.0f} s); the figures "
                                              "it measured until then are kept")
        say(f"[{ctx.name}] {entry['reason']}")
    elif entry["status"] == "running" or proc.returncode not in (0, 1):
        entry.update(status="error", reason=f"the child process died (exit code {proc.returncode}); see its output "
                                            "above; the figures it measured until then are kept")
        say(f"[{ctx.name}] {entry['reason']}")
    return entry


def child_main(ctx_path: str) -> int:
    global T0
    data = json.loads(Path(ctx_path).read_text())
    ctx = Ctx(**data)
    T0 = ctx.t0 or T0
    entry = run_inline(ctx, PART_FNS)
    ctx.save(status=entry["status"], reason=entry["reason"], traceback=entry.get("traceback"))
    return 0 if entry["status"] == "ok" else 1


def part_budgets_left(names: list[str], i: int, left: float) -> float:
    """The time share of part names[i]: what is left, split by weight over the parts still to run."""
    rest = sum(WEIGHTS.get(n, 0.1) for n in names[i:])
    return left * WEIGHTS.get(names[i], 0.1) / rest


def run_all(args, report: dict, out: Path, fns: dict | None = None) -> dict:
    """Run the selected parts in order within the total budget; the report is rewritten after every part."""
    fns = fns or PART_FNS
    names = [n for n in PARTS if n in fns]
    selected = [n for n in names if n in args.parts]
    for name in names:
        report["parts"][name] = {"status": "pending", "results": {}}
        if name not in selected:
            report["parts"][name] = {"status": "skipped", "reason": "not selected (--parts)", "results": {}}
    work = out / "parts"
    work.mkdir(parents=True, exist_ok=True)
    start = report.setdefault("_start", time.time())
    for i, name in enumerate(selected):
        left = args.budget_s - (time.time() - start) - RESERVE_S
        share = part_budgets_left(selected, i, left)
        if share < MIN_PART_S:
            report["parts"][name] = {"status": "skipped", "results": {},
                                     "reason": f"over the total time budget ({max(left, 0):.0f} s of "
                                               f"{args.budget_s:.0f} s left)"}
            say(f"[{name}] skipped: {report['parts'][name]['reason']}")
            write_report(report, out)
            continue
        ceiling = report["parts"].get("matmul", {}).get("results", {}).get("ceiling_tflops")
        ctx = Ctx(name=name, device=args.device, tiny=args.tiny, quick=args.quick, attn_backend=args.attn_backend,
                  deadline=time.time() + share * 0.92 - 2, t0=T0, ceiling_tflops=ceiling,
                  peak_tflops=report.get("datasheet_tflops"), inject=list(args.inject_failure))
        say(f"== {name}: up to {share:.0f} s {'(child process)' if args.isolate else ''}")
        report["parts"][name] = {"status": "running", "results": {}}
        try:
            report["parts"][name] = run_child(ctx, work, share) if args.isolate else run_inline(ctx, fns)
        finally:
            report["elapsed_s"] = time.time() - start
            write_report(report, out)
        part = report["parts"][name]
        say(f"== {name}: {part['status']}{': ' + part['reason'] if part.get('reason') else ''} "
            f"({part.get('seconds', 0):.0f} s)")
    report["elapsed_s"] = time.time() - start
    write_report(report, out)
    return report


# ---- the report ---------------------------------------------------------------------------------------------------


def environment(args) -> dict:
    import torch

    info: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
                            "device": "cpu", "device_kind": args.device}
    if args.device == "cuda":
        from isaac_train.metrics.flops import device_peak_flops

        dev = torch.device("cuda", 0)
        info["device"] = torch.cuda.get_device_name(dev)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(dev).total_memory / 2**30
        peak = device_peak_flops(dev)
        info["datasheet_tflops"] = peak / 1e12 if peak else None
    from importlib.metadata import PackageNotFoundError, version

    for module, dist in (("transformers", "transformers"), ("peft", "peft"), ("deepspeed", "deepspeed"),
                         ("flash_attn", "flash-attn")):
        try:
            info[module] = version(dist)
        except PackageNotFoundError:
            info[module] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_dirty"] = bool(dirty)
    except Exception:
        info["git_commit"] = None
    return info


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", {k: v for k, v in report.items() if not k.startswith("_")})
    (out / "report.md").write_text(markdown(report))


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and spec == ".1f" and 0 < abs(x) < 1:
        spec = ".3g"  # tiny dry-run figures stay readable
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def reason_of(entry: dict) -> str | None:
    for key in ("error", "skipped"):
        if entry.get(key):
            return f"{'error' if key == 'error' else 'skipped'}: {entry[key]}"
    return None


def md_matmul(r: dict) -> list[str]:
    lines = ["| m x k x n | dtype | ms | TFLOP/s |", "|---|---|---|---|"]
    lines += [f"| {s['m']} x {s['k']} x {s['n']} | {r.get('dtype')} | {s['ms']:.3f} | {fmt(s['tflops'])} |"
              for s in r.get("shapes", [])]
    if r.get("ceiling_tflops"):
        lines.append("")
        lines.append(f"Measured ceiling: **{fmt(r['ceiling_tflops'])} TFLOP/s**" + (
            f", {pct(r.get('ceiling_vs_datasheet'))} of the datasheet's {r['datasheet_tflops']:.0f} TFLOP/s "
            "(isaac_train/metrics/flops.py PEAK_TFLOPS)." if r.get("datasheet_tflops") else
            " (no datasheet peak for this device in isaac_train/metrics/flops.py)."))
    return lines


def md_attention(r: dict) -> list[str]:
    rows = r.get("rows", {})
    lines = [f"Model: {r.get('model')}, random weights in {r.get('dtype')}. Rows: " + "; ".join(
        f"{k}: {row_text(v)}" for k, v in rows.items()) + ".", "",
        "| backend | row | max abs logit diff vs sdpa | mean abs diff | fwd+bwd ms | kernels (decoder / vision) |",
        "|---|---|---|---|---|---|"]
    for e in r.get("backends", []):
        why = reason_of(e)
        if why:
            lines.append(f"| {e['backend']} | {e['row']} | {why} | | | |")
            continue
        ref = "reference" if "max_abs_logit_diff" not in e else f"{e['max_abs_logit_diff']:.2e}"
        lines.append(f"| {e['backend']} | {e['row']} | {ref} | {fmt(e.get('mean_abs_logit_diff'), '.2e')} | "
                     f"{fmt(e.get('fwd_bwd_ms'))} | {backend_text(e.get('ran'))} |")
    return lines


def md_model(r: dict) -> list[str]:
    row = r.get("row", {})
    lines = [f"Model: {r.get('model')}; one packed row of {row_text(row) if row else '?'}, document lengths "
             f"{row.get('document_lengths')}; strategy={r.get('strategy')}, train.precision={r.get('precision')} "
             "(bf16 autocast; weights held as the trainer's model_factory holds them), AdamW step included; "
             "recipes sft_full (decoder + projector train, vision frozen) and sft_lora (LoRA r=16 on the decoder, "
             "projector trains).", "",
             "| training | compile | act. ckpt | attention (decoder / vision) | tokens/s | s/step | TFLOP/s | "
             "MFU (datasheet) | MFU (measured ceiling) | peak GiB | first step s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for e in r.get("runs", []):
        head = (f"| {e['training']} | {'on' if e['compile'] else 'off'} | "
                f"{'on' if e['activation_checkpointing'] else 'off'} | ")
        why = reason_of(e)
        if why:
            lines.append(head + f"{e.get('attn_backend')}: {why} | | | | | | | | |")
            continue
        lines.append(head + f"{e.get('attn_backend')}: {backend_text(e.get('ran'))} | {e['tokens_per_s']:,.0f} | "
                     f"{e['step_s']:.3f} | {fmt(e['tflops'])} | {pct(e.get('mfu_datasheet'))} | "
                     f"{pct(e.get('mfu_measured_ceiling'))} | {fmt(e.get('peak_gib'))} | "
                     f"{fmt(e.get('first_step_s'))} |")
        if e.get("note"):
            notes.append(e["note"])
    first = next((e for e in r.get("runs", []) if "flops_per_step" in e), None)
    if first:
        p = first["model_parts"]
        lines += ["", f"FLOPs per step ({first['training']}): {first['flops_per_step']:.4g}, from "
                  f"`isaac_train.metrics.flops.step_flops` on the PackedBatch with P_dec = {p['decoder_params']:,}, "
                  f"L*H*d_head = {p['decoder_attn_dim']:,}, P_vis = {p['vision_params']:,}, L_v*d_v = "
                  f"{p['vision_attn_dim']:,}, P_proj = {p['projector_params']:,}, T = {row.get('tokens')}, "
                  f"N_patches = {row.get('patches')}."]
        lora = next((e for e in r.get("runs", []) if e.get("mfu_datasheet_frozen_base")), None)
        if lora:
            lines.append(f"LoRA rows count the decoder as training (6 P T), as the trainer logs it; counting 4 P T "
                         f"for the frozen base, the first LoRA run is {pct(lora.get('mfu_datasheet_frozen_base'))} "
                         "of the datasheet.")
    if r.get("formula"):
        lines += ["", "The formula (isaac_train/metrics/flops.py):", ""]
        lines += ["> " + line for line in r["formula"].splitlines()]
    lines += [f"- {n}" for n in dict.fromkeys(notes)]
    return lines


def md_syncs(r: dict) -> list[str]:
    if r.get("skipped"):
        return [f"skipped: {r['skipped']}"]
    lines = [f"One training step (model: {r.get('model')}; {row_text(r['row']) if r.get('row') else ''}; "
             f"{r.get('training')}): **{r.get('host_syncs')} synchronizing CUDA calls** "
             "(`torch.cuda.set_sync_debug_mode(\"warn\")`).", "", "| count | where |", "|---|---|"]
    lines += [f"| {x['count']} | `{x['where']}` |" for x in r.get("by_location", [])[:15]]
    return lines


def md_strategies(r: dict) -> list[str]:
    lines = [f"Model: {r.get('model')}; {row_text(r['row']) if r.get('row') else ''}; {r.get('steps')} steps of the "
             f"same batch, train.precision={r.get('precision')}, attn_backend={r.get('attn_backend')}; one process "
             f"(a 1-rank process group). {r.get('note', '')}", "",
             "| strategy | losses | max abs diff vs single | ms/step | peak GiB |", "|---|---|---|---|---|"]
    for name, e in r.get("strategies", {}).items():
        why = reason_of(e)
        if why:
            lines.append(f"| {name} | {why} | | | |")
            continue
        lines.append(f"| {name} | {', '.join(f'{x:.5f}' for x in e.get('losses', []))} | "
                     f"{fmt(e.get('max_abs_diff_vs_single'), '.2e')} | {fmt(e.get('step_ms'), '.0f')} | "
                     f"{fmt(e.get('peak_gib'), '.2f')} |")
    return lines


MD = {"matmul": ("Matmul ceiling", md_matmul), "attention": ("Attention backends: agreement and speed", md_attention),
      "model": ("Isaac-2B-shaped model, one packed row, strategy=single", md_model),
      "syncs": ("Host syncs of one training step", md_syncs),
      "strategies": ("Strategies on one process: loss agreement", md_strategies)}


def markdown(report: dict) -> str:
    lines = [f"## GPU report: {report.get('device')} ({report.get('date', '')[:10]})", "",
             f"`python benchmarks/gpu_report.py{report.get('command', '')}`: torch {report.get('torch')} (CUDA "
             f"{report.get('cuda')}), transformers {report.get('transformers')}, peft {report.get('peft')}, deepspeed "
             f"{report.get('deepspeed')}, flash-attn {report.get('flash_attn')}; commit {report.get('git_commit')}"
             f"{' (modified)' if report.get('git_dirty') else ''}; {fmt(report.get('elapsed_s'), '.0f')} s of a "
             f"{fmt(report.get('budget_s'), '.0f')} s budget. Raw figures: report.json.", ""]
    if report.get("tiny"):
        lines += ["**Dry run** (tiny models, tiny rows): these figures check the script, not the hardware.", ""]
    for name, part in report.get("parts", {}).items():
        title, render = MD.get(name, (name, None))
        lines += [f"### {title}", ""]
        status = part.get("status")
        if status != "ok":
            lines += [f"**{status}**" + (f": {part['reason']}" if part.get("reason") else ""), ""]
        if part.get("results") and render is not None:
            try:
                lines += render(part["results"])
            except Exception as err:  # a half-written part must not cost the report
                lines.append(f"(figures present in report.json; could not format them: {short_error(err)})")
            lines.append("")
    return "\n".join(lines) + "\n"


# ---- command line ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_report"), help="directory for report.json / report.md")
    parser.add_argument("--budget-s", type=float, default=480.0, help="total time budget in seconds")
    parser.add_argument("--quick", action="store_true", help="fewer steps, no torch.compile runs")
    parser.add_argument("--dry-run", action="store_true", help="= --device cpu --tiny: every part on CPU, tiny models")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    parser.add_argument("--tiny", action="store_true", help="tiny models and rows (logic check, not figures)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--attn-backend", default="auto", choices=("auto", "sdpa", "eager", "varlen", "flash_attn"),
                        help="model.attn_backend for the model and syncs parts (default: what a user gets)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="each part in a child process killed at the end of its share (default: on with CUDA)")
    parser.add_argument("--inject-failure", default="", help="comma-separated parts that raise at once (tests)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    if args.device == "cpu" and not args.tiny:
        print("gpu_report: no CUDA device: running the tiny CPU dry run (--dry-run)", flush=True)
        args.tiny = True
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    args.inject_failure = [p.strip() for p in args.inject_failure.split(",") if p.strip()]
    if args.isolate is None:
        args.isolate = args.device == "cuda"
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--child"]:
        return child_main(raw[1])
    args = parse_args(raw)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    report: dict[str, Any] = {"_start": T0, "command": "".join(f" {a}" for a in raw),
                              "budget_s": args.budget_s, "quick": args.quick, "tiny": args.tiny,
                              "attn_backend": args.attn_backend, "parts": {}}
    report.update(environment(args))
    say(f"gpu_report: {report['device']}, torch {report['torch']} (CUDA {report['cuda']}), datasheet peak "
        f"{fmt(report.get('datasheet_tflops'), '.0f')} TFLOP/s, budget {args.budget_s:.0f} s, parts "
        f"{','.join(args.parts)}, out {out}")
    try:
        run_all(args, report, out)
    except KeyboardInterrupt as err:
        say(f"stopped ({err}): writing what was measured")
        for name, part in report["parts"].items():
            if part.get("status") == "running":  # what its child had saved, if it ran in one
                with contextlib.suppress(Exception):
                    part["results"] = json.loads((out / "parts" / f"{name}.json").read_text())["results"]
            if part.get("status") in ("pending", "running"):
                part.update(status="skipped", reason=f"the run was stopped ({err})")
    report["elapsed_s"] = time.time() - report["_start"]
    write_report(report, out)
    statuses = {k: v.get("status") for k, v in report["parts"].items()}
    say(f"done in {report['elapsed_s']:.0f} s: {statuses}; wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
