"""Does DPO teach? From a briefly SFT-trained model, DPO on (right answer chosen, wrong answer rejected) pairs, and
isaac-eval's held-out answer accuracy before and after, with 95% (Wilson) intervals.

    python benchmarks/dpo_learns.py [--out DIR] [--sft EXPORT] [--sft-steps 1000] [--pairs 3000] [--eval 600]
        [--steps 300] [--lr 5e-5] [--beta 0.1] [--types colour,count,location] [--peft none|lora] [--json OUT]

1. The SFT start: `--sft EXPORT` (an exported model directory, e.g. a `make demo` run's runs/demo/hf), else the
   demo_cpu recipe trained for `--sft-steps` steps (the default 1000 is `make demo`'s run) into OUT/sft.
2. Data this script makes and states, from the demo's shapes generator (isaac_train/data/demo.py, 128 px images as
   the demo_cpu recipe draws them) with seeds of its own, so no pair and no eval image is one the SFT run saw:
   - `--pairs` preference pairs for the question types `--types` (colour, count, location: answers that exact
     match scores), stored as isaac-data stores pairs (docs/data_format.md): the prompt (image + question), chosen
     = the true answer, rejected = the same sentence with one wrong value (another colour, count or region, drawn
     uniformly);
   - `--eval` held-out chat samples of the same types (the eval-sample form: the answer is the last message).
3. DPO (`objective=dpo`, sigmoid loss, `--beta`, the frozen copy as reference with --peft none, or the adapters
   disabled with --peft lora) from the SFT start: `model.pretrained=<start>`, `--steps` steps at `--lr`, 8 rows of
   512 tokens per step (rows_per_batch 1 x grad_accum 8: about 40 pairs), everything trained (as
   the demo trains), then exported.
4. `isaac-eval` (greedy, exact match per sample, per task) of the start and of the DPO export on the same held-out
   samples. Reported: accuracy per question type and overall, each with its 95% Wilson interval and count, and
   the run's last rewards/accuracies and margins.

CPU, 2 cores: the DPO run is ~0.3-0.5 s per step for this model size; the evals ~20 s per 100 samples.
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

TYPES = ("colour", "count", "location")


def wrong_answer(sample: dict, rng: random.Random) -> str:
    """The true answer's sentence with one value replaced by a wrong one of the same kind."""
    from isaac_train.data.demo import COLOURS, COUNT_WORDS, REGIONS

    meta = sample["meta"]
    shape = meta["shapes"][meta["target"]]
    if meta["type"] == "colour":
        return f"The {shape['shape']} is {rng.choice([c for c in COLOURS if c != shape['colour']])}."
    if meta["type"] == "count":
        return rng.choice([w for n, w in COUNT_WORDS.items() if n != len(meta["shapes"])])
    if meta["type"] == "location":
        return f"The {shape['shape']} is in the {rng.choice([r for r in REGIONS if r != shape['region']])}."
    raise ValueError(f"no wrong answer for type {meta['type']!r}")


def make_data(out: Path, pairs: int, evals: int, types: tuple[str, ...], size: int = 128) -> dict:
    from isaac_train.data.demo import make_sample
    from isaac_train.data.shards import ShardWriter

    def draw(rng: random.Random):
        while True:
            sample, png = make_sample(rng, size)
            if sample["meta"]["type"] in types:
                return sample, png

    rng = random.Random("dpo-learns-pairs")
    writer = ShardWriter(out / "pairs", prefix="pairs", max_count=500)
    for i in range(pairs):
        sample, png = draw(rng)
        user, answer = sample["messages"]
        writer.write(f"{i:09d}", {"source": "dpo-learns", "messages": [user],
                                  "chosen": [answer], "rejected": [{"role": "assistant",
                                                                    "content": wrong_answer(sample, rng)}],
                                  "meta": sample["meta"]}, [("0.png", png)])
    writer.close()
    rng = random.Random("dpo-learns-eval")
    writer = ShardWriter(out / "eval", prefix="heldout", max_count=500)
    for i in range(evals):
        sample, png = draw(rng)
        writer.write(f"{i:09d}", sample, [("0.png", png)])
    writer.close()
    return {"pairs": str(out / "pairs"), "eval": str(out / "eval")}


