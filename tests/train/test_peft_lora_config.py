"""`peft=lora` alone means LoRA on the decoder (configs/peft/lora.yaml sets model.train_decoder=lora); a recipe's or
the command line's model.train_decoder wins; combinations LoRA cannot train are refused with one line naming the
key to change."""

from __future__ import annotations

import pytest

from isaac_train import factory
from isaac_train.config.schema import ConfigError
from isaac_train.train.cli import compose_config

NEEDS = ["model.pretrained=/ckpt/Isaac-0.1", "data.train_shards=/data/sft"]  # check_files=False: not read
PROJECTOR = ("vision_embedding.1.", "vision_embedding.3.")


def _trainable(overrides: list[str]) -> set[str]:
    cfg = compose_config(["model=tiny", *overrides])
    model = factory.model_factory(cfg, factory.model_config(cfg))("cpu")
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _part(name: str) -> str:
    if "lora_" in name:
        return "lora"
    if any(p in name for p in PROJECTOR):
        return "projector"
    return "vision" if "vision_embedding.0." in name else "decoder"


def test_peft_lora_alone_trains_lora_on_the_decoder():
    cfg = compose_config(["peft=lora"])
    assert (cfg.peft.kind, cfg.model.train_decoder) == ("lora", "lora")
    names = _trainable(["peft=lora", "model.train_vision=none"])
    assert {_part(n) for n in names} == {"lora", "projector"}
    assert any(".layers." in n and "lora_A" in n and "vision_embedding" not in n for n in names)


def test_peft_lora_keeps_what_the_recipe_unfreezes():
    # demo_cpu (the default recipe) trains the vision tower in full: still so under peft=lora; the decoder's base
    # weights stay frozen
    parts = {_part(n) for n in _trainable(["peft=lora"])}
    assert parts == {"lora", "projector", "vision"}


@pytest.mark.parametrize("overrides", [["peft=lora", "model.train_decoder=lora"],
                                       ["model.train_decoder=lora", "peft=lora"],
                                       ["peft=lora", "peft.r=4", "peft.vision=true"]])
def test_explicit_lora_still_works(overrides):
    cfg = compose_config(overrides)
    assert (cfg.peft.kind, cfg.model.train_decoder) == ("lora", "lora")


def test_vision_only_lora_is_legitimate():
    cfg = compose_config(["peft=lora", "model.train_decoder=frozen", "peft.vision=true"])
    assert (cfg.peft.kind, cfg.model.train_decoder, cfg.peft.vision) == ("lora", "frozen", True)
    names = _trainable(["peft=lora", "model.train_decoder=frozen", "peft.vision=true", "model.train_vision=none",
                        "model.train_projector=false"])
    assert names and all("lora_" in n and "vision_embedding.0." in n for n in names)


def test_the_recipes_keep_their_meaning():
    lora = compose_config(["recipe=sft_lora", *NEEDS], check_files=False)
    assert (lora.peft.kind, lora.model.train_decoder) == ("lora", "lora")
    full = compose_config(["recipe=sft_full", *NEEDS], check_files=False)
    assert (full.peft.kind, full.model.train_decoder) == ("none", "full")
    projector_only = compose_config(["recipe=caption_pretrain", *NEEDS], check_files=False)
    assert (projector_only.peft.kind, projector_only.model.train_decoder) == ("none", "frozen")
    # the command line wins over the recipe: sft_full's decoder as LoRA
    cfg = compose_config(["recipe=sft_full", "peft=lora", "model.train_decoder=lora", *NEEDS], check_files=False)
    assert (cfg.peft.kind, cfg.model.train_decoder) == ("lora", "lora")


@pytest.mark.parametrize(
    ("overrides", "key", "fix"),
    [
        (["model.train_decoder=lora"], "peft", "needs peft=lora"),
        (["peft=lora", "model.train_decoder=full"], "model.train_decoder", "set model.train_decoder=lora"),
        (["recipe=sft_full", "peft=lora", *NEEDS], "model.train_decoder", "set model.train_decoder=lora"),
        (["peft.kind=lora"], "model.train_decoder", "set model.train_decoder=lora"),
        (["peft=lora", "model.train_decoder=frozen"], "model.train_decoder", "peft.vision=true"),
        (["recipe=caption_pretrain", "peft=lora", *NEEDS], "model.train_decoder", "peft.vision=true"),
        (["peft.vision=true"], "peft.vision", "needs peft=lora"),
    ],
)
def test_conflicts_are_refused_in_one_line(overrides, key, fix):
    with pytest.raises(ConfigError) as err:
        compose_config(overrides, check_files=False)
    message = str(err.value)
    assert message.startswith(f"{key}: ") and fix in message and "\n" not in message, message
