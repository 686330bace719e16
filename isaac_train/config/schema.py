"""The typed training configuration. YAML (configs/, recipes/) only selects and overrides these fields.

`validate(cfg)` runs once, before any process group or model exists, and names the key to change in every
message. Nothing here rewrites what the user set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .zero_options import check_zero_options

STRATEGIES = ("single", "ddp", "fsdp", "zero1", "zero2", "zero3")
SCHEDULES = ("cosine", "wsd", "constant")
PRECISIONS = ("bf16", "fp32")
# AdamW moves each weight by about lr per step, so a rate above 1 cannot train; the bound also keeps every rate
# (and lr x weight_decay) inside float32, where torch's AdamW overflows with a traceback (lr=1e39).
MAX_LR = 1.0
# float32's smallest normal number: a smaller optim.eps is 0 (or a denormal) in the update, and 0/0 then makes NaN
# weights wherever a gradient is 0 (measured: eps=1e-50 gives NaN weights at the first step)
FP32_TINY = 1.1754943508222875e-38


@dataclass
class ModelConfig:
    """Which Isaac to train and how it runs."""

    pretrained: str | None = None  # a checkpoint directory (Perceptron's or ours); None builds `size` from scratch
    size: str = "small"  # tiny | small: built-in configs for tests and the CPU demo (model/tiny.py); pretrained:
    # (model=isaac, the fine-tuning recipes) model.pretrained must be set
    attn_backend: str = "auto"  # auto | sdpa | eager | varlen | flash_attn
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each decoder and vision block
    train_vision: str = "none"  # none | all | last_n
    vision_last_n: int = 0  # with train_vision=last_n: how many of the last vision blocks train
    train_projector: bool = True
    train_decoder: str = "full"  # full | frozen | lora (peft=lora sets lora; frozen with peft.vision: vision LoRA)
    train_embeddings: bool = True  # with train_decoder=full: embed_tokens and lm_head train too


@dataclass
class DataConfig:
    """Where samples come from and how they are packed."""

    train_shards: Any = None  # a dataset dir / index.json / brace pattern / glob, or a list of them
    train_weights: list[float] | None = None  # mixture weights, one per train_shards entry
    eval_shards: Any = None
    demo: bool = False  # make `isaac-data demo` data under run.output_dir/data on first use when no shards given
    demo_train_samples: int = 2000
    demo_eval_samples: int = 100
    demo_image_size: int = 128
    num_workers: int = 2
    pack_buffer: int = 64
    rows_per_batch: int = 1  # packed rows per micro-batch
    max_patches_per_row: int | None = None
    shuffle: bool = True
    shuffle_block: int = 1024
    length_policy: str = "truncate"  # truncate (never through an image) | drop
    # Images with more pixels (width x height, read from the header) are skipped as image_too_large, never decoded.
    # Default and ceiling: Isaac's processor refuses more than 60,000,000 (MAX_PIXELS, isaac_spec.md section 3) and
    # resizes the rest to its patch budget; lower it to bound a loader worker's decode memory (about 3 bytes/pixel).
    max_image_pixels: int = 60_000_000
    max_error_rate: float = 0.05
    processor: str | None = None  # tokenizer/processor dir; default: model.pretrained, else the tiny tokenizer


@dataclass
class TrainConfig:
    """The loop."""

    max_steps: int = 100
    seq_len: int = 1024
    seed: int = 0
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    precision: str = "bf16"  # bf16 autocast where the device supports it (CUDA; CPU when supported), else fp32
    clip_grad_norm: float | None = 1.0
    log_every: int = 10
    eval_every: int = 0  # 0: no periodic eval
    eval_batches: int = 20  # eval-loss batches at each eval
    eval_samples: int = 32  # eval samples answered and scored at each eval (split over ranks); 0: loss only
    eval_batch_size: int = 8  # prompts generated together
    eval_max_new_tokens: int = 48
    save_every: int = 0  # 0: only at the end
    keep_last: int = 3
    max_skipped_steps: int = 3  # non-finite steps in a row (each skipped, nothing updated) before the run stops


@dataclass
class OptimConfig:
    """AdamW with parameter groups and a schedule."""

    lr: float = 1e-4  # decoder (and LoRA) learning rate
    lr_projector: float | None = None  # default: lr
    lr_vision: float | None = None  # default: lr / 10
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    warmup_steps: int = 0
    decay_fraction: float = 0.2  # wsd: last fraction of steps that decays
    min_lr_ratio: float = 0.1


@dataclass
class PeftConfig:
    """LoRA through peft."""

    kind: str = "none"  # none | lora
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    vision: bool = False  # also LoRA on the vision tower's attention and MLP (only, with model.train_decoder=frozen)


@dataclass
class StrategyConfig:
    """How the model is spread over processes: single | ddp | fsdp | zero1 | zero2 | zero3."""

    name: str = "single"
    timeout_s: int = 1800  # a collective that waits longer fails with an error naming it instead of hanging
    reshard_after_forward: bool = True  # fsdp: free gathered weights after each block's forward (less memory)
    zero: dict[str, Any] = field(default_factory=dict)  # zero*: extra DeepSpeed zero_optimization keys


@dataclass
class LoggingConfig:
    """Where metrics go: metrics.jsonl always; W&B when enabled."""

    wandb: str = "disabled"  # disabled | offline | online
    project: str = "isaac-train"
    progress: bool = True
    ledger: bool = False  # samples.jsonl: the sample keys every rank trained on, per step


@dataclass
class ObjectiveConfig:
    """What the loop optimises (objectives/): sft (token cross-entropy), dpo (preference pairs) or grpo (rewards on
    sampled completions). Loss types and names as TRL names them (DPOTrainer loss_type sigmoid / ipo; SimPO as in
    TRL's CPOTrainer; GRPOTrainer loss_type grpo / dapo / dr_grpo, epsilon, epsilon_high, scale_rewards,
    num_iterations, num_generations)."""

    name: str = "sft"  # sft | dpo | grpo
    # dpo: sigmoid | ipo | simpo (reference-free, length-normalised); grpo: dapo (token-level over the step) | grpo
    # (per-completion token mean) | dr_grpo (tokens over completions x max_new_tokens)
    loss_type: str = "sigmoid"
    beta: float = 0.1  # dpo: the KL strength (TRL's default 0.1; SimPO papers use 2.0 to 2.5); grpo: the KL weight
    label_smoothing: float = 0.0  # dpo sigmoid / simpo: the assumed probability that a pair's labels are flipped
    simpo_gamma: float = 0.5  # simpo: the target reward margin (TRL's simpo_gamma)
    rpo_alpha: float | None = None  # dpo: weight of an NLL term on the chosen answer (RPO); null: none
    reference: str = "auto"  # dpo: auto (adapters off if only LoRA trains, else a frozen copy) | adapters | copy | none
    vision_per_pair: bool = True  # dpo: a pair's two documents share one pass of the vision tower
    disable_dropout: bool = True  # dpo: dropout off in the policy (TRL's default): policy and reference agree at start
    precompute_reference: bool = False  # dpo: the reference scores the data once before training (no second model)
    reference_logps: str | None = None  # dpo: where that table is kept (default <run.output_dir>/reference_logps.json)
    # grpo: the rollout
    num_generations: int = 8  # completions sampled per prompt (the group, G)
    prompts_per_batch: int = 2  # prompts per micro-batch per process (G completions each)
    max_new_tokens: int = 64  # a completion's length limit (prompt + completion must fit train.seq_len)
    temperature: float = 1.0  # sampling temperature (0: greedy, every completion of a group alike)
    top_p: float = 1.0
    # grpo: the update
    epsilon: float = 0.2  # the ratio's clip range below 1 (and above, unless epsilon_high)
    epsilon_high: float | None = None  # the clip range above 1 (DAPO's clip-higher: 0.28); null: epsilon
    scale_rewards: str = "group"  # advantages divided by the group's reward std | batch (the step's) | none (Dr. GRPO)
    num_iterations: int = 1  # optimisation passes (steps) per rollout batch (mu); > 1 keeps the rollout's log-probs
    drop_equal_groups: bool = False  # leave out groups whose rewards are all equal (no signal; DAPO's filter)
    mask_truncated_completions: bool = False  # completions cut at max_new_tokens carry no loss (DAPO)
    rewards: list[str] = field(default_factory=lambda: ["auto"])  # built-in names or pkg.module:function
    reward_weights: list[float] | None = None  # one per reward; null: all 1
    rollout_table_rows: int = 4  # prompts per step in the W&B rollouts table (all go to rollouts/step_*.jsonl)


# objective=grpo's loss types (TRL's GRPOTrainer names) and built-in rewards (objectives/rewards.py)
GRPO_LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
BUILTIN_REWARDS = ("auto", "exact", "contains", "choice", "grounding", "grounding_f1", "all_found", "point", "format")


@dataclass
class RunConfig:
    output_dir: str = "runs/demo"
    name: str | None = None
    export: bool = True  # save a verified Hugging Face directory at the end (run.output_dir/hf)
    export_dtype: str = "auto"  # auto (the base checkpoint's; fp32 for built-in sizes) | fp32 | bf16
    export_lora: str = "merge"  # merge (LoRA folded into the weights) | adapter (a PEFT adapter for the base)
    resume: bool = True  # continue from checkpoints/latest when it exists


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    recipe: str | None = None  # the recipe's name, set by the recipe file (informational)


class ConfigError(ValueError):
    """An invalid setting; the message names the key and what to set it to."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_lora(m: ModelConfig, p: PeftConfig) -> None:
    """`peft=lora` sets model.train_decoder=lora (configs/peft/lora.yaml); a recipe's or the command line's
    model.train_decoder wins, so the combinations that mean nothing, or something LoRA cannot do, are refused:
    lora needs peft=lora, full under adapters is not trained (apply_lora freezes the base decoder), and frozen
    with peft=lora needs peft.vision (adapters on the vision tower only) or there is nothing to adapt."""
    _check(m.train_decoder != "lora" or p.kind == "lora", "peft",
           "model.train_decoder=lora needs peft=lora (rank, alpha, targets live there; peft=lora alone sets "
           "model.train_decoder=lora)")
    _check(p.kind != "lora" or m.train_decoder != "full", "model.train_decoder",
           "full (set by you or the recipe) with peft=lora, whose adapters train over a frozen decoder: set "
           "model.train_decoder=lora, or peft=none for a full fine-tune")
    _check(p.kind != "lora" or m.train_decoder == "lora" or p.vision, "model.train_decoder",
           "frozen with peft=lora leaves LoRA nothing to adapt: set model.train_decoder=lora, or peft.vision=true "
           "for LoRA on the vision tower only")
    _check(not p.vision or p.kind == "lora", "peft.vision",
           "needs peft=lora (with model.train_decoder=frozen for LoRA on the vision tower only)")


