"""GRPO's step, timed: generation, scoring, log-probs and update separately, completions/s, and batched rollouts
against one prompt at a time, in the same process on the same model and prompts.

    python benchmarks/grpo_throughput.py [--model EXPORT] [--steps 12] [--prompts-per-batch 4] [--generations 8]
        [--max-new-tokens 48] [--grad-accum 1] [--json OUT]

1. The model: `--model EXPORT` (an exported directory, e.g. `make demo`'s runs/demo/hf, which answers like a
   trained model: completions of realistic length), else the demo_cpu recipe's small model at its initialisation.
2. Prompts: the demo's box and count questions (isaac_train/data/demo.py), 128 px images.
3. The step: `isaac-train objective=grpo` for `--steps` steps; from metrics.jsonl, the mean of time/generation_s,
   time/scoring_s, time/logps_s and time/update_s over the steps after the first (warm-up), completions per step
   and completions/s (of the whole step and of generation alone).
4. Rollouts, batched against one prompt at a time: the same `--prompts-per-batch` prompts x `--generations`
   completions through `sample_completions` (objectives/rollout.py) once as one batch of P x G rows and once as P
   batches of G rows, greedy (temperature 0, so both produce the same tokens and the time compares like with like);
   the ratio of completions/s. Printed as ratios against the one-prompt-at-a-time baseline.

CPU figures from this machine are in docs/performance.md; on a shared machine run with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_prompts(out: Path, n: int) -> str:
    from isaac_train.data.demo import make_sample
    from isaac_train.data.shards import ShardWriter

    rng = random.Random("grpo-throughput")
    writer = ShardWriter(out, prefix="prompts", max_count=500)
    i = 0
    while i < n:
        sample, png = make_sample(rng, 128)
        if sample["meta"]["type"] in ("grounding", "count"):
            writer.write(f"{i:09d}", sample, [("0.png", png)])
            i += 1
    writer.close()
    return str(out)


def model_overrides(args) -> list[str]:
    """The export to sample from, or the demo's small model (the tiny one with --tiny: the smoke test's)."""
    if args.model:
        return [f"model.pretrained={args.model}"]
    return ["model=tiny", "model.attn_backend=sdpa", "train.seq_len=256"] if args.tiny else []


def step_split(shards: str, out: Path, args) -> dict:
    from isaac_train.train.cli import compose_config
    from isaac_train.train.loop import train

    train(compose_config(["recipe=demo_cpu", *model_overrides(args), "data.demo=false", f"data.train_shards={shards}",
                          "objective=grpo", f"objective.num_generations={args.generations}",
                          f"objective.prompts_per_batch={args.prompts_per_batch}",
                          f"objective.max_new_tokens={args.max_new_tokens}", f"train.grad_accum={args.grad_accum}",
                          f"train.max_steps={args.steps}", "train.log_every=1", "train.eval_every=0",
                          "train.save_every=0", "optim.warmup_steps=0", "optim.lr=1e-5", "run.export=false",
                          "logging.progress=false", f"run.output_dir={out}"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r][1:]  # the first step warms up
    parts = ("time/generation_s", "time/scoring_s", "time/logps_s", "time/update_s")
    mean = {p: statistics.fmean(r[p] for r in steps) for p in parts}
    step_s = statistics.fmean(r["step_time_s"] for r in steps)
    completions = args.prompts_per_batch * args.grad_accum * args.generations
    return {**{k.split("/")[1]: round(v, 4) for k, v in mean.items()}, "step_s": round(step_s, 4),
            "completions_per_step": completions, "completions_per_s": round(completions / step_s, 2),
            "generation_completions_per_s": round(completions / mean["time/generation_s"], 2),
            "mean_completion_tokens": round(statistics.fmean(r["completions/mean_length"] for r in steps), 1)}


def batched_vs_one(shards: str, args) -> dict:
    """Completions/s of one P x G batch against P batches of G rows, greedy (the same tokens either way)."""
    import torch

    from isaac_train.data.prompts import encode_prompt
    from isaac_train.data.shards import ShardSet, read_sample
    from isaac_train.factory import build_processor, model_config, model_factory
    from isaac_train.objectives.rollout import sample_completions
    from isaac_train.train.cli import compose_config

    cfg = compose_config(["recipe=demo_cpu", *model_overrides(args), "data.demo=false", f"data.train_shards={shards}",
                          "train.eval_every=0"])
    config = model_config(cfg)
    processor = build_processor(cfg, config)
    model = model_factory(cfg, config)("cpu").eval()
    shard_set = ShardSet(shards)
    prompts = [encode_prompt(read_sample(shard_set.ref(0, i)), processor, f"p{i}", (0, 0, i), 10_000)
               for i in range(args.prompts_per_batch)]
    g, n = args.generations, args.max_new_tokens

    def timed(fn):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - start)
        return best, result

    with torch.no_grad():
        batched_s, batched = timed(lambda: sample_completions(model, processor, prompts, g, n, temperature=0.0))
        one_s, singles = timed(lambda: [sample_completions(model, processor, [p], g, n, temperature=0.0)
                                        for p in prompts])
    same = batched.ids == [ids for c in singles for ids in c.ids]
    total = len(prompts) * g
    return {"rows": total, "batched_s": round(batched_s, 4), "one_prompt_at_a_time_s": round(one_s, 4),
            "batched_completions_per_s": round(total / batched_s, 2),
            "one_prompt_completions_per_s": round(total / one_s, 2), "speedup": round(one_s / batched_s, 3),
            "same_tokens": same}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="an exported model to sample from (default: the demo model, untrained)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--prompts-per-batch", type=int, default=4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="the tiny model and sizes (the smoke test; no timing)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_prompts(Path(tmp) / "prompts", 400)
        split = step_split(shards, Path(tmp) / "run", args)
        batched = batched_vs_one(shards, args)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "step": split, "rollout": batched}
    s = split
    print(f"GRPO step ({args.prompts_per_batch} prompts x {args.generations} completions x {args.grad_accum} "
          f"micro-batches, {s['mean_completion_tokens']} tokens per completion): {s['step_s']:.3f} s = generation "
          f"{s['generation_s']:.3f} + scoring {s['scoring_s']:.4f} + log-probs {s['logps_s']:.4f} + update "
          f"{s['update_s']:.3f}; {s['completions_per_s']} completions/s ({s['generation_completions_per_s']} in "
          "generation alone)")
    print(f"rollouts: one batch of {batched['rows']} rows {batched['batched_completions_per_s']} completions/s, one "
          f"prompt at a time {batched['one_prompt_completions_per_s']}: {batched['speedup']}x "
          f"(same tokens: {batched['same_tokens']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
