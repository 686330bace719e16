"""The training loop: one function to read top to bottom.

    setup -> (resume) -> for each step: micro-batches -> loss / global label tokens -> backward -> clip ->
    step -> schedule -> log / eval / checkpoint -> ... -> final checkpoint -> export

The loss of a step is the sum of token losses over all its micro-batches divided by their total number of label
tokens, so gradient accumulation changes nothing but memory.

Faults: a step whose loss or gradient norm is not finite (on any rank) changes nothing and is counted;
`train.max_skipped_steps` of them in a row stop the run. An update that leaves a trainable weight non-finite (on
any rank) stops the run with WeightsNotFinite, and no checkpoint of those weights is committed (train_step).
SIGTERM / SIGUSR1 (to this process, to torchrun or to the whole process group) finish the current step on every
rank, write a checkpoint and exit with REQUEUE_EXIT_CODE, also before the first step (distributed/lifecycle.py);
the next start of the same command resumes from the newest checkpoint that verifies. A rank
that stalls or dies is named by the others (distributed/watchdog.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from .. import factory
from ..checkpoint.manager import CheckpointManager, TrainState, rng_state, set_rng_state
from ..checkpoint.run_lock import RunLock, check_still_held, hold_run_dir
from ..config.schema import Config
from ..data.loader import reshard_loader_state
from ..data.seeding import seed_all
from ..distributed.lifecycle import REQUEUE_EXIT_CODE, StopFlag, exit_before_training, record_requeue, stop_flag
from ..distributed.setup import init_distributed
from ..distributed.strategy import Strategy, make_strategy
from ..distributed.watchdog import Watchdog
from ..eval.score import format_summary, headline
from ..metrics.flops import device_peak_flops, model_parts
from ..metrics.logger import ROLLOUTS_DIR, MetricsLogger
from ..metrics.plot import draw_quietly
from ..metrics.window import StepWindow
from ..model import isaac_of
from ..objectives import Objective, RunData, make_objective
from ..objectives.sft import SFT
from ..precision import describe_parameter_memory
from . import build
from .evaluate import LocalEval, eval_loss, local_answers, rollout_table_rows, scored_rows, table_rows

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    state: TrainState
    run_dir: Path
    checkpoint: Path | None
    export_dir: Path | None
    last_metrics: dict[str, Any]
    stopped_by_signal: bool = False
    env: Any = None


class TrainingDiverged(RuntimeError):
    """Too many steps in a row were not finite; the last checkpoint holds the last good weights."""


# the objective settings only one objective reads (config/schema.py ObjectiveConfig)
DPO_ONLY = frozenset({"label_smoothing", "simpo_gamma", "rpo_alpha", "vision_per_pair", "precompute_reference",
                      "reference_logps"})
GRPO_ONLY = frozenset({"num_generations", "prompts_per_batch", "max_new_tokens", "temperature", "top_p", "epsilon",
                       "epsilon_high", "scale_rewards", "num_iterations", "drop_equal_groups",
                       "mask_truncated_completions", "rewards", "reward_weights", "rollout_table_rows"})


def identity(cfg: Config, world_size: int = 1) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint (the model, the data it sees, the global batch: the
    number of processes may change when processes x grad_accum stays the same)."""
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items()
             if k not in ("attn_backend", "activation_checkpointing", "compile")}
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items()
            if k not in ("num_workers", "max_error_rate", "eval_shards")}  # eval data may change between runs
    ident = {"model": model, "peft": dataclasses.asdict(cfg.peft), "data": data, "seq_len": cfg.train.seq_len,
             "seed": cfg.train.seed, "micro_batches_per_step": cfg.train.grad_accum * world_size}
    if cfg.objective.name != "sft":  # (sft checkpoints from before objectives existed still resume)
        other = GRPO_ONLY if cfg.objective.name == "dpo" else DPO_ONLY  # (dpo checkpoints from before grpo too)
        ident["objective"] = {k: v for k, v in dataclasses.asdict(cfg.objective).items()
                              if k not in other and k != "rollout_table_rows"}  # shown in W&B, not trained
    return json.loads(json.dumps(ident, default=str))


