"""A model and its processor from a Config: the one factory that the trainer (and through it an objective's
reference model), the exporter and isaac-eval (both through isaac_train/trained.py) share, in a room below all of
them (tests/unit/test_layers.py).

    config = model_config(cfg)                       # IsaacConfig: model.pretrained's, or a built-in size
    processor = build_processor(cfg, config)
    make = model_factory(cfg, config)                # make(device) -> the model to train (what trains set, LoRA)
    reference = frozen_factory(cfg, config)          # make(device) -> the same start, frozen, without LoRA
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config.schema import Config
from .model import IsaacConfig, IsaacForConditionalGeneration, isaac_of
from .model.tiny import small_config, tiny_config
from .precision import frozen_dtype, hold_frozen_in_bf16
from .processing.processor import IsaacProcessor
from .processing.tiny_tokenizer import build_tiny_tokenizer


def build_processor(cfg: Config, model_config: IsaacConfig) -> IsaacProcessor:
    """The processor of `data.processor`, else of `model.pretrained`, else the tiny tokenizer (built-in sizes)."""
    source = cfg.data.processor or cfg.model.pretrained
    if source:
        return IsaacProcessor.from_pretrained(source)
    return IsaacProcessor.from_settings(build_tiny_tokenizer(), model_config)


def model_config(cfg: Config) -> IsaacConfig:
    if cfg.model.pretrained:
        return IsaacConfig.from_pretrained(cfg.model.pretrained)
    return {"tiny": tiny_config, "small": small_config}[cfg.model.size]()


def build_model(cfg: Config, config: IsaacConfig) -> IsaacForConditionalGeneration:
    """fp32 master weights: loaded from `model.pretrained`, or initialised from `train.seed`."""
    if cfg.model.pretrained:
        model = IsaacForConditionalGeneration.from_pretrained(cfg.model.pretrained, dtype=torch.float32)
    else:
        torch.manual_seed(cfg.train.seed)
        model = IsaacForConditionalGeneration(config)
    model.config.attn_backend = cfg.model.attn_backend
    return model


def model_factory(cfg: Config, config: IsaacConfig):
    """`make(device)` -> the model to train, with what trains set, LoRA applied, activation checkpointing and
    compile switched on; with `train.precision=bf16` its frozen weights are held in bf16 (`hold_frozen_in_bf16`).
    `device="meta"` or `weights=False` build the structure only (no weights read, nothing initialised): sharded
    strategies fill it from rank 0 or a checkpoint. `weights=False` (DeepSpeed zero.Init) leaves every weight in
    fp32: ZeroStrategy casts the frozen partitions itself."""

    def make(device: torch.device | str, weights: bool = True) -> nn.Module:
        if str(device) == "meta":
            with torch.device("meta"):
                model = IsaacForConditionalGeneration(config)
            model.config.attn_backend = cfg.model.attn_backend
        elif not weights:  # structure only, not initialised (DeepSpeed zero.Init fills it from rank 0)
            from transformers.initialization import no_init_weights

            with no_init_weights():
                model = IsaacForConditionalGeneration(config)
            model.config.attn_backend = cfg.model.attn_backend
        else:
            model = build_model(cfg, config)
        set_trainable(model, cfg)
        if cfg.peft.kind == "lora":
            model = apply_lora(model, cfg)
        if weights and frozen_dtype(cfg.train.precision) == torch.bfloat16:
            hold_frozen_in_bf16(model)  # before the move to the device: the GPU never holds them in fp32
        isaac = isaac_of(model)
        if cfg.model.activation_checkpointing:
            isaac.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if cfg.model.compile:
            compile_blocks(isaac)
        if str(device) != "meta":
            model.to(device)
        return model

    return make


def frozen_factory(cfg: Config, config: IsaacConfig):
    """`make(device)` -> a model that never trains (a preference objective's reference copy): the starting weights
    (model.pretrained or the seeded initialisation, as the policy starts), without LoRA adapters (peft is not
    applied to it), every parameter frozen, held in bf16 under train.precision=bf16. `device="meta"` /
    `weights=False` as in model_factory (the sharded strategies)."""
    policy = model_factory(dataclasses.replace(cfg, peft=dataclasses.replace(cfg.peft, kind="none")), config)

    def make(device: torch.device | str, weights: bool = True) -> nn.Module:
        model = policy(device if str(device) == "meta" or not weights else "cpu", weights)
        for p in model.parameters():
            p.requires_grad_(False)
        if weights and str(device) != "meta":
            if frozen_dtype(cfg.train.precision) == torch.bfloat16:
                hold_frozen_in_bf16(model)
            model.to(device)
        return model

    return make


def vision_tower(model: nn.Module) -> nn.Module:
    return isaac_of(model).model.vision_embedding[0]


def projector(model: nn.Module) -> list[nn.Module]:
    emb = isaac_of(model).model.vision_embedding
    return [emb[1], emb[3]]


def set_trainable(model: nn.Module, cfg: Config, decoder: str | None = None) -> None:
    """requires_grad per part: vision tower none/all/last N blocks, projector, decoder full/frozen (`decoder`
    overrides model.train_decoder; LoRA calls this with "frozen" for the base weights)."""
    m = cfg.model
    decoder = decoder or m.train_decoder
    isaac = isaac_of(model)
    for p in isaac.parameters():
        p.requires_grad_(decoder == "full")
    if decoder == "full" and not m.train_embeddings:
        isaac.model.embed_tokens.weight.requires_grad_(False)
        isaac.lm_head.weight.requires_grad_(False)
    tower = vision_tower(isaac)
    for p in tower.parameters():
        p.requires_grad_(m.train_vision == "all")
    if m.train_vision == "last_n":
        blocks = tower.encoder.layers
        if m.vision_last_n > len(blocks):
            raise ValueError(f"model.vision_last_n={m.vision_last_n} but the vision tower has {len(blocks)} blocks")
        for block in list(blocks)[-m.vision_last_n :]:
            for p in block.parameters():
                p.requires_grad_(True)
        for p in tower.post_layernorm.parameters():
            p.requires_grad_(True)
    for module in projector(isaac):
        for p in module.parameters():
            p.requires_grad_(m.train_projector)


def apply_lora(model: IsaacForConditionalGeneration, cfg: Config) -> nn.Module:
    """Wrap with peft LoRA on the decoder's (and, with peft.vision, the vision tower's) target projections.

    peft freezes everything else; `set_trainable` runs again afterwards for projector / vision choices."""
    from peft import LoraConfig, get_peft_model

    p = cfg.peft
    scopes = []
    if cfg.model.train_decoder == "lora":
        scopes.append(r"model\.layers\.\d+\.(self_attn|mlp)\.")
    if p.vision:
        scopes.append(r"model\.vision_embedding\.0\.encoder\.layers\.\d+\.(self_attn|mlp)\.")
    names = "|".join(p.target_modules + (["out_proj", "fc1", "fc2"] if p.vision else []))
    pattern = rf".*({'|'.join(scopes)})({names})$"
    lora = LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=pattern, bias="none")
    wrapped = get_peft_model(model, lora)
    set_trainable(wrapped, cfg, decoder="frozen")  # base decoder weights stay frozen under LoRA
    for name, param in wrapped.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
    return wrapped


def compile_blocks(isaac: IsaacForConditionalGeneration) -> None:
    """torch.compile every decoder layer and vision block in place (shapes vary with packing: dynamic)."""
    for block in [*isaac.model.layers, *isaac.model.vision_embedding[0].encoder.layers]:
        block.compile(dynamic=True)
