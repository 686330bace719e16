"""Does GRPO teach? From the demo's SFT export, GRPO on the demo's box and count questions (no answer is shown to the
model: only each sampled completion's reward), and isaac-eval's held-out scores before and after, with 95% (Wilson)
intervals.

    python benchmarks/grpo_learns.py [--out DIR] [--sft EXPORT] [--sft-steps 1000] [--prompts 4000] [--eval 400]
        [--steps 150] [--lr 2e-5] [--generations 8] [--prompts-per-batch 4] [--beta 0] [--types grounding,count]
        [--loss-type dapo] [--temperature 1.0] [--json OUT]

1. The SFT start: `--sft EXPORT` (an exported model directory, e.g. a `make demo` run's runs/demo/hf), else the
   demo_cpu recipe trained for `--sft-steps` steps (the default 1000 is `make demo`'s run) into OUT/sft.
2. Data this script makes and states, from the demo's shapes generator (isaac_train/data/demo.py, 128 px images as
   the demo_cpu recipe draws them) with seeds of its own, so no prompt and no eval image is one the SFT run saw:
   `--prompts` training prompts and `--eval` held-out samples of the question types `--types` (grounding: "Draw
   a box around the red circle." answered with a <point_box>; count: "How many shapes are in the image?"), in
   the eval-sample form (the reference answer is the last message; GRPO reads it only to score).
3. GRPO (`objective=grpo`, the default reward `auto`: what isaac-eval scores each sample by, so the IoU-based
   grounding reward for boxes and exact match for counts) from the SFT start: `--steps` steps, each
   `--prompts-per-batch` prompts x `--generations` completions at `--temperature`, everything trained (as the
   demo trains), then exported.
4. `isaac-eval` (greedy) of the start and of the GRPO export on the same held-out samples. Reported per question
   type: box recall@0.5 (grounding) and exact match (count), each with its 95% Wilson interval and count, the
   run's first and last mean rewards, and how varied the greedy box answers are (distinct answers, the most common
   one's share: a model that answers every box question with one box has not learnt to look).

CPU, 2 cores (OMP_NUM_THREADS=1 when anything else runs): ~1 s per step for this model size with 4 x 8 completions.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpo_learns import evaluate, run_train  # noqa: E402  (the script's folder is on the path)

TYPES = ("grounding", "count")


def make_data(out: Path, prompts: int, evals: int, types: tuple[str, ...], size: int = 128) -> dict:
    from isaac_train.data.demo import make_sample
    from isaac_train.data.shards import ShardWriter

    def draw(rng: random.Random):
        while True:
            sample, png = make_sample(rng, size)
            if sample["meta"]["type"] in types:
                return sample, png

    for name, count, seed in (("prompts", prompts, "grpo-learns-prompts"), ("eval", evals, "grpo-learns-eval")):
        rng = random.Random(seed)
        writer = ShardWriter(out / name, prefix=name, max_count=500)
        for i in range(count):
            sample, png = draw(rng)
            writer.write(f"{i:09d}", sample, [("0.png", png)])
        writer.close()
    return {"prompts": str(out / "prompts"), "eval": str(out / "eval")}


def headline(summary: dict, task: str) -> tuple[str, float, float, float, float]:
    """(metric, value, low, high, n) of a question type: box recall@0.5 for grounding, exact match otherwise."""
    sub = summary["by_task"][task]
    m = sub["grounding"]["recall@0.5"] if task == "grounding" else sub["exact_match"]
    return ("recall@0.5" if task == "grounding" else "exact_match"), m["value"], m["ci95"][0], m["ci95"][1], m["n"]


def box_answers(eval_dir: Path) -> dict:
    """How varied the greedy box answers are: distinct boxes and the most common one's share (a model that
    answers every box question with one box has not learnt to look)."""
    import collections

    from isaac_train.processing.grounding import parse_grounding

    rows = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    boxes = collections.Counter(" ".join(str(g.points) for g in parse_grounding(r["generated"])) or "(no box)"
                                for r in rows if r.get("task") == "grounding")  # the coordinates, not the mention
    total = sum(boxes.values())
    top, count = boxes.most_common(1)[0] if boxes else ("", 0)
    return {"distinct": len(boxes), "top_share": count / total if total else 0.0, "top": top}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/grpo_learns"))
    p.add_argument("--sft", type=Path, help="an exported SFT model to start from (default: train demo_cpu)")
    p.add_argument("--sft-steps", type=int, default=1000)
    p.add_argument("--prompts", type=int, default=4000)
    p.add_argument("--eval", type=int, default=400)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--prompts-per-batch", type=int, default=4)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--loss-type", default="dapo")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--extra", nargs="*", default=[], help="more isaac-train overrides for the GRPO run")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    types = tuple(t for t in args.types.split(",") if t)
    out = args.out.resolve()
    start_time = time.perf_counter()
    times = {}

    sft = args.sft
    if sft is None:
        t = time.perf_counter()
        run_train(["recipe=demo_cpu", f"run.output_dir={out / 'sft'}", f"train.max_steps={args.sft_steps}",
                   "logging.progress=false", "train.eval_every=0"])
        sft, times["sft_s"] = out / "sft" / "hf", round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    data = make_data(out / "data", args.prompts, args.eval, types)
    times["data_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    run_dir = out / "grpo"
    run_train(["recipe=demo_cpu", f"model.pretrained={sft}", "data.demo=false", f"data.train_shards={data['prompts']}",
               "objective=grpo", f"objective.num_generations={args.generations}",
               f"objective.prompts_per_batch={args.prompts_per_batch}", f"objective.beta={args.beta}",
               f"objective.loss_type={args.loss_type}", f"objective.temperature={args.temperature}",
               f"objective.max_new_tokens={args.max_new_tokens}", f"optim.lr={args.lr}", f"optim.lr_vision={args.lr}",
               f"train.max_steps={args.steps}", "train.grad_accum=1", "train.eval_every=0", "train.save_every=0",
               "optim.warmup_steps=5", "train.log_every=1", "logging.progress=false", f"run.output_dir={run_dir}",
               *args.extra])
    times["grpo_s"] = round(time.perf_counter() - t, 1)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "reward" in r]

    t = time.perf_counter()
    before = evaluate(Path(sft), data["eval"], out / "eval_sft", max_new_tokens=48)
    after = evaluate(run_dir / "hf", data["eval"], out / "eval_grpo", max_new_tokens=48)
    times["eval_s"] = round(time.perf_counter() - t, 1)

    rows = [(task, headline(before, task), headline(after, task)) for task in types]
    boxes = {"before": box_answers(out / "eval_sft"), "after": box_answers(out / "eval_grpo")}
    window = min(10, len(steps))
    first = sum(r["reward"] for r in steps[:window]) / window
    last = sum(r["reward"] for r in steps[-window:]) / window
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "start": str(sft), "times": times,
              "reward_first10": first, "reward_last10": last, "box_answers": boxes,
              "scores": {task: {"metric": a[0], "before": list(a[1:]), "after": list(b[1:])} for task, a, b in rows},
              "total_s": round(time.perf_counter() - start_time, 1)}
    print(f"\nGRPO from {sft}: {args.steps} steps x {args.prompts_per_batch} prompts x {args.generations} completions "
          f"({', '.join(types)}), lr {args.lr}, beta {args.beta}, loss {args.loss_type}, temperature "
          f"{args.temperature}; mean reward {first:.3f} (first {window} steps) -> {last:.3f} (last {window}); {times}")
    print("\n| question type | metric | SFT start (95% CI) | after GRPO (95% CI) | n |\n|---|---|---|---|---|")
    for task, a, b in rows:
        print(f"| {task} | {a[0]} | {a[1]:.1%} ({a[2]:.1%}-{a[3]:.1%}) | {b[1]:.1%} ({b[2]:.1%}-{b[3]:.1%}) | "
              f"{int(a[4])} |")
    if "grounding" in types:
        for when, b in boxes.items():
            print(f"box answers {when}: {b['distinct']} distinct boxes, the most common in {b['top_share']:.0%} "
                  f"of them {b['top']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
