"""`isaac-eval MODEL DATA OUT_DIR`: answer eval samples with a model, score them, write predictions and a summary.

    isaac-eval /exports/a /data/eval_shards /evals/a                 # an export (or our model dir, a Perceptron one)
    isaac-eval /runs/a val.jsonl /evals/a --image-root /data/images   # a training run's latest checkpoint, chat JSONL
    torchrun --nproc-per-node 8 -m isaac_train.eval.cli /exports/a /data/eval /evals/a --batch-size 16

MODEL: a Hugging Face directory (config.json: our exports, Perceptron's checkpoints), a PEFT adapter directory
(adapter_config.json naming its base), or a training run / checkpoint of any strategy (as isaac-export reads it).
DATA: a shard set (folder, glob, index.json) or a chat JSONL file as `isaac-data make-shards` reads it.
OUT_DIR gets predictions.jsonl (one row per sample: key, prompt, expected, generated, metric, scores, task,
image references) and summary.json (each metric with its count and 95% interval, per task when samples name one).
Under torchrun each rank loads the model and answers every world-th sample; rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .score import METRICS

if TYPE_CHECKING:  # torch is imported when a model is loaded: `isaac-eval --help` and argument errors need none
    import torch

DTYPES = ("fp32", "bf16")


def torch_dtype(name: str) -> torch.dtype | str:
    """The torch dtype of a --dtype choice ("auto" stays "auto": as stored)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}.get(name, "auto")


def load_for_eval(path: str | Path, dtype: str = "auto", device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(model, processor) from any model directory or training checkpoint (see the module docstring)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import isaac_train  # noqa: F401  (Auto classes)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a model directory, an export or a training run")
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or not Path(base).exists():
            raise FileNotFoundError(f"the adapter in {path} names its base {base!r}, which is not a local directory;"
                                    " export with merged weights (isaac-export without --adapter) or fix the path")
        model = PeftModel.from_pretrained(_load_hf(AutoModelForImageTextToText, base, dtype), path).merge_and_unload()
        processor = AutoProcessor.from_pretrained(path if (path / "processor_config.json").is_file() else base)
    elif (path / "config.json").is_file():
        model, processor = _load_hf(AutoModelForImageTextToText, path, dtype), AutoProcessor.from_pretrained(path)
    else:
        from ..trained import load_trained

        run = load_trained(path)
        model = run.model.merge_and_unload() if hasattr(run.model, "merge_and_unload") else run.model
        if dtype in DTYPES:
            model = model.to(torch_dtype(dtype))
        processor = run.processor
    return model.to(device).eval(), processor


def _load_hf(auto, path: str | Path, dtype: str):
    return auto.from_pretrained(path, dtype=torch_dtype(dtype))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="isaac-eval", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory, PEFT adapter, or training run / checkpoints/step_N")
    parser.add_argument("data", help="eval shard set (folder, glob, index.json) or chat JSONL file")
    parser.add_argument("out_dir", type=Path, help="where predictions.jsonl and summary.json go")
    parser.add_argument("--metric", choices=METRICS, default="auto",
                        help="one metric for every sample (default auto: per sample, see isaac_train/eval/score.py)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N usable samples")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together (8)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (64)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="with --do-sample (1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="with --do-sample (1.0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (each rank adds its rank)")
    parser.add_argument("--image-root", type=Path, default=None, help="chat JSONL: where relative image paths start")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights' dtype (auto: as stored)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: this rank's GPU, else cpu)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size, --max-new-tokens and --limit must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ..distributed.setup import init_distributed, shutdown_and_exit
    from .run import EvalResult, predict, score_rows, write_results
    from .samples import read_eval_samples
    from .score import format_summary, summarize

    env = init_distributed("ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single")
    device = torch.device(args.device) if args.device else env.device
    code = 0
    try:
        data = read_eval_samples(args.data, args.limit, args.image_root)
        if not data.samples:
            raise ValueError(f"no usable eval sample in {args.data} (skipped: {dict(data.skipped) or 'none'}); "
                             "eval samples are chats whose last message is the assistant's answer")
        model, processor = load_for_eval(args.model, args.dtype, device)
        torch.manual_seed(args.seed + env.rank)
        sampling = {"temperature": args.temperature, "top_p": args.top_p} if args.do_sample else {}
        if env.is_main:
            print(f"isaac-eval: {len(data.samples)} samples from {args.data} on {env.world_size} process(es), "
                  f"batch {args.batch_size}, {'sampling' if args.do_sample else 'greedy'}", flush=True)
        start = time.perf_counter()
        answers = predict(model, processor, data.samples, env=env if env.distributed else None,
                          batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                          progress=env.is_main, **sampling)
        seconds = time.perf_counter() - start
        if env.is_main:
            rows = score_rows(data.samples, answers, args.metric)
            result = EvalResult(rows, summarize(rows), dict(data.skipped))
            extra = {"model": str(args.model), "data": str(args.data), "metric": args.metric,
                     "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                     "do_sample": args.do_sample, "processes": env.world_size, "seconds": round(seconds, 2),
                     "samples_per_s": round(len(rows) / max(seconds, 1e-9), 3)}
            out = write_results(result, args.out_dir, extra)
            skipped = f", skipped {dict(data.skipped)}" if data.skipped else ""
            print(format_summary(result.summary))
            print(f"isaac-eval: {len(rows)} samples in {seconds:.1f} s ({extra['samples_per_s']} samples/s)"
                  f"{skipped}; wrote {out / 'predictions.jsonl'} and {out / 'summary.json'}")
    except (FileNotFoundError, ValueError) as err:
        print(f"isaac-eval: error: {err}", file=sys.stderr)
        code = 2
    shutdown_and_exit(env, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
