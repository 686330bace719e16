"""GPU check of the strategies (run where a GPU is lent): single vs fsdp / zero2 / zero3, bf16, varlen attention.

    python benchmarks/gpu_strategies.py [--steps 30] [--nproc 1] [--sizes tiny,mid] [--out /tmp/gpu_strategies]

For each model size (tiny: the test model; mid: a ~150M-parameter Isaac with 12 decoder layers of hidden 1024
and a 6-block vision tower, random init, saved once as a `model.pretrained` directory) it trains `--steps` steps
of the same data with every strategy under torchrun (`--nproc` processes, each with 1 worker and grad_accum 1;
the `single` baseline reads the same global batch with nproc workers and grad_accum nproc), then prints per
strategy: max |loss difference| to single, final loss, tokens/s and peak GPU memory from metrics.jsonl.
bf16 on fsdp uses bf16 weights (MixedPrecisionPolicy) while the others use autocast over fp32 weights, so
agreement is expected to ~1e-2, not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mid_checkpoint(out: Path) -> Path:
    """A ~150M Isaac with the tiny tokenizer's vocabulary, saved with its processor (a model.pretrained dir)."""
    import torch

    from isaac_train.model import IsaacForConditionalGeneration
    from isaac_train.model.tiny import tiny_config
    from isaac_train.processing.processor import IsaacProcessor
    from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

    if (out / "config.json").is_file():
        return out
    config = tiny_config(
        text_config=dict(vocab_size=512, hidden_size=1024, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=64, rope_theta=1e6,
                         max_position_embeddings=8192, bos_token_id=486, eos_token_id=488, pad_token_id=486),
        vision_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                           patch_size=16, num_channels=3, num_patches=256, pixel_shuffle_scale_factor=2),
    )
    torch.manual_seed(0)
    model = IsaacForConditionalGeneration(config)
    print(f"mid model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True)
    model.save_pretrained(out)
    IsaacProcessor.from_settings(build_tiny_tokenizer(), config).save_pretrained(out)
    return out


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(strategy: str, nproc: int, model_args: list[str], data: Path, out: Path, steps: int, backend: str,
        precision: str) -> dict:
    common = [*model_args, f"data.train_shards={data}", "data.demo=false", f"train.precision={precision}",
              f"model.attn_backend={backend}", "train.seq_len=2048", f"train.max_steps={steps}", "train.log_every=1",
              "optim.lr=3e-4", "optim.warmup_steps=2", "logging.progress=false", "run.export=false",
              f"run.output_dir={out}", "run.resume=false", "train.eval_every=0"]
    if strategy == "single":
        cmd = [sys.executable, "-m", "isaac_train.train", *common, f"data.num_workers={nproc}",
               f"train.grad_accum={nproc}"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port()}",
               "-m", "isaac_train.train", *common, f"strategy={strategy}", "data.num_workers=1"]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "4"})
    if proc.returncode != 0:
        print(f"  {strategy}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
        return {}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_seen = [r for r in records if "loss" in r]
    return {"losses": {r["step"]: r["loss"] for r in steps_seen}, "wall_s": time.time() - start,
            "tokens_per_s": sum(r["tokens_per_s"] for r in steps_seen[2:]) / max(1, len(steps_seen[2:])),
            "memory_gb": max(r["memory_gb"] for r in steps_seen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--sizes", default="tiny,mid")
    parser.add_argument("--strategies", default="single,fsdp,zero2,zero3")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_strategies"))
    parser.add_argument("--backend", default="varlen", help="sdpa / fp32 make a CPU dry run of this script")
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from isaac_train.data.demo import make_demo_dataset

    data = Path(make_demo_dataset(args.out / "data", train=2000, eval=10, image_size=128)["train_dir"])
    for size in args.sizes.split(","):
        model_args = ["model=tiny"] if size == "tiny" else [f"model.pretrained={mid_checkpoint(args.out / 'mid')}"]
        print(f"== {size}: {args.steps} steps, {args.precision}, {args.backend} attention, {args.nproc} process(es)",
              flush=True)
        results = {}
        for strategy in args.strategies.split(","):
            results[strategy] = run(strategy, args.nproc, model_args, data, args.out / f"{size}_{strategy}",
                                    args.steps, args.backend, args.precision)
        base = results.get("single", {}).get("losses", {})
        for strategy, r in results.items():
            if not r:
                continue
            diff = max((abs(r["losses"][s] - base[s]) for s in base if s in r["losses"]), default=float("nan"))
            print(f"  {strategy:6s} max|dloss| vs single {diff:.2e}  final loss {r['losses'][args.steps]:.4f}  "
                  f"{r['tokens_per_s']:,.0f} tokens/s  peak {r['memory_gb']:.2f} GB  ({r['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
