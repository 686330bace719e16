"""A real-size run on CPU: an Isaac-2B-shaped model through the real CLI, with wall time and peak RSS per rank.

    python benchmarks/real_size.py [--out /tmp/isaac_real_size] [--strategies single,fsdp] [--nproc 2]
        [--precision bf16] [--text-layers 28] [--vision-layers 27] [--export cli|loop] [--min-free-gb 18]

Not run in CI (minutes per step, ~10 GB per copy of the weights). What it does, each phase a separate invocation
(so a phase is exactly one process tree, and its wall time and memory are that tree's):

  make      a Perceptron-layout checkpoint with random weights: Isaac-0.1's config.json (flat Qwen3-1.7B text
            fields, SigLIP2-so400m vision config, auto_map to remote code that must never be imported), three fp32
            safetensors shards split as the hub's (5 GB greedy: ~4.97 + 4.05 + 1.24 GB) with
            model.safetensors.index.json, generation_config.json, processor_config.json, and an offline tokenizer
            with Qwen3's special tokens at their real ids (the tiny BPE padded to id 151643, so config.json needs no
            changed token ids); written shard by shard. Done once, reused by later invocations.
  data      `isaac-data demo`-style shards (make_demo_dataset, 128 px images), once.
  per strategy (single: 1 process; fsdp: torchrun --nproc_per_node N, gloo):
  train     isaac-train recipe=sft_lora model.pretrained=CKPT (LoRA r16 on the decoder, projector trained)
            train.seq_len=1024 model.activation_checkpointing=true train.max_steps=2 run.export=false: load,
            2 steps, checkpoint step 2
  resume    the same command with train.max_steps=3: resumes from step 2, 1 step, checkpoint step 3
            (--export loop: with run.export=true run.export_dtype=bf16, the in-loop export after it)
  export    isaac-export RUN_DIR HF_DIR --dtype bf16 (one process, LoRA merged, sharded safetensors, verified by
            reloading); skipped with --export loop
  generate  AutoModelForImageTextToText.from_pretrained(HF_DIR, dtype=bf16) + AutoProcessor, a few new tokens
            for an image prompt

Memory: a sampler thread reads /proc/<pid>/status (VmRSS, VmHWM, RssAnon) of every process of the phase's tree
every 0.2 s; a process belongs to the rank whose RANK variable it (or its parent) carries (single: rank 0); the
torchrun agent is reported apart. Per rank: peak VmRSS of the rank's processes together (data.num_workers=0, so
there are no loader workers whose copy-on-write pages would be counted twice) and the rank process's VmHWM;
"sum" is the peak of the simultaneous total over all processes of the tree, what has to fit in the machine.
VmRSS counts file pages mapped from safetensors too (reclaimable); RssAnon is what cannot be dropped.
Before every phase the script waits until MemAvailable >= --min-free-gb (the machine is shared).

Output: a table (phase x strategy: wall s, peak RSS per rank, sum) and OUT/real_size.json; each phase's log in
OUT/logs/. --text-layers / --vision-layers shrink the depths for a quick check of the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 2**30

# Isaac-0.1's published config.json (spec 1.4): Qwen3-1.7B text fields flat, SigLIP2-so400m vision, remote code.
PERCEPTRON_CONFIG = {
    "architectures": ["IsaacForConditionalGeneration"],
    "auto_map": {"AutoConfig": "modular_isaac.IsaacConfig",
                 "AutoModelForCausalLM": "modular_isaac.IsaacForConditionalGeneration"},
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
    "max_position_embeddings": 40960, "max_sequence_length": 16384, "max_window_layers": 28, "model_type": "isaac",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "pixel_shuffle_scale": 2,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.56.1", "use_cache": True,
    "use_sliding_window": False, "video_patch_size": 16,
    "vision_config": {"attention_dropout": 0.0, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152,
                      "intermediate_size": 4304, "layer_norm_eps": 1e-06, "model_type": "pixel_shuffle_siglip2",
                      "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 27, "num_patches": 256,
                      "patch_size": 16, "pixel_shuffle_scale_factor": 2},
    "vision_max_num_patches": 6144, "vision_min_num_patches": 256, "vision_token": "<image>", "vocab_size": 151936,
}
QWEN3_FIRST_ADDED_ID = 151643  # <|endoftext|>; <|im_end|> 151645, <|image_pad|> 151655
SHARD_LIMIT = 5_000_000_000  # transformers' "5GB": greedy in state-dict order, as the hub shards were written


# ---- the checkpoint --------------------------------------------------------------------------------------------


def qwen3_id_tokenizer():
    """The tiny BPE tokenizer with Qwen3's 26 added tokens at Qwen3's ids (151643...151668): filler entries
    (never produced, no merge leads to them) occupy ids 486..151642."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from isaac_train.processing.chat_template import CHAT_TEMPLATE
    from isaac_train.processing.tiny_tokenizer import QWEN3_ADDED_TOKENS, _vocab_and_merges

    vocab, merges = _vocab_and_merges()
    vocab = dict(vocab)
    for i in range(len(vocab), QWEN3_FIRST_ADDED_ID):
        vocab[f"<|unused_{i}|>"] = i
    vocab.update({token: QWEN3_FIRST_ADDED_ID + i for i, (token, _) in enumerate(QWEN3_ADDED_TOKENS)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(merges), unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN3_ADDED_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|image_pad|>"])
    if ids != [151643, 151645, 151655]:
        raise RuntimeError(f"special ids {ids}, expected Qwen3's [151643, 151645, 151655]")
    return tokenizer


def perceptron_config(text_layers: int, vision_layers: int) -> dict:
    config = json.loads(json.dumps(PERCEPTRON_CONFIG))
    config["num_hidden_layers"] = config["max_window_layers"] = text_layers
    config["layer_types"] = ["full_attention"] * text_layers
    config["vision_config"]["num_hidden_layers"] = vision_layers
    return config


def make_checkpoint(out: Path, text_layers: int, vision_layers: int, seed: int = 0) -> None:
    """Write the Perceptron-layout directory, one shard in memory at a time (fp32, random normal(0, 0.02) weights,
    norms 1, biases 0)."""
    import torch
    from safetensors.torch import save_file

    from isaac_train.model import IsaacConfig, IsaacForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    config = perceptron_config(text_layers, vision_layers)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
         "transformers_version": "4.56.1"}, indent=2) + "\n")
    (out / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "modular_isaac.IsaacProcessor"}, "processor_class": "IsaacProcessor",
        "config": {"vision_max_num_patches": 6144, "vision_min_num_patches": 256, "video_patch_size": 16,
                   "pixel_shuffle_scale": 2, "max_sequence_length": 16384, "vision_token": "<image>"}}, indent=2))
    (out / "modular_isaac.py").write_text("raise RuntimeError('remote code must not be imported')\n")
    qwen3_id_tokenizer().save_pretrained(out)

    ours = IsaacConfig.from_pretrained(out)
    with torch.device("meta"):
        structure = IsaacForConditionalGeneration(ours)
    entries = [(k, v.shape, v.dtype) for k, v in structure.state_dict().items()]  # 0.1 names = ours
    shards: list[list[tuple]] = [[]]
    size = 0
    for entry in entries:
        nbytes = entry[1].numel() * entry[2].itemsize
        if shards[-1] and size + nbytes > SHARD_LIMIT:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for key, shape, dtype in shard:
            if key.endswith(".bias"):
                t = torch.zeros(shape, dtype=dtype)
            elif len(shape) == 1:  # RMSNorm / LayerNorm weights
                t = torch.ones(shape, dtype=dtype)
            else:
                t = torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=gen)
            tensors[key] = t
            weight_map[key] = name
            total += t.numel() * t.element_size()
        save_file(tensors, out / name, metadata={"format": "pt"})
        print(f"make: wrote {name} ({sum(t.numel() * t.element_size() for t in tensors.values()) / 1e9:.2f} GB)",
              flush=True)
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    params = sum(s.numel() for _, s, _ in entries)
    print(f"make: {params / 1e9:.3f}B parameters, {total / 1e9:.2f} GB in {len(shards)} shards at {out}", flush=True)