def validate(cfg: Config) -> None:
    """Check every setting once, up front. Raises ConfigError naming the key to change."""
    m, d, t, o, p = cfg.model, cfg.data, cfg.train, cfg.optim, cfg.peft
    _check(m.pretrained is not None or m.size != "pretrained", "model.pretrained",
           "must be set: model=isaac and the fine-tuning recipes start from a checkpoint (model.pretrained=/ckpt/DIR)")
    _check(m.pretrained is not None or m.size in ("tiny", "small"), "model.size",
           f"{m.size!r} is not a built-in size (tiny, small); set model.pretrained=/path/to/checkpoint instead")
    _check(m.attn_backend in ("auto", "sdpa", "eager", "varlen", "flash_attn"), "model.attn_backend",
           f"{m.attn_backend!r}; choose auto, sdpa, eager, varlen or flash_attn")
    _check(m.train_vision in ("none", "all", "last_n"), "model.train_vision",
           f"{m.train_vision!r}; choose none, all or last_n")
    _check(m.train_vision != "last_n" or m.vision_last_n > 0, "model.vision_last_n",
           "must be > 0 with model.train_vision=last_n")
    _check(m.train_decoder in ("full", "frozen", "lora"), "model.train_decoder",
           f"{m.train_decoder!r}; choose full, frozen or lora")
    _check(p.kind in ("none", "lora"), "peft", f"{p.kind!r}; choose peft=none or peft=lora")
    _check_lora(m, p)
    _check(p.r > 0, "peft.r", "must be > 0")
    _check(p.alpha > 0, "peft.alpha", "must be > 0")
    _check(0 <= p.dropout < 1, "peft.dropout", "must be in [0, 1)")
    any_trainable = m.train_vision != "none" or m.train_projector or m.train_decoder != "frozen" or p.vision
    _check(any_trainable, "model.train_decoder", "nothing would train: unfreeze the decoder, projector or vision")
    _check(d.train_shards is not None or d.demo, "data.train_shards",
           "no training data: set data.train_shards=/path/to/shards (or data.demo=true for the synthetic demo)")
    if d.train_weights is not None:
        n = len(d.train_shards) if isinstance(d.train_shards, (list, tuple)) else 1
        _check(len(d.train_weights) == n and all(0 < w < math.inf for w in d.train_weights), "data.train_weights",
               f"needs {n} positive, finite weight(s), one per data.train_shards entry")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(d.pack_buffer >= 1, "data.pack_buffer", "must be >= 1")
    _check(d.rows_per_batch >= 1, "data.rows_per_batch", "must be >= 1")
    _check(d.max_patches_per_row is None or d.max_patches_per_row >= 1, "data.max_patches_per_row",
           "must be >= 1 or null")
    _check(d.shuffle_block >= 1, "data.shuffle_block", "must be >= 1")
    _check(d.length_policy in ("truncate", "drop"), "data.length_policy",
           f"{d.length_policy!r}; choose truncate or drop")
    _check(0 <= d.max_error_rate <= 1, "data.max_error_rate", "must be within [0, 1]")
    _check(1 <= d.max_image_pixels <= 60_000_000, "data.max_image_pixels",
           f"{d.max_image_pixels:,} must be within [1, 60,000,000] (Isaac's processor refuses larger images)")
    _check(t.max_steps >= 0, "train.max_steps", "must be >= 0 (0: build, checkpoint and export without training)")
    _check(t.seq_len >= 64, "train.seq_len", "must be at least 64 tokens")
    _check(t.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    _check(t.precision in PRECISIONS, "train.precision", f"{t.precision!r}; choose {' or '.join(PRECISIONS)}")
    _check(t.clip_grad_norm is None or 0 < t.clip_grad_norm < math.inf, "train.clip_grad_norm",
           "must be > 0 and finite, or null (measure the norm, never clip)")
    _check(t.log_every >= 1, "train.log_every", "must be >= 1")
    _check(t.eval_every >= 0, "train.eval_every", "must be >= 0 (0: no periodic eval)")
    _check(t.save_every >= 0, "train.save_every", "must be >= 0 (0: save only at the end)")
    _check(t.eval_batches >= 1, "train.eval_batches", "must be >= 1")
    _check(t.eval_samples >= 0, "train.eval_samples", "must be >= 0 (0: eval loss only)")
    _check(t.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1")
    _check(t.eval_max_new_tokens >= 1, "train.eval_max_new_tokens", "must be >= 1")
    _check(t.eval_every == 0 or d.eval_shards is not None or d.demo, "data.eval_shards",
           "train.eval_every > 0 needs data.eval_shards (or data.demo=true)")
    _check(t.keep_last >= 1, "train.keep_last", "must be >= 1")
    _check(t.max_skipped_steps >= 1, "train.max_skipped_steps", "must be >= 1")
    rate = f"in (0, {MAX_LR:g}]: AdamW moves each weight by about this much per step (usual: 1e-5 to 1e-3)"
    _check(0 < o.lr <= MAX_LR, "optim.lr", f"{o.lr!r} must be {rate}")
    _check(o.lr_projector is None or 0 < o.lr_projector <= MAX_LR, "optim.lr_projector",
           f"{o.lr_projector!r} must be {rate}, or null (optim.lr)")
    _check(o.lr_vision is None or 0 < o.lr_vision <= MAX_LR, "optim.lr_vision",
           f"{o.lr_vision!r} must be {rate}, or null (optim.lr / 10)")
    top_lr = max(o.lr, o.lr_projector or 0.0, o.lr_vision or 0.0)
    _check(0 <= o.weight_decay < math.inf, "optim.weight_decay", f"{o.weight_decay!r} must be >= 0 and finite")
    _check(o.weight_decay * top_lr <= 1, "optim.weight_decay",
           f"{o.weight_decay!r} x the largest learning rate {top_lr:g} is above 1: AdamW multiplies each weight by "
           "(1 - lr x weight_decay) every step (usual: 0 to 0.1)")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           "needs two values in [0, 1), e.g. optim.betas=[0.9,0.95]")
    _check(FP32_TINY <= o.eps < 1, "optim.eps",
           f"{o.eps!r} must be in [1.2e-38, 1) (float32 holds a smaller one as 0 and 0/0 makes NaN weights; "
           "usual: 1e-8)")
    _check(o.schedule in SCHEDULES, "optim.schedule", f"{o.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    _check(0 <= o.warmup_steps < max(t.max_steps, 1), "optim.warmup_steps", "must be >= 0 and below train.max_steps")
    _check(0 < o.decay_fraction <= 1, "optim.decay_fraction", "must be in (0, 1]")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    _check(cfg.strategy.name in STRATEGIES, "strategy", f"{cfg.strategy.name!r}; choose one of {', '.join(STRATEGIES)}")
    _check(cfg.strategy.timeout_s > 0, "strategy.timeout_s", "must be > 0 seconds")
    _check(not cfg.strategy.zero or cfg.strategy.name.startswith("zero"), "strategy.zero",
           f"DeepSpeed settings given but strategy={cfg.strategy.name}; use strategy=zero1|zero2|zero3 or drop them")
    if cfg.strategy.name.startswith("zero"):
        problem = check_zero_options(dict(cfg.strategy.zero))
        _check(problem is None, "strategy.zero", str(problem))
    _check(cfg.logging.wandb in ("disabled", "offline", "online"), "logging.wandb",
           "choose disabled, offline or online")
    _check(bool(cfg.run.output_dir), "run.output_dir", "must be set")
    _check(cfg.run.export_dtype in ("auto", "fp32", "bf16"), "run.export_dtype", "choose auto, fp32 or bf16")
    _check(cfg.run.export_lora in ("merge", "adapter"), "run.export_lora", "choose merge or adapter")
    _check_objective(cfg.objective, p, m, cfg.train)
    _check(cfg.run.export_lora != "adapter" or (p.kind == "lora" and m.pretrained is not None), "run.export_lora",
           "adapter needs peft=lora and a base checkpoint (model.pretrained); use run.export_lora=merge")


def _check_objective(ob: ObjectiveConfig, p: PeftConfig, m: ModelConfig, t: TrainConfig | None = None) -> None:
    _check(ob.name in ("sft", "dpo", "grpo"), "objective", f"{ob.name!r}; choose objective=sft, dpo or grpo")
    if ob.name == "grpo":
        _check_grpo(ob, p, m, t)
    if ob.name != "dpo":
        return
    _check(ob.loss_type in ("sigmoid", "ipo", "simpo"), "objective.loss_type",
           f"{ob.loss_type!r}; choose sigmoid, ipo or simpo")
    _check(0 < ob.beta < math.inf, "objective.beta", f"{ob.beta!r} must be > 0 and finite (usual: 0.1; simpo 2.0)")
    _check(0 <= ob.label_smoothing < 0.5, "objective.label_smoothing", "must be in [0, 0.5)")
    _check(ob.loss_type != "ipo" or ob.label_smoothing == 0, "objective.label_smoothing",
           "ipo has no label smoothing: set objective.label_smoothing=0")
    _check(math.isfinite(ob.simpo_gamma) and ob.simpo_gamma >= 0, "objective.simpo_gamma", "must be >= 0 and finite")
    _check(ob.rpo_alpha is None or 0 <= ob.rpo_alpha < math.inf, "objective.rpo_alpha", "must be >= 0, or null")
    _check(ob.reference in ("auto", "adapters", "copy", "none"), "objective.reference",
           f"{ob.reference!r}; choose auto, adapters, copy or none")
    _check(ob.reference != "adapters" or p.kind == "lora", "objective.reference",
           "adapters (the model with its LoRA adapters disabled) needs peft=lora; use auto or copy")
    _check(ob.reference != "adapters" or (not m.train_projector and m.train_vision == "none"), "objective.reference",
           "adapters is the starting model only when nothing but the LoRA adapters trains: set "
           "model.train_projector=false and model.train_vision=none, or objective.reference=copy (auto picks copy)")
    _check((ob.reference == "none") == (ob.loss_type == "simpo") or ob.reference == "auto", "objective.reference",
           "none goes with objective.loss_type=simpo (reference-free) only, and simpo needs none (or auto)")
    _check(not ob.precompute_reference or ob.loss_type != "simpo", "objective.precompute_reference",
           "simpo is reference-free: there is nothing to precompute; set objective.precompute_reference=false")


def _check_grpo(ob: ObjectiveConfig, p: PeftConfig, m: ModelConfig, t: TrainConfig | None) -> None:
    _check(ob.loss_type in GRPO_LOSS_TYPES, "objective.loss_type",
           f"{ob.loss_type!r} is not a grpo loss type; choose {', '.join(GRPO_LOSS_TYPES)} (TRL's names)")
    _check(0 <= ob.beta < math.inf, "objective.beta", f"{ob.beta!r} must be >= 0 and finite (0: no KL term)")
    _check(ob.num_generations >= 1, "objective.num_generations", "must be at least 1 (usual: 4 to 16)")
    _check(ob.prompts_per_batch >= 1, "objective.prompts_per_batch", "must be at least 1")
    _check(ob.max_new_tokens >= 1, "objective.max_new_tokens", "must be at least 1")
    _check(t is None or ob.max_new_tokens < t.seq_len, "objective.max_new_tokens",
           f"{ob.max_new_tokens} leaves no room for a prompt in train.seq_len={t.seq_len if t else '?'}")
    _check(0 <= ob.temperature < math.inf, "objective.temperature", "must be >= 0 (0: greedy) and finite")
    _check(0 < ob.top_p <= 1, "objective.top_p", "must be in (0, 1]")
    _check(0 < ob.epsilon < 1, "objective.epsilon", f"{ob.epsilon!r} must be in (0, 1) (usual: 0.2)")
    _check(ob.epsilon_high is None or 0 < ob.epsilon_high < math.inf, "objective.epsilon_high",
           "must be > 0 (DAPO: 0.28), or null for objective.epsilon")
    _check(ob.scale_rewards in ("group", "batch", "none"), "objective.scale_rewards",
           f"{ob.scale_rewards!r}; choose group, batch or none")
    _check(ob.num_iterations >= 1, "objective.num_iterations", "must be at least 1")
    _check(bool(ob.rewards), "objective.rewards", "needs at least one reward (default: [auto])")
    for spec in ob.rewards:
        _check(spec in BUILTIN_REWARDS or (":" in spec and all(spec.split(":", 1))), "objective.rewards",
               f"{spec!r} is neither a built-in ({', '.join(BUILTIN_REWARDS)}) nor an import path pkg.module:function")
    _check(ob.reward_weights is None or len(ob.reward_weights) == len(ob.rewards), "objective.reward_weights",
           f"{len(ob.reward_weights or [])} weights for {len(ob.rewards)} rewards: give one per reward, or null")
    _check(ob.reward_weights is None or all(math.isfinite(w) for w in ob.reward_weights), "objective.reward_weights",
           "must be finite numbers")
    _check(ob.reference in ("auto", "adapters", "copy", "none"), "objective.reference",
           f"{ob.reference!r}; choose auto, adapters, copy or none")
    _check(ob.reference != "none" or ob.beta == 0, "objective.reference",
           "none has no KL term: set objective.beta=0, or objective.reference=auto")
    _check(ob.reference != "adapters" or p.kind == "lora", "objective.reference",
           "adapters (the model with its LoRA adapters disabled) needs peft=lora; use auto or copy")
    _check(ob.reference != "adapters" or (not m.train_projector and m.train_vision == "none"), "objective.reference",
           "adapters is the starting model only when nothing but the LoRA adapters trains: set "
           "model.train_projector=false and model.train_vision=none, or objective.reference=copy (auto picks copy)")
    _check(ob.rollout_table_rows >= 0, "objective.rollout_table_rows", "must be >= 0")