def _null(value):
    return "null" if value is None else value


def run_train(overrides: list[str]) -> None:
    from isaac_train.train.cli import compose_config
    from isaac_train.train.loop import train

    train(compose_config(overrides))


def evaluate(model: Path, data: str, out: Path, max_new_tokens: int = 24) -> dict:
    from isaac_train.eval.cli import main as isaac_eval

    code = isaac_eval([str(model), data, str(out), "--batch-size", "16", "--max-new-tokens", str(max_new_tokens)])
    if code != 0:
        raise SystemExit(f"isaac-eval failed on {model} (exit {code})")
    return json.loads((out / "summary.json").read_text())


def rate(summary: dict) -> tuple[float, float, float, int]:
    m = summary["exact_match"]
    return m["value"], m["ci95"][0], m["ci95"][1], m["n"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/dpo_learns"))
    p.add_argument("--sft", type=Path, help="an exported SFT model to start from (default: train demo_cpu)")
    p.add_argument("--sft-steps", type=int, default=1000)
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--eval", type=int, default=600)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--rpo-alpha", type=float, default=None,
                   help="objective.rpo_alpha: an NLL term on the chosen answer (default none)")
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--peft", choices=("none", "lora"), default="none")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    types = tuple(t for t in args.types.split(",") if t)
    if not set(types) <= set(TYPES):
        raise SystemExit(f"--types: choose among {', '.join(TYPES)} (answers exact match scores)")
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
    data = make_data(out / "data", args.pairs, args.eval, types)
    times["data_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    dpo_dir = out / f"dpo_{args.peft}"
    lora = ["peft=lora", "model.train_decoder=lora"] if args.peft == "lora" else []
    run_train(["recipe=demo_cpu", f"model.pretrained={sft}", "data.demo=false", f"data.train_shards={data['pairs']}",
               "objective=dpo", f"objective.beta={args.beta}", f"objective.rpo_alpha={_null(args.rpo_alpha)}",
               f"optim.lr={args.lr}", f"optim.lr_vision={args.lr}",
               f"train.max_steps={args.steps}", "train.grad_accum=8", "train.eval_every=0", "train.save_every=0",
               "optim.warmup_steps=10", "logging.progress=false", f"run.output_dir={dpo_dir}", *lora])
    times["dpo_s"] = round(time.perf_counter() - t, 1)
    records = [json.loads(line) for line in (dpo_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]

    t = time.perf_counter()
    before = evaluate(Path(sft), data["eval"], out / "eval_sft")
    after = evaluate(dpo_dir / "hf", data["eval"], out / f"eval_dpo_{args.peft}")
    times["eval_s"] = round(time.perf_counter() - t, 1)

    rows = []
    for name in [*types, "overall"]:
        a = before if name == "overall" else before["by_task"][name]
        b = after if name == "overall" else after["by_task"][name]
        rows.append((name, rate(a), rate(b)))
    last = steps[-1]
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "start": str(sft), "times": times,
              "first_loss": steps[0]["loss"], "last_loss": last["loss"],
              "last_rewards_accuracies": last["rewards/accuracies"], "last_rewards_margins": last["rewards/margins"],
              "accuracy": {n: {"before": list(a), "after": list(b)} for n, a, b in rows},
              "total_s": round(time.perf_counter() - start_time, 1)}
    print(f"\nDPO from {sft}: {args.steps} steps x 8 rows ({args.pairs} pairs of {', '.join(types)}), beta "
          f"{args.beta}, rpo_alpha {args.rpo_alpha}, lr {args.lr}, peft {args.peft}; "
          f"loss {steps[0]['loss']:.3f} -> {last['loss']:.3f}, "
          f"reward accuracy {last['rewards/accuracies']:.2f}, margin {last['rewards/margins']:.2f}; {times}")
    print("\n| question type | SFT start (95% CI) | after DPO (95% CI) | n |\n|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a[0]:.1%} ({a[1]:.1%}-{a[2]:.1%}) | {b[0]:.1%} ({b[1]:.1%}-{b[2]:.1%}) | {a[3]} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
