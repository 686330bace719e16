"""objective=grpo: reinforcement learning with verifiable rewards (configs/objective/grpo.yaml).

A step, on every rank alike (verl's split of rollout from update):

    rollout   the loader's prompt batches (grad_accum of them, prompts_per_batch prompts each: this rank's share
              of the step) -> num_generations completions per prompt (rollout.py: batched KV-cache generation,
              synced across ranks under sharded weights)
    scoring   each completion's reward (rewards.py: isaac-eval's scorers, user functions) -> advantages within
              each prompt's group (grpo_loss.py)
    logps     the reference's per-token log-probs (beta > 0) and, when a rollout is optimised more than once
              (num_iterations > 1), the rollout policy's, without gradients
    update    each prompt batch's completions packed into one micro-batch; the clipped policy-gradient loss per
              completion token from the packed layout, summed with the loss type's coefficients and divided by the
              step's global count (tokens, completions) as every objective's loss is (train/loop.py train_step)

A prompt batch's completions are sampled from generators seeded from its prompts' addresses (data/seeding.py), so
they are the same on any number of processes and after a resume. The rollout of a step is kept for num_iterations
steps (objective.num_iterations): a checkpoint in between holds it (state_dict) with the loader's position, so a
resume is bit-identical. Each rollout's rows
(prompt, completions, rewards, advantages) go to rollouts/step_NNNNNNN.jsonl and a W&B table.

Reported (TRL's names): reward, reward_std, frac_reward_zero_std, rewards/<name>/mean, rewards/failures,
completions/mean_length, completions/clipped_ratio, kl (beta > 0), clip_ratio/low_mean, clip_ratio/high_mean,
clip_ratio/region_mean; and time/generation_s, time/scoring_s, time/logps_s per rollout (the update's time is the
loop's, time/update_s).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..data.packing import PackedBatch
from ..data.seeding import ROLLOUT_STREAM, derive_seed
from ..model import isaac_of
from .base import Objective, RunData
from .dpo import disable_dropout
from .grpo_loss import clipped_token_losses, group_advantages, normaliser, token_coefficients
from .reference import Reference, only_adapters_train
from .rewards import Rewards
from .rollout import Completions, completion_batch, sample_completions
from .rollout_state import batch_from_state, batch_state

ROLLOUT_STATS = ("reward_sum", "reward_std_sum", "groups", "zero_std_groups", "completions", "completion_tokens",
                 "truncated", "kept_tokens", "reward_failures")
LOSS_STATS = ("kl_sum", "clip_low", "clip_high", "clip_region")


def resolve_grpo_reference(setting: str, cfg: Any) -> str:
    """auto: none when beta is 0 (no KL term, no reference at all); else the adapters disabled when only LoRA
    adapters train, else a frozen copy."""
    if setting != "auto":
        return setting
    if cfg.objective.beta == 0:
        return "none"
    return "adapters" if only_adapters_train(cfg) else "copy"


class GRPO(Objective):
    name = "grpo"
    prompts = True
    empty_steps = True  # every group tied (drop_equal_groups): nothing to learn from, the step updates nothing

    def __init__(self, cfg) -> None:
        self.cfg, self.options = cfg, cfg.objective
        self.rewards = Rewards(self.options.rewards, self.options.reward_weights)
        self.stat_names = (*ROLLOUT_STATS, *(f"{n}_sum" for n in self.rewards.names),
                           *(f"{n}_n" for n in self.rewards.names), *LOSS_STATS)
        self.reference = Reference(resolve_grpo_reference(self.options.reference, cfg))
        self.processor: Any = None
        self.buffer: list[PackedBatch] = []  # the rollout being optimised, passes_left more times
        self.passes_left = 0
        self.timing: dict[str, float] = {}
        self.rows: list[dict[str, Any]] | None = None
        self.row_images: list[bytes | None] = []  # each row's prompt's first image (the W&B table draws on it)

    # ---- set-up and state --------------------------------------------------------------------------------

    def setup(self, strategy, make_frozen, data: RunData | None = None) -> None:
        if data is None or data.processor is None:
            raise ValueError("objective=grpo needs the run's processor at setup (RunData.processor)")
        self.processor = data.processor
        if self.options.disable_dropout:
            disable_dropout(strategy.eval_model)
        self.reference.setup(strategy, make_frozen)

    def state_dict(self) -> dict[str, Any]:
        return {"passes_left": self.passes_left, "buffer": [batch_state(b) for b in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passes_left = int(state.get("passes_left", 0))
        self.buffer = [batch_from_state(s) for s in state.get("buffer", [])]

    # ---- the rollout ---------------------------------------------------------------------------------------

    def next_micro_batches(self, strategy, batches, n: int) -> list[PackedBatch]:
        self.rows = None
        if not self.buffer:
            self.buffer = self.rollout(strategy, [next(batches) for _ in range(n)])
            self.passes_left = self.options.num_iterations
        micro = self.buffer
        self.passes_left -= 1
        if self.passes_left <= 0:
            self.buffer = []
        return micro

    def rollout(self, strategy, prompt_batches: list) -> list[PackedBatch]:
        """The step's prompt batches -> its micro-batches (module docstring), timed in `self.timing`."""
        o, env = self.options, strategy.env
        model = isaac_of(strategy.eval_model)
        start = time.perf_counter()
        sampled = [self._sample(model, strategy, b) for b in prompt_batches]
        generated = time.perf_counter()
        failures_before = sum(self.rewards.failures.values())
        scores = [self.rewards.score_many([p.sample for p in b.prompts for _ in range(o.num_generations)], c.texts)
                  for b, c in zip(prompt_batches, sampled, strict=True)]
        batch_std = None
        if o.scale_rewards == "batch":  # the std of every reward of the step, over all ranks
            every = [r for part in env.gather([t for totals, _ in scores for t in totals]) for r in part]
            batch_std = torch.tensor(every, dtype=torch.float64).std() if len(every) > 1 else 0.0
        scored = time.perf_counter()
        micro, self.rows, self.row_images = [], [], []
        for b, c, (totals, parts) in zip(prompt_batches, sampled, scores, strict=True):
            batch, rows = self._micro_batch(strategy, b, c, totals, parts, batch_std)
            micro.append(batch)
            self.rows += rows
            self.row_images += [p.sample.images[0] if p.sample.images else None for p in b.prompts]
        failures = sum(self.rewards.failures.values()) - failures_before
        micro[0].meta["grpo"]["stats"][ROLLOUT_STATS.index("reward_failures")] = failures
        self.timing = {"time/generation_s": generated - start, "time/scoring_s": scored - generated,
                       "time/logps_s": time.perf_counter() - scored}
        return micro

    def _sample(self, model, strategy, prompts_batch) -> Completions:
        """The batch's completions, drawn from generators seeded from its prompts' addresses (data/seeding.py):
        the same on any number of processes and after a resume; the training process's RNG streams untouched."""
        o, device = self.options, strategy.env.device
        seed = derive_seed(ROLLOUT_STREAM, self.cfg.train.seed, *(w for p in prompts_batch.prompts for w in p.address))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return sample_completions(model, self.processor, prompts_batch.prompts, o.num_generations,
                                      o.max_new_tokens, o.temperature, o.top_p, synced=strategy.eval_on_all_ranks)

    def _micro_batch(self, strategy, prompts_batch, c: Completions, totals: list[float], parts: list[list[float]],
                     batch_std) -> tuple[PackedBatch, list[dict[str, Any]]]:
        """One prompt batch's completions as a packed micro-batch, with what the loss needs per token in
        meta["grpo"] (host tensors), and its rollout rows."""
        o, g = self.options, c.group_size
        rewards = torch.tensor(totals, dtype=torch.float64)
        advantages, group_std = group_advantages(rewards, g, o.scale_rewards, batch_std)
        tied = [bool((rewards[k:k + g] == rewards[k]).all()) for k in range(0, len(totals), g)]
        kept = [not (o.drop_equal_groups and tied[i // g]) and not (o.mask_truncated_completions and c.truncated[i])
                for i in range(len(totals))]
        packed = list(kept) if any(kept) else [i == 0 for i in range(len(kept))]  # a rank still runs one forward
        coef = token_coefficients(c.lengths, kept, o.loss_type)
        batch = completion_batch(prompts_batch.prompts, c, packed, self.cfg.train.seq_len,
                                 self.processor.tokenizer.pad_token_id, self.processor.image_token_id)
        index = [i for i, p in enumerate(packed) if p]  # label group k -> completion index[k]
        groups = batch.layout.label_groups
        stats = [float(rewards.sum()), float(group_std.sum()), len(tied), sum(tied), len(totals), sum(c.lengths),
                 sum(c.truncated), sum(n for n, k in zip(c.lengths, kept, strict=True) if k), 0.0]
        stats += [math.fsum(v for v in vals if not math.isnan(v)) for vals in parts]
        stats += [sum(not math.isnan(v) for v in vals) for vals in parts]
        batch.meta["grpo"] = {
            "advantages": advantages[index][groups], "coef": torch.tensor(coef, dtype=torch.float32)[index][groups],
            "count": normaliser(c.lengths, kept, o.loss_type, o.max_new_tokens),
            "stats": torch.tensor(stats, dtype=torch.float64), "old": None, "ref": None}
        self._rollout_logps(strategy, batch)
        return batch, self._rows(prompts_batch, c, totals, parts, advantages, kept)

    def _rollout_logps(self, strategy, batch: PackedBatch) -> None:
        """The reference's per-token log-probs (beta > 0) and the rollout policy's (num_iterations > 1), on the host."""
        o = self.options
        if o.beta == 0 and o.num_iterations == 1:
            return
        inputs = batch.to(strategy.env.device).model_inputs()
        if o.beta != 0:
            batch.meta["grpo"]["ref"] = self.reference.output(strategy, inputs).token_logps.detach().cpu()
        if o.num_iterations > 1:
            old = strategy.forward_frozen(strategy.eval_model, inputs).token_logps
            batch.meta["grpo"]["old"] = old.detach().cpu()

    def _rows(self, prompts_batch, c: Completions, totals, parts, advantages, kept) -> list[dict[str, Any]]:
        g, out = c.group_size, []
        for p, prompt in enumerate(prompts_batch.prompts):
            span = slice(p * g, (p + 1) * g)
            s = prompt.sample
            out.append({
                "key": s.key, "prompt": s.question, "expected": s.expected, "task": s.task, "images": s.image_refs,
                "completions": c.texts[span], "rewards": totals[span],
                "reward_parts": {n: [None if math.isnan(v) else v for v in vals[span]]
                                 for n, vals in zip(self.rewards.names, parts, strict=True)},
                "advantages": advantages[span].tolist(), "truncated": c.truncated[span], "kept": list(kept[span]),
                "lengths": c.lengths[span]})
        return out

    def step_metrics(self) -> dict[str, float]:
        return dict(self.timing) if self.rows is not None else {}

    def step_rows(self) -> list[dict[str, Any]] | None:
        return self.rows

    # ---- the update ----------------------------------------------------------------------------------------

    def count(self, batch) -> int:
        return batch.meta["grpo"]["count"]

    def micro_step(self, strategy, batch, scale):
        o, g = self.options, batch.meta["grpo"]
        device = batch.input_ids.device
        moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in g.items()}
        coef = moved["coef"]
        kept = (coef > 0).float()
        stats: list[torch.Tensor] = []

        def loss_of(out) -> torch.Tensor:
            terms = clipped_token_losses(out.token_logps, moved["old"], moved["advantages"], moved["ref"],
                                         beta=o.beta, epsilon=o.epsilon, epsilon_high=o.epsilon_high)
            kl = (terms.kl.detach() * kept).sum() if terms.kl is not None else coef.new_zeros(())
            low, high = (terms.clipped_low * kept).sum(), (terms.clipped_high * kept).sum()
            stats.append(torch.stack([kl, low, high, low + high]).double())
            return (terms.loss * coef).sum()

        out = strategy.forward_backward(batch.model_inputs(), scale, loss_of)
        return out.loss_sum.detach(), torch.cat([moved["stats"], stats[0]])

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        n, groups, tokens = max(sums["completions"], 1), max(sums["groups"], 1), max(sums["kept_tokens"], 1)
        out = {"reward": sums["reward_sum"] / n, "reward_std": sums["reward_std_sum"] / groups,
               "frac_reward_zero_std": sums["zero_std_groups"] / groups,
               **{f"rewards/{name}/mean": sums[f"{name}_sum"] / max(sums[f"{name}_n"], 1)
                  for name in self.rewards.names},
               "rewards/failures": sums["reward_failures"],
               "completions/mean_length": sums["completion_tokens"] / n,
               "completions/clipped_ratio": sums["truncated"] / n,
               "clip_ratio/low_mean": sums["clip_low"] / tokens, "clip_ratio/high_mean": sums["clip_high"] / tokens,
               "clip_ratio/region_mean": sums["clip_region"] / tokens}
        if self.options.beta != 0:
            out["kl"] = sums["kl_sum"] / tokens
        return out
