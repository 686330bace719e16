"""objective=dpo: direct preference optimisation on packed preference pairs (configs/objective/dpo.yaml).

A micro-batch holds whole pairs (the loader's pair mode): pair k's chosen document is label group 2k, its rejected
2k + 1 (data/packing.py), and the model returns each group's summed log-probability from the packed layout on the
host (model/loss.py lm_group_logps: the selected positions' logits in recomputed chunks, never a row's). The
reference's come from a forward without gradients on the same inputs (objectives/reference.py). The step's loss
is the sum of the pair losses over its micro-batches and ranks divided by the global number of pairs: gradient
accumulation and data parallelism change nothing but memory, as for sft.

Reported (TRL's names): rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected (means over the step's pairs).
"""

from __future__ import annotations

import torch

from . import reference_table
from .base import Objective, RunData
from .preference_loss import preference_losses
from .reference import Reference, resolve_reference
from .reference_table import ReferenceTable, fingerprint, table_path

STATS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
         "logps/rejected")


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout of `model` to 0: nn.Dropout modules (LoRA's among them) and attention modules' float rates."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


class DPO(Objective):
    name = "dpo"
    pairs = True
    stat_names = STATS

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.options = options = cfg.objective
        self.reference = Reference(resolve_reference(options.reference, cfg))
        self.table: ReferenceTable | None = None  # precomputed reference log-probs (objective.precompute_reference)

    def setup(self, strategy, make_frozen, data: RunData | None = None) -> None:
        if self.options.disable_dropout:  # as TRL does: the policy's log-probs are not noise around the reference's
            disable_dropout(strategy.eval_model)
        if not self.options.precompute_reference:
            self.reference.setup(strategy, make_frozen)
            return
        if data is None:
            raise ValueError("objective.precompute_reference needs the run's data (RunData) at setup")
        path, expected, env = table_path(self.cfg), fingerprint(self.cfg, data.sources), strategy.env
        self.table = reference_table.load(path, expected, env)
        if self.table is None:  # one pass of the reference over the data, then it is freed
            self.reference.setup(strategy, make_frozen)
            device = env.device
            self.table = reference_table.compute(
                path, expected, lambda b: self.reference.logps(strategy, b.to(device).model_inputs()),
                data.batches_of, env, self.cfg.logging.progress)
            self.reference.release()

    def reference_logps(self, strategy, batch, inputs, split: str) -> torch.Tensor | None:
        """The reference's per-answer log-probs of `batch` (on its device; `inputs` its model inputs): from the
        table, else a forward."""
        if self.table is not None:
            return self.table.logps(split, batch.sample_keys, batch.input_ids.device)
        return self.reference.logps(strategy, inputs)

    def count(self, batch) -> int:
        return batch.num_pairs

    def micro_step(self, strategy, batch, scale):
        inputs = batch.model_inputs()
        ref = self.reference_logps(strategy, batch, inputs, "train")
        stats: list[torch.Tensor] = []

        def loss_of(out) -> torch.Tensor:
            loss, step_stats = self.pair_terms(out.group_logps, ref, batch.layout.group_tokens)
            stats.append(step_stats)
            return loss

        out = strategy.forward_backward(inputs, scale, loss_of)
        return out.loss_sum.detach(), stats[0]

    def pair_terms(self, logps: torch.Tensor, ref: torch.Tensor | None, group_tokens: list[int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed pair losses of a micro-batch and its STATS sums, from per-answer log-probabilities
        (n_groups,) of the policy and the reference (None: reference-free)."""
        o = self.options
        pairs = logps.view(-1, 2)
        ref_pairs = None if ref is None else ref.detach().view(-1, 2)
        tokens = torch.tensor(group_tokens, dtype=torch.float32).view(-1, 2).to(logps.device)
        losses = preference_losses(
            pairs[:, 0], pairs[:, 1], None if ref_pairs is None else ref_pairs[:, 0],
            None if ref_pairs is None else ref_pairs[:, 1], tokens[:, 0], tokens[:, 1], loss_type=o.loss_type,
            beta=o.beta, label_smoothing=o.label_smoothing, simpo_gamma=o.simpo_gamma, rpo_alpha=o.rpo_alpha)
        c, r, detached = losses.chosen_rewards, losses.rejected_rewards, pairs.detach().float()
        stats = torch.stack([c.sum(), r.sum(), (c > r).float().sum(), (c - r).sum(), detached[:, 0].sum(),
                             detached[:, 1].sum()])
        return losses.loss.sum(), stats

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        return {name: sums[name] / max(count, 1) for name in self.stat_names}

    def evaluate(self, strategy, batches, device) -> dict[str, float]:
        """Held-out pairs: the mean DPO loss (eval_loss) and eval_rewards/*, eval_logps/* (no gradients)."""
        total = torch.zeros(1 + len(STATS), dtype=torch.float64, device=device)
        pairs = 0
        for batch in batches:
            batch = batch.to(device)
            inputs = batch.model_inputs()
            logps = strategy.forward_frozen(strategy.eval_model, inputs).group_logps
            loss, stats = self.pair_terms(logps, self.reference_logps(strategy, batch, inputs, "eval"),
                                          batch.layout.group_tokens)
            total += torch.cat([loss[None], stats]).double()
            pairs += batch.num_pairs
        values = (total / max(pairs, 1)).tolist()
        return {"eval_loss": values[0], "eval_pairs": pairs,
                **{f"eval_{name}": v for name, v in zip(STATS, values[1:], strict=True)}}
