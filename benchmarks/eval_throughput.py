"""Batched evaluation generation against one prompt at a time, on the same prompts, in one process.

    python benchmarks/eval_throughput.py [--model EXPORT_DIR] [--samples 32] [--batch-sizes 1,8] [--rounds 2]

The prompts are the first `--samples` held-out questions of the demo data (`isaac-data demo`: a picture of
shapes and a question, 1 image each), made in a temporary folder. The model is `--model` (an export, e.g. the
demo's runs/demo/hf: it stops at eos like a trained model) or, by default, the demo's small Isaac with random
weights (it rarely says eos, so every answer runs to `--max-new-tokens`). Each batch size generates greedily with
isaac_train.eval.generate_answers, alternating over `--rounds`; the best round counts. Prints samples/s and
generated tokens/s per batch size, the ratio to batch size 1 (target: >= 3x at batch 8 on CPU) and whether
every batched answer equals the one-at-a-time answer.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from isaac_train.eval import generate_answers, read_eval_samples


def _model(path: str | None):
    from isaac_train.model import IsaacForConditionalGeneration
    from isaac_train.model.tiny import small_config
    from isaac_train.processing.processor import IsaacProcessor
    from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

    if path:
        from isaac_train.eval.cli import load_for_eval

        return load_for_eval(path)
    torch.manual_seed(0)
    config = small_config()
    model = IsaacForConditionalGeneration(config).eval()
    return model, IsaacProcessor.from_settings(build_tiny_tokenizer(), config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model directory or run (default: random small Isaac)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated; the first is the baseline")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    from isaac_train.data.demo import make_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        info = make_demo_dataset(Path(tmp), train=8, eval=args.samples)
        samples = read_eval_samples(info["eval_dir"], args.samples).samples
    model, processor = _model(args.model)
    print(f"{len(samples)} prompts, {len(sizes)} batch sizes, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, max_new_tokens {args.max_new_tokens}")
    eos = processor.tokenizer.eos_token_id
    best: dict[int, float] = {}
    answers: dict[int, list[str]] = {}
    for _ in range(args.rounds):
        for size in sizes:
            start = time.perf_counter()
            answers[size] = generate_answers(model, processor, samples, batch_size=size,
                                             max_new_tokens=args.max_new_tokens)
            best[size] = min(best.get(size, float("inf")), time.perf_counter() - start)
    tokens = sum(len(processor.tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers[sizes[0]])
    base = best[sizes[0]]
    print(f"{'batch':>5} {'seconds':>8} {'samples/s':>10} {'tokens/s':>9} {'vs ' + str(sizes[0]):>7}  equal answers")
    for size in sizes:
        same = sum(a == b for a, b in zip(answers[size], answers[sizes[0]], strict=True))
        print(f"{size:>5} {best[size]:8.2f} {len(samples) / best[size]:10.2f} {tokens / best[size]:9.1f} "
              f"{base / best[size]:6.2f}x  {same}/{len(samples)}")
    last = sizes[-1]
    print(f"batch {last} vs {sizes[0]}: {base / best[last]:.2f}x (target >= 3x at batch 8 on CPU); "
          f"~{tokens} generated tokens per pass (eos id {eos})")


if __name__ == "__main__":
    main()