# ---- generation from the export ------------------------------------------------------------------------------


def generate(hf_dir: Path, new_tokens: int) -> None:
    import numpy as np
    import PIL.Image
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import isaac_train  # noqa: F401  (registers the Auto classes)

    start = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.bfloat16)
    processor = AutoProcessor.from_pretrained(hf_dir)
    print(f"generate: loaded {hf_dir} in {time.perf_counter() - start:.1f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters, {model.dtype})", flush=True)
    yy, xx = np.mgrid[0:128, 0:128]
    image = PIL.Image.fromarray(np.stack([xx * 2 % 256, yy * 2 % 256, np.full_like(xx, 64)], -1).astype(np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=prompt, images=[image], return_tensors="pt")
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
    prompt_len = batch["input_ids"].shape[-1]
    new = out[0, prompt_len:].tolist()
    print(f"generate: {len(new)} new tokens {new} in {time.perf_counter() - start:.1f} s: "
          f"{processor.tokenizer.decode(new)!r}", flush=True)


# ---- running and measuring a phase -----------------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "PPid"):
                    out[key] = int(value.split()[0]) * (1024 if key != "PPid" else 1)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def _rank_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return item[5:].decode()
    return None


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _status(int(entry)).get("PPid")
            if ppid is not None:
                tree.setdefault(ppid, []).append(int(entry))
    return tree


def mem_available() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GB
    return 0.0


class Sampler(threading.Thread):
    """Samples the process tree under `root_pid`; per rank: peak of (VmRSS summed over the rank's processes),
    peak RssAnon likewise, the rank process's VmHWM; and the peak of the total over the tree."""

    def __init__(self, root_pid: int, default_rank: str | None, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.default_rank, self.interval = root_pid, default_rank, interval
        self.stop_event = threading.Event()
        self.ranks: dict[str, dict[str, float]] = {}
        self.total_peak = 0.0
        self.total_anon_peak = 0.0
        self.min_available = float("inf")
        self._rank_cache: dict[int, str | None] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self) -> None:
        tree = _children()
        per_rank: dict[str, list[float]] = {}
        total = total_anon = 0.0
        stack = [(self.root, self.default_rank)]
        while stack:
            pid, inherited = stack.pop()
            st = _status(pid)
            if not st:
                continue
            if pid not in self._rank_cache:
                self._rank_cache[pid] = _rank_of(pid)
            rank = self._rank_cache[pid] or inherited
            label = rank if rank is not None else "launcher"
            rss, anon = st.get("VmRSS", 0) / GB, st.get("RssAnon", 0) / GB
            acc = per_rank.setdefault(label, [0.0, 0.0])
            acc[0] += rss
            acc[1] += anon
            total += rss
            total_anon += anon
            r = self.ranks.setdefault(label, {"peak_rss_gb": 0.0, "peak_anon_gb": 0.0, "hwm_gb": 0.0})
            if self._rank_cache[pid] is not None or (pid == self.root and self.default_rank is not None):
                r["hwm_gb"] = max(r["hwm_gb"], st.get("VmHWM", 0) / GB)
            stack += [(child, rank) for child in tree.get(pid, [])]
        for label, (rss, anon) in per_rank.items():
            r = self.ranks[label]
            r["peak_rss_gb"] = max(r["peak_rss_gb"], rss)
            r["peak_anon_gb"] = max(r["peak_anon_gb"], anon)
        self.total_peak = max(self.total_peak, total)
        self.total_anon_peak = max(self.total_anon_peak, total_anon)
        self.min_available = min(self.min_available, mem_available())


def wait_for_memory(min_free_gb: float, max_wait_s: float) -> float:
    start = time.time()
    while (free := mem_available()) < min_free_gb:
        if time.time() - start > max_wait_s:
            print(f"  only {free:.1f} GB available after waiting {max_wait_s:.0f} s; starting anyway", flush=True)
            return free
        print(f"  waiting for memory: {free:.1f} GB available, want {min_free_gb} GB", flush=True)
        time.sleep(15)
    return free


def run_phase(name: str, cmd: list[str], log: Path, env: dict[str, str], distributed: bool, args) -> dict:
    free = wait_for_memory(args.min_free_gb, args.max_wait_s)
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        sampler = Sampler(proc.pid, None if distributed else "0")
        sampler.start()
        try:
            rc = proc.wait(timeout=args.phase_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            rc = proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        sampler.stop_event.set()
        sampler.join()
    wall = time.perf_counter() - start
    ranks = {k: {m: round(v, 2) for m, v in r.items()} for k, r in sorted(sampler.ranks.items())}
    result = {"phase": name, "rc": rc, "wall_s": round(wall, 1), "ranks": ranks,
              "sum_peak_rss_gb": round(sampler.total_peak, 2), "sum_peak_anon_gb": round(sampler.total_anon_peak, 2),
              "mem_available_before_gb": round(free, 1), "min_mem_available_gb": round(sampler.min_available, 1),
              "log": str(log)}
    shown = ", ".join(f"rank {k}: {r['peak_rss_gb']:.1f} GB (anon {r['peak_anon_gb']:.1f}, HWM {r['hwm_gb']:.1f})"
                      for k, r in ranks.items())
    print(f"   rc {rc}, {wall:.0f} s; {shown}; sum {sampler.total_peak:.1f} GB (anon {sampler.total_anon_peak:.1f}); "
          f"MemAvailable low {sampler.min_available:.1f} GB", flush=True)
    if rc != 0:
        print("   last lines of the log:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]), flush=True)
    return result


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(strategy: str, nproc: int, ckpt: Path, data: Path, run_dir: Path, steps: int, args,
                  export: bool) -> list[str]:
    overrides = [
        "recipe=sft_lora", f"model.pretrained={ckpt}", f"data.train_shards={data}", "data.num_workers=0",
        "data.pack_buffer=16", f"train.seq_len={args.seq_len}", "model.activation_checkpointing=true",
        f"train.max_steps={steps}", "train.save_every=0", "train.keep_last=1", "train.log_every=1",
        "train.eval_every=0",
        f"train.precision={args.precision}", "optim.warmup_steps=0", "logging.progress=false",
        f"run.output_dir={run_dir}", f"run.export={'true' if export else 'false'}", "run.export_dtype=bf16",
        "model.attn_backend=sdpa", *args.override,
    ]
    if strategy == "single":
        return [sys.executable, "-m", "isaac_train.train", *overrides]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port()}",
            "-m", "isaac_train.train", f"strategy={strategy}", *overrides]


def phase_env(threads: int) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # this tree's package
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": path}


def table(results: list[dict]) -> str:
    lines = [f"{'phase':<10} {'strategy':<8} {'rc':>3} {'wall s':>8}  {'peak RSS per rank (anon), GB':<44} "
             f"{'sum GB':>7} {'anon':>6}"]
    for r in results:
        ranks = "  ".join(f"r{k}: {v['peak_rss_gb']:.1f} ({v['peak_anon_gb']:.1f})" if k != "launcher"
                          else f"agent: {v['peak_rss_gb']:.1f}" for k, v in r["ranks"].items())
        lines.append(f"{r['phase']:<10} {r['strategy']:<8} {r['rc']:>3} {r['wall_s']:>8.1f}  {ranks:<44} "
                     f"{r['sum_peak_rss_gb']:>7.1f} {r['sum_peak_anon_gb']:>6.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/isaac_real_size"))
    parser.add_argument("--strategies", default="single,fsdp")
    parser.add_argument("--phases", default="make,data,train,resume,export,generate")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--text-layers", type=int, default=28)
    parser.add_argument("--vision-layers", type=int, default=27)
    parser.add_argument("--export", choices=["cli", "loop"], default="cli",
                        help="cli: isaac-export as its own phase; loop: run.export=true in the resume run")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (split over the ranks)")
    parser.add_argument("--min-free-gb", type=float, default=18.0)
    parser.add_argument("--max-wait-s", type=float, default=900.0)
    parser.add_argument("--phase-timeout-s", type=float, default=3600.0)
    parser.add_argument("--keep", action="store_true", help="keep each strategy's run directory and export")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="default OUT/real_size.json")
    # internal: the phases that run in their own process
    parser.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.make_checkpoint:
        return make_checkpoint(args.make_checkpoint, args.text_layers, args.vision_layers)
    if args.generate:
        return generate(args.generate, args.new_tokens)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    ckpt = out / f"Isaac-2B-random-{args.text_layers}x{args.vision_layers}"
    data = out / "data"
    phases = args.phases.split(",")
    json_path = args.json or out / "real_size.json"
    results: list[dict] = []
    me = [sys.executable, str(Path(__file__).resolve()), f"--text-layers={args.text_layers}",
          f"--vision-layers={args.vision_layers}"]

    def record(result: dict, strategy: str) -> dict:
        result["strategy"] = strategy
        results.append(result)
        json_path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2) + "\n")
        return result

    if "make" in phases and not (ckpt / "model.safetensors.index.json").is_file():
        record(run_phase("make", [*me, f"--make-checkpoint={ckpt}"], logs / "make.log", phase_env(args.threads),
                         False, args), "-")
    if not (data / "train").is_dir():
        from isaac_train.data.demo import make_demo_dataset

        make_demo_dataset(data, train=400, eval=8, seed=0, image_size=128)
    for strategy in args.strategies.split(","):
        nproc = 1 if strategy == "single" else args.nproc
        env = phase_env(max(1, args.threads // nproc))
        run_dir = out / f"run_{strategy}"
        hf_dir = run_dir / "hf" if args.export == "loop" else out / f"hf_{strategy}"
        if "train" in phases:
            shutil.rmtree(run_dir, ignore_errors=True)
            r = record(run_phase("train", train_command(strategy, nproc, ckpt, data / "train", run_dir, 2, args, False),
                                 logs / f"{strategy}_train.log", env, nproc > 1, args), strategy)
            if r["rc"] != 0:
                continue
        if "resume" in phases:
            r = record(run_phase("resume", train_command(strategy, nproc, ckpt, data / "train", run_dir, 3, args,
                                                         args.export == "loop"),
                                 logs / f"{strategy}_resume.log", env, nproc > 1, args), strategy)
            if r["rc"] != 0:
                continue
        if "export" in phases and args.export == "cli":
            cmd = [sys.executable, "-m", "isaac_train.export.cli", str(run_dir), str(hf_dir), "--dtype", "bf16",
                   "--overwrite"]
            r = record(run_phase("export", cmd, logs / f"{strategy}_export.log", phase_env(args.threads), False, args),
                       strategy)
            if r["rc"] != 0:
                continue
        if "generate" in phases:
            record(run_phase("generate", [*me, f"--generate={hf_dir}", f"--new-tokens={args.new_tokens}"],
                             logs / f"{strategy}_generate.log", phase_env(args.threads), False, args), strategy)
        if not args.keep:  # the disk holds one strategy's checkpoints and export at a time
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            shutil.rmtree(hf_dir, ignore_errors=True)
    print("\n" + table(results), flush=True)
    print(f"\nwritten {json_path}", flush=True)


if __name__ == "__main__":
    main()
