"""What the non-finite-weights check costs: the trainer's step with and without it, and the check's bandwidth.

    python benchmarks/weights_check.py [--size small] [--rounds 3] [--steps 4] [--gib 1] [--threads N] [--json OUT]

After every applied update the loop leaves a device-side flag, `strategy.nonfinite_weights()` (the max-abs of
every trainable weight a rank holds: per-tensor aminmax on the host, torch._foreach_norm's inf norm on an
accelerator), for the next step's one read
(isaac_train/train/loop.py, train_step). Measured here, on the machine it runs on:

1. The trainer's step (`train_step` of the loop, strategy single, the demo data through the real loader, AdamW,
   everything trains that the demo trains) with the check and without it (strategy.nonfinite_weights replaced
   by a constant zero), alternating step by step, every batch in both modes; median seconds per step. On a busy
   machine the difference of the medians is noise next to (2), which times the check itself.
2. The check alone on the same model's trainable weights (median of many calls), and its share of a step.
3. The check's bandwidth over `--gib` GiB of fp32 weights in 256 tensors (one read of each element), and from it
   the time over 2.5e9 fp32 elements (10 GB, an Isaac-2B-shaped full fine-tune's trainable weights on one rank):
   the check is memory-bound, so the time there is 10 GB / this bandwidth. On a GPU the same pass runs at its
   memory bandwidth (an estimate from the datasheet, printed as such; not measured here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ELEMENTS_2B = 2.5e9
H100_HBM_GBPS = 3350  # H100 SXM datasheet peak; a streaming read reaches about 90% of it


def trainer(size: str, run_dir: Path):
    """The loop's pieces as train() builds them: config, strategy (single), loader over the demo data."""
    from isaac_train import factory
    from isaac_train.dist_env import DistEnv
    from isaac_train.distributed.strategy import make_strategy
    from isaac_train.train import build
    from isaac_train.train.cli import compose_config
    from isaac_train.train.loop import prepare_data

    cfg = compose_config([f"model.size={size}", "data.demo=true", "data.demo_train_samples=120",
                          "data.demo_eval_samples=4", "data.num_workers=0", "train.precision=fp32",
                          "train.eval_every=0", f"run.output_dir={run_dir}", "logging.progress=false"])
    env = DistEnv(device=torch.device("cpu"))
    model_config = factory.model_config(cfg)
    processor = factory.build_processor(cfg, model_config)
    data = prepare_data(cfg, run_dir)
    strategy = make_strategy(cfg.strategy, env, cfg.train)
    strategy.setup(factory.model_factory(cfg, model_config), lambda m: build.build_optimizer(m, cfg),
                   lambda o: build.build_scheduler(o, cfg))
    loader = build.build_loader(cfg, processor, data["train"], None, train=True)
    return cfg, env, strategy, loader


def time_steps(cfg, env, strategy, batches: list, checks: list[bool]) -> dict[bool, list[float]]:
    """Seconds per step of `train_step` over `batches`, step i with the check when checks[i] (so that the two
    modes alternate step by step and share whatever else the machine is doing)."""
    from isaac_train.train.loop import train_step

    zero = torch.zeros((), dtype=torch.float64)
    times: dict[bool, list[float]] = {True: [], False: []}
    flag = None
    for micro, check in zip(batches, checks, strict=True):
        if not check:
            strategy.nonfinite_weights = lambda: zero
        start = time.perf_counter()
        step = train_step(strategy, env, micro, cfg.train.clip_grad_norm, False, flag)
        times[check].append(time.perf_counter() - start)
        assert not step.previous_update_nonfinite
        flag = step.weights_nonfinite
        if not check:
            del strategy.nonfinite_weights  # the class's own again
    return times


def time_check(strategy, repeats: int = 50) -> float:
    strategy.nonfinite_weights()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        assert strategy.nonfinite_weights().item() == 0
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bandwidth(gib: float, repeats: int = 5) -> float:
    """GB/s of the check's one pass over `gib` GiB of fp32 in 256 tensors."""
    from isaac_train.distributed.strategy import nonfinite_flag

    n = int(gib * 2**30 / 4 / 256)
    tensors = [torch.randn(n) for _ in range(256)]
    nonfinite_flag(tensors, torch.device("cpu"))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        assert nonfinite_flag(tensors, torch.device("cpu")).item() == 0
        times.append(time.perf_counter() - start)
    return 256 * n * 4 / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="batches; each round times each in both modes")
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, env, strategy, loader = trainer(args.size, Path(tmp) / "run")
        it = iter(loader)
        batches = [[next(it) for _ in range(cfg.train.grad_accum)] for _ in range(args.steps)]
        torch.set_num_threads(threads)  # the loader's reader (in this process: data.num_workers=0) takes it to 1
        time_steps(cfg, env, strategy, batches[:1], [True])  # warm-up: AdamW's state is created here
        with_check, without = [], []
        for r in range(args.rounds):  # each batch once in each mode; which mode goes first alternates
            for first in (r % 2 == 0, r % 2 == 1):
                times = time_steps(cfg, env, strategy, batches, [(i % 2 == 0) == first for i in range(len(batches))])
                with_check += times[True]
                without += times[False]
        check_s = time_check(strategy)
        trainable = sum(t.numel() for t in strategy.local_weights())
        del strategy, loader
    gbps = bandwidth(args.gib)
    step_with, step_without = statistics.median(with_check), statistics.median(without)
    result = {
        "size": args.size, "trainable_parameters": trainable, "threads": torch.get_num_threads(),
        "step_s_with_check": step_with, "step_s_without_check": step_without,
        "check_s": check_s, "check_share_of_step": check_s / step_without,
        "check_gb_per_s": gbps, "check_s_2_5e9_fp32_here": ELEMENTS_2B * 4 / 1e9 / gbps,
        "check_s_2_5e9_fp32_h100_estimate": ELEMENTS_2B * 4 / 1e9 / (0.9 * H100_HBM_GBPS),
    }
    print(f"model {args.size}: {trainable:,} trainable parameters, {torch.get_num_threads()} threads")
    print(f"step (median of {len(with_check)}): {step_with:.4f} s with the check, {step_without:.4f} s without")
    print(f"check alone: {check_s * 1e3:.3f} ms = {100 * check_s / step_without:.2f}% of a step")
    print(f"check bandwidth: {gbps:.1f} GB/s over {args.gib:g} GiB of fp32 -> 2.5e9 fp32 elements (10 GB): "
          f"{result['check_s_2_5e9_fp32_here']:.2f} s here; on an H100 at 90% of {H100_HBM_GBPS} GB/s (estimate, "
          f"not measured): {result['check_s_2_5e9_fp32_h100_estimate'] * 1e3:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