def check_identity(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    diffs = []
    for section in sorted(set(saved) | set(current)):
        a, b = saved.get(section), current.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                      if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{section}: {a!r} -> {b!r}")
    if diffs:
        raise ValueError(
            f"refusing to resume from {where}: the model or data configuration changed ({'; '.join(diffs)}). Use the "
            "checkpoint's settings, a new run.output_dir, or run.resume=false to start over in this directory."
        )


def prepare_data(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Shard specs for training/eval; with data.demo, make the synthetic demo data on first use."""
    d = cfg.data
    if d.train_shards is not None:
        return {"train": d.train_shards, "weights": d.train_weights, "eval": d.eval_shards, "answers": None}
    from isaac_train.data.demo import make_demo_dataset

    info = make_demo_dataset(run_dir / "data", train=d.demo_train_samples, eval=d.demo_eval_samples,
                             seed=cfg.train.seed, image_size=d.demo_image_size)
    return {"train": info["train_dir"], "weights": None, "eval": info["eval_dir"], "answers": info["eval_answers"]}


def train(cfg: Config) -> TrainResult:
    """Run (or resume) a training run as configured; returns its final state and where things were written.
    The run directory is this job's alone while it runs (checkpoint/run_lock.py): a second job on it is refused.
    A stop signal before the first step leaves with REQUEUE_EXIT_CODE at once (distributed/lifecycle.py)."""
    stop = stop_flag()
    run_dir = Path(cfg.run.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = init_distributed(cfg.strategy.name, cfg.strategy.timeout_s)
    exit_before_training(stop, "starting the process group")
    lock = hold_run_dir(run_dir, env)
    try:
        return _train(cfg, run_dir, env, stop, lock)
    finally:
        lock.release()
        stop.restore()


def _train(cfg: Config, run_dir: Path, env, stop: StopFlag, lock: RunLock) -> TrainResult:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{env.rank} %(levelname)s %(name)s: %(message)s")
    device = env.device
    seed_all(cfg.train.seed)  # torch, CUDA, Python's random and NumPy alike (data/seeding.py)

    # ---- build ----
    model_config = factory.model_config(cfg)
    processor = factory.build_processor(cfg, model_config)
    if not env.is_main:
        env.barrier()  # rank 0 makes the demo data first; the others then find it and reuse it
    data = prepare_data(cfg, run_dir)
    if env.is_main:
        env.barrier()
    exit_before_training(stop, "reading the data", cleanup=lock.release)
    strategy = make_strategy(cfg.strategy, env, cfg.train)
    strategy.setup(factory.model_factory(cfg, model_config), lambda m: build.build_optimizer(m, cfg),
                   lambda o: build.build_scheduler(o, cfg))
    objective = make_objective(cfg)
    objective.setup(strategy, factory.frozen_factory(cfg, model_config), RunData(
        lambda split: None if data[split] is None else build.build_loader(
            cfg, processor, data[split], data["weights"] if split == "train" else None, train=False),
        sources={"train": data["train"], "weights": data["weights"], "eval": data["eval"]}, processor=processor))
    isaac = isaac_of(strategy.model)
    loader = build.build_loader(cfg, processor, data["train"], data["weights"], train=True, rank=env.rank,
                                world_size=env.world_size)
    ckpt = CheckpointManager(run_dir / "checkpoints", cfg.train.keep_last)
    state = TrainState()
    ident = identity(cfg, env.world_size)
    trainable = build.count_parameters(strategy.model, trainable=True)

    # ---- resume ----
    exit_before_training(stop, "building the model", cleanup=lock.release)
    latest = _pick_checkpoint(ckpt, env) if cfg.run.resume else None
    if latest is not None:
        state = _resume(latest, ckpt, strategy, loader, ident, cfg, env, objective)
        logger.info("resumed from %s at step %d", latest, state.step)
        if env.is_main:
            ckpt.retain()  # a retention that an interrupted save left unfinished
    else:
        # Each rank its own random stream for dropout (the model itself was initialised identically everywhere).
        seed_all(cfg.train.seed + 7919 * env.rank)
    if env.is_main:
        OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml")

    metrics_log = MetricsLogger(run_dir, OmegaConf.to_container(OmegaConf.structured(cfg)), rank=env.rank,
                                total_steps=cfg.train.max_steps, start_step=state.step, wandb_mode=cfg.logging.wandb,
                                project=cfg.logging.project, name=cfg.run.name, progress=cfg.logging.progress)
    metrics_log.write(f"isaac-train: {cfg.recipe or 'custom'} on {device} x {env.world_size} ({strategy.name}), "
                      f"{trainable / 1e6:.2f}M trainable parameters ({describe_parameter_memory(strategy.model)}), "
                      f"run dir {run_dir}")
    trains = (cfg.model.train_decoder != "frozen", cfg.model.train_vision != "none", cfg.model.train_projector)
    window = StepWindow(model_parts(isaac), trains, device_peak_flops(device), loader.data_wait_s)
    # A signal before the first step: every rank leaves alike (one collective), the checkpoint resumed from stands.
    if env.any(stop.signal is not None):
        stop.signal = stop.signal or signal.SIGTERM
        exit_before_training(stop, "before the first step", latest, state.step, cleanup=lock.release)
    watchdog = Watchdog(env, cfg.strategy.timeout_s)
    batches = iter(loader)
    last: dict[str, Any] = {}
    saved_at = None
    weights_flag = None  # the last update's non-finite-weights flag, on the device (train_step)

    # ---- the loop ----
    strategy.model.train()
    with watchdog.explain():  # a failed collective names the rank that is behind
        while state.step < cfg.train.max_steps:
            watchdog.beat(state.step + 1)
            start = time.perf_counter()
            micro = objective.next_micro_batches(strategy, batches, cfg.train.grad_accum)  # grpo: the rollout
            update_start = time.perf_counter()
            step = train_step(strategy, env, micro, cfg.train.clip_grad_norm, stop.signal is not None, weights_flag,
                              objective)
            update_s = time.perf_counter() - update_start
            if step.previous_update_nonfinite:  # found in this step's one read: the previous update broke the weights
                raise WeightsNotFinite(_weights_message(state.step, ckpt.latest(checksums=False)))
            weights_flag = step.weights_nonfinite
            label_tokens, tokens, stopping = step.label_tokens, step.tokens, step.stopping
            grad_norm, applied = step.grad_norm, step.applied
            state.step += 1
            skipped = not applied and not step.empty  # not finite (an empty grpo step is no fault)
            state.skips_in_a_row = state.skips_in_a_row + 1 if skipped else 0
            state.skipped_steps += skipped
            state.tokens += int(tokens)
            state.label_tokens += label_tokens
            state.samples += sum(len(row) for b in micro for row in b.sample_keys)
            state.images += sum(int(b.image_grid_hw.shape[0]) for b in micro)
            window.add(micro, int(tokens), time.perf_counter() - start)
            metrics_log.advance()
            if cfg.logging.ledger:
                metrics_log.ledger(state.step, env.gather([k for b in micro for row in b.sample_keys for k in row]))
            if step.empty:  # grpo: every group's rewards tied and were left out (objective.drop_equal_groups)
                metrics_log.write(f"step {state.step}: no completion carried a learning signal (every group's rewards "
                                  "were equal and objective.drop_equal_groups left them out): nothing updated")
            elif not applied:
                metrics_log.write(_skip_message(state, step.loss, grad_norm, cfg))
            rows = objective.step_rows()  # grpo: this step's rollouts (None on every rank alike when there were none)
            if rows is not None:
                _write_rollouts(state.step, env.gather(rows), metrics_log, cfg.objective.rollout_table_rows,
                                objective.row_images)

            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps or not applied:
                rollout = objective.step_metrics()  # grpo: the rollout's timings, beside the update's
                last = {"loss": step.loss, **objective.metrics(step.stats, step.count), **rollout,
                        **({"time/update_s": update_s} if objective.prompts else {}), "lr": strategy.lr(),
                        "grad_norm": grad_norm,
                        "skipped_steps": state.skipped_steps, **window.record(loader.data_wait_s),
                        "tokens": state.tokens, "samples": state.samples, "skipped": _skip_counts(loader, env),
                        "memory_gb": (torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss()) / 2**30}
                metrics_log.log(state.step, last)
            if state.skips_in_a_row >= cfg.train.max_skipped_steps:
                raise TrainingDiverged(_diverged_message(state, cfg, ckpt.latest(checksums=False)))

            if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and data["eval"] is not None:
                watchdog.beat(state.step)
                _evaluate_or_report(cfg, strategy, processor, data, device, state, metrics_log, env, objective)
                strategy.model.train()

            final = state.step == cfg.train.max_steps
            if final or stopping or (cfg.train.save_every and state.step % cfg.train.save_every == 0):
                watchdog.beat(state.step)
                check_still_held(lock, env)
                refuse_nonfinite_weights(weights_flag, state.step, env, ckpt)  # never a checkpoint of them
                saved_at = _save(ckpt, strategy, loader, state, ident, env, objective)
                if env.is_main:
                    draw_quietly(run_dir)  # plots/ at every checkpoint, the final one included (never raises)
                stopping = stopping or env.any(stop.signal is not None)  # a signal that came during the save
            if stopping and not final:
                metrics_log.write(f"signal {stop.signal or 'on another rank'}: checkpointed step {state.step} at "
                                  f"{saved_at}; exiting with code {REQUEUE_EXIT_CODE} so the job can be requeued")
                if env.is_main:
                    record_requeue(state.step, saved_at)
                metrics_log.close()
                stop.restore()
                return TrainResult(state, run_dir, saved_at, None, last, stopped_by_signal=True, env=env)

    stop.restore()
    if saved_at is None:  # nothing trained: the resumed checkpoint, or (train.max_steps=0) the weights as they are
        saved_at = latest if latest is not None else _save(ckpt, strategy, loader, state, ident, env, objective)
        if env.is_main:
            draw_quietly(run_dir)
    checkpoint = saved_at
    export_dir = None
    if cfg.run.export:
        full = strategy.full_model()  # every rank: sharded strategies gather onto rank 0
        if env.is_main:
            from ..export import export_model

            export_dir = run_dir / "hf"
            export_model(full, processor, export_dir, cfg=cfg, dtype=cfg.run.export_dtype, lora=cfg.run.export_lora,
                         overwrite=True, log=metrics_log.write)
    skipped = loader.skip_counts()
    metrics_log.write(f"done: {state.step} steps, {state.tokens:,} tokens, {state.samples:,} samples; skipped "
                      f"{sum(skipped.values())} ({skipped or 'none'})")
    metrics_log.close()
    env.barrier()
    return TrainResult(state, run_dir, checkpoint, export_dir, last, env=env)


@dataclass
class StepResult:
    """One optimizer step, summed over ranks: loss sum, label and real tokens, whether any rank was asked to stop,
    the gradient norm before clipping, and whether the update was applied (False: not finite, nothing changed).
    `weights_nonfinite`: this step's update's flag (strategy.nonfinite_weights, this rank's, on the device, not
    read; None when nothing was updated); `previous_update_nonfinite`: the previous step's flag, summed over ranks
    and read with this step's numbers (True: that update broke the weights; this step then updated nothing)."""

    loss_sum: float
    label_tokens: int
    tokens: int
    stopping: bool
    grad_norm: float
    applied: bool
    weights_nonfinite: torch.Tensor | None = None
    previous_update_nonfinite: bool = False
    count: int = 0  # the objective's normaliser, summed over ranks (sft: label_tokens; dpo: pairs)
    stats: dict[str, float] = dataclasses.field(default_factory=dict)  # the objective's sums over ranks
    empty: bool = False  # a count of 0 where the objective allows it (grpo, every group dropped): nothing updated

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)


class WeightsNotFinite(TrainingDiverged):
    """An update left non-finite trainable weights although its loss and gradient norm were finite; the run stops
    before any checkpoint of them is committed."""


def train_step(strategy: Strategy, env, micro: list, clip_grad_norm: float | None, stop_requested: bool = False,
               weights_nonfinite: torch.Tensor | None = None, objective: Objective | None = None) -> StepResult:
    """Forward and backward the micro-batches (host PackedBatches), clip, update: the loop's step, also what the
    benchmarks time. The host reads from the device once: counts, loss and gradient norm together, after the
    backward; the label count that scales the loss is summed over ranks on the device.

    Non-finite weights: after an applied update, a device-side flag over the trainable weights this rank holds
    (strategy.nonfinite_weights: the max-abs of every weight, one pass over them) is left unread; the next step
    passes it back as `weights_nonfinite`, sums it over ranks with its counts and reads it in its one read, and
    before a checkpoint the loop reads it at once (refuse_nonfinite_weights). When it is set the run stops
    (WeightsNotFinite) rather than skipping the update: not applying it exactly would need the update checked
    before it lands, a second pass of the optimizer's arithmetic into temporary buffers (inside DeepSpeed's own
    optimizer for ZeRO), or a copy of the weights and Adam's moments to restore (3x the trainable memory); with the
    settings validated (schema: lr, eps, betas, weight decay finite and in range) and a finite gradient norm, an AdamW
    step is bounded, so weights that still go non-finite point at something the loop cannot repair."""
    device = env.device
    objective = objective or SFT()
    # This rank's normaliser (the objective's count: label tokens for sft, pairs for dpo), label tokens, tokens and
    # stop request, and the previous update's weights flag, summed over ranks.
    local = [sum(objective.count(b) for b in micro), sum(b.num_label_tokens for b in micro),
             sum(b.num_tokens for b in micro), stop_requested]
    previous = weights_nonfinite if weights_nonfinite is not None else torch.zeros((), dtype=torch.float64)
    counts = env.sum_tensor(torch.cat([torch.tensor(local, dtype=torch.float64).to(device),
                                       previous.to(device=device, dtype=torch.float64).reshape(1)]))
    # Data parallelism averages gradients over ranks: scale so that the result is the sum of the losses over the
    # global count.
    scale = (env.world_size / counts[0].clamp(min=1)).float()
    sums = torch.zeros(1 + len(objective.stat_names), dtype=torch.float64, device=device)  # loss, then stats
    for batch in micro:
        loss_sum, stats = objective.micro_step(strategy, batch.to(device), scale)
        sums[0] += loss_sum
        if stats is not None:
            sums[1:] += stats.to(torch.float64)
    sums = env.sum_tensor(sums)
    norm = strategy.clip(clip_grad_norm)
    # the step's one read from the device
    read = torch.cat([counts, sums, (norm if norm is not None else sums[0]).double().reshape(1)]).tolist()
    count, label_tokens, tokens, stopping, broken = read[:5]
    loss, stat_sums, grad_norm = read[5], dict(zip(objective.stat_names, read[6:-1], strict=True)), read[-1]
    done = dict(count=int(count), stats=stat_sums)
    if broken > 0:  # this step ran on weights the previous update broke: update nothing, the loop stops
        return StepResult(loss, int(label_tokens), int(tokens), stopping > 0, grad_norm, False,
                          previous_update_nonfinite=True, **done)
    if count == 0:
        if not objective.empty_steps:
            raise RuntimeError(f"a step has no {'label tokens' if objective.name == 'sft' else 'preference pairs'} "
                               "at all: check the data (isaac-data validate)")
        strategy.update(None, False)  # the gradients (all zero) are dropped; weights, optimizer, schedule stay
        return StepResult(0.0, int(label_tokens), int(tokens), stopping > 0, 0.0, False, empty=True, **done)
    # not finite on any rank: nothing is updated, on every rank alike
    grad_norm, applied = strategy.update(grad_norm if norm is not None else None, math.isfinite(loss))
    flag = strategy.nonfinite_weights() if applied else None
    return StepResult(loss, int(label_tokens), int(tokens), stopping > 0, grad_norm, applied, flag, **done)


def refuse_nonfinite_weights(flag: torch.Tensor | None, step: int, env, ckpt: CheckpointManager) -> None:
    """Before a checkpoint is committed, on every rank: sum the last update's flag over ranks and read it (one read,
    at save steps only); raise WeightsNotFinite when a weight on any rank is not finite. `flag` None: no update
    since the weights were last known finite."""
    if flag is not None and env.sum_tensor(flag.clone()).item() > 0:
        raise WeightsNotFinite(_weights_message(step, ckpt.latest(checksums=False)))


def _weights_message(step: int, previous: Path | None) -> str:
    return (f"the update of step {step} left non-finite (inf or NaN) trainable weights on some rank, with a finite "
            "loss and gradient norm: stopping, no checkpoint of these weights is committed. "
            + (f"The last checkpoint, {previous}, holds the last good weights. " if previous else
               "No checkpoint was committed before it. ")
            + "Lower optim.lr or raise optim.eps; check code that changes the weights (hooks, a custom optimizer).")


def _resume(latest: Path, ckpt: CheckpointManager, strategy: Strategy, loader, ident: dict[str, Any], cfg: Config,
            env, objective: Objective) -> TrainState:
    """Load model, optimizer, schedule, data position and RNG from `latest`; returns the saved progress."""
    meta = ckpt.meta(latest)
    check_identity(meta["identity"], ident, latest)
    strategy.load(latest, meta)
    saved_world = meta.get("world_size", env.world_size)
    state = meta["train_state"]
    if saved_world == env.world_size:
        rank_state = ckpt.rank_state(latest, env.rank)
        loader.load_state_dict(rank_state["data"])
        set_rng_state(rank_state["rng"])
        objective.load_state_dict(rank_state.get("objective", {}))
    else:
        pending = [r.get("objective", {}) for r in ckpt.rank_states(latest)]
        if any(p.get("buffer") for p in pending):
            raise ValueError(f"cannot resume {latest} on {env.world_size} processes: it was saved by {saved_world} "
                             "in the middle of a rollout's objective.num_iterations passes, which each rank holds "
                             f"for its own prompts. Resume on {saved_world} processes, or from a checkpoint at a "
                             "multiple of objective.num_iterations steps.")
        saved = [r["data"] for r in ckpt.rank_states(latest)]
        loader.load_state_dict(reshard_loader_state(saved, env.rank, env.world_size, cfg.data.num_workers))
        # RNG streams are per rank and cannot be mapped onto another world size: fresh, deterministic ones
        seed_all(cfg.train.seed + 7919 * env.rank + 104729 * state.step)
        logger.info("resumed %d-process checkpoint on %d processes", saved_world, env.world_size)
    return state


def _skip_counts(loader, env) -> dict[str, int]:
    """Samples skipped so far by reason, summed over ranks."""
    total: dict[str, int] = {}
    for counts in env.gather(loader.skip_counts()):
        for reason, n in counts.items():
            total[reason] = total.get(reason, 0) + n
    return total


def _skip_message(state: TrainState, loss: float, grad_norm: float, cfg: Config) -> str:
    return (f"step {state.step}: loss {loss:.4g}, gradient norm {grad_norm:.4g} (not finite on some rank): step "
            f"skipped, nothing updated; {state.skips_in_a_row} in a row (train.max_skipped_steps="
            f"{cfg.train.max_skipped_steps}), {state.skipped_steps} in this run")


def _diverged_message(state: TrainState, cfg: Config, previous: Path | None) -> str:
    return (f"{state.skips_in_a_row} steps in a row (up to step {state.step}) had a non-finite loss or gradient norm "
            f"(train.max_skipped_steps={cfg.train.max_skipped_steps}): stopping. "
            + (f"The last checkpoint, {previous}, holds the last good weights. " if previous else "")
            + "Lower optim.lr (or raise optim.warmup_steps), check the data these steps read, or raise "
            "train.max_skipped_steps.")


def _save(ckpt: CheckpointManager, strategy: Strategy, loader, state: TrainState, ident, env,
          objective: Objective) -> Path:
    rank_state = {"rng": rng_state(), "data": loader.state_dict(), "objective": objective.state_dict()}
    return ckpt.save(
        state.step, strategy.save, state, ident, rank_state, env=env,
        meta={"strategy": strategy.name, "format": strategy.format, "world_size": env.world_size},
    )


def _pick_checkpoint(ckpt: CheckpointManager, env) -> Path | None:
    """The newest checkpoint that verifies, the same on every rank (CheckpointManager.resume_point: the
    checksums split over ranks, each one passed over logged with its reason and set aside)."""
    return ckpt.resume_point(env)


def _evaluate_or_report(cfg: Config, strategy: Strategy, processor, data, device, state: TrainState,
                        metrics_log: MetricsLogger, env, objective: Objective) -> None:
    """Periodic evaluation that never ends the run. Every rank does its part (`_local_eval`), then one gather
    brings the answers and any failure together; rank 0 scores and logs. A failure on any rank (the usual case,
    the same data and weights, fails on all alike) is logged with its traceback, counted (`eval_failures` in
    metrics.jsonl and trainer_state.json) and training goes on. With sharded weights a failure inside a forward
    on a single rank leaves the others in a collective until strategy.timeout_s."""
    local, samples = _local_eval(cfg, strategy, processor, data, device, env, objective)
    parts = env.gather(local)  # answers and failures only: no sample bytes
    failed = next((p.failure for p in parts if p.failure is not None), None)
    if failed is None and env.is_main:
        try:
            _log_eval(state.step, local.loss, samples, [p.answers for p in parts], metrics_log, local.metrics)
        except Exception as err:  # noqa: BLE001  (scoring or logging: reported, never fatal)
            logger.exception("scoring the evaluation at step %d failed", state.step)
            failed = f"{type(err).__name__}: {str(err)[:300]}"
    if failed is not None:
        state.eval_failures += 1
        metrics_log.write(f"step {state.step}: evaluation failed ({failed}); training goes on "
                          f"({state.eval_failures} failed so far; the traceback is in the log)")
        metrics_log.log(state.step, {"eval_failures": state.eval_failures})


def _local_eval(cfg: Config, strategy: Strategy, processor, data, device, env, objective: Objective
                ) -> tuple[LocalEval, list]:
    """This rank's part: the eval loss (rank 0; every rank with sharded weights) and its share of the answers;
    and the eval samples (the same list on every rank)."""
    out, samples = LocalEval(), []
    try:
        model = strategy.eval_model
        model.eval()
        if env.is_main or strategy.eval_on_all_ranks:
            eval_loader = build.build_loader(cfg, processor, data["eval"], None, train=False)
            batches = itertools.islice(eval_loader, cfg.train.eval_batches)
            out.metrics = objective.evaluate(strategy, batches, device) or {}  # dpo: held-out preference pairs
            if "eval_loss" in out.metrics:
                out.loss = out.metrics.pop("eval_loss")
            else:
                with torch.no_grad(), strategy.autocast():
                    out.loss = eval_loss(model, eval_loader, cfg.train.eval_batches, device)
        t = cfg.train
        samples, out.answers = local_answers(
            isaac_of(model), processor, data["eval"], t.eval_samples, env.rank, env.world_size,
            synced=strategy.eval_on_all_ranks, batch_size=t.eval_batch_size, max_new_tokens=t.eval_max_new_tokens)
    except Exception as err:  # noqa: BLE001  (any evaluation error: reported, never fatal)
        logger.exception("evaluation failed on rank %d", env.rank)
        out.failure = f"{type(err).__name__}: {str(err)[:300]}"
    return out, samples


def _log_eval(step: int, loss: float | None, samples, parts, metrics_log: MetricsLogger,
              extra: dict | None = None) -> None:
    """Score the gathered answers; metrics.jsonl / W&B get the loss and the headline metrics,
    eval/step_NNNNNNN.jsonl every prediction row, W&B a table with the images (groundings drawn)."""
    rows, summary = scored_rows(samples, parts)
    scored = {"eval_samples": len(rows), **headline(summary)} if rows else {}
    metrics_log.log(step, {"eval_loss": loss, **(extra or {}), **scored})
    if not rows:
        return
    path = metrics_log.predictions(step, rows)
    metrics_log.table("eval_samples", table_rows(samples, rows), step)
    metrics_log.write(f"  eval at step {step}: {len(rows)} samples -> {path}\n{format_summary(summary, '    ')}")
    for row in rows[:2]:
        metrics_log.write(f"  eval: {row['prompt']!r} -> {row['generated']!r} (expected {row['expected']!r})")


def _write_rollouts(step: int, parts: list[list[dict[str, Any]]], metrics_log: MetricsLogger, table_prompts: int,
                    images: list[bytes | None]) -> None:
    """A GRPO step's rollouts (every rank's, gathered) to rollouts/step_NNNNNNN.jsonl; the completions of the
    first `table_prompts` prompts (rank 0's, whose first images, `images`, it holds) to W&B as a table with the
    groundings drawn."""
    if metrics_log.rank != 0:
        return
    rows = [{"step": step, "rank": rank, **row} for rank, part in enumerate(parts) for row in part]
    metrics_log.predictions(step, rows, folder=ROLLOUTS_DIR)
    if table_prompts and metrics_log.wandb is not None:
        metrics_log.table("rollouts", rollout_table_rows(parts[0][:table_prompts], images), step)


def _rss() -> int:
    with contextlib.suppress(Exception):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return 0


def exit_code(result: TrainResult) -> int:
    return REQUEUE_EXIT_CODE if result.stopped_by_signal else 0

