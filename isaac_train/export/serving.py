"""Serving an export: what vLLM's built-in Isaac reads from the directory, a check of config.json against it, and
the `vllm serve` command the export summary prints.

Facts read in vLLM's source (github.com/vllm-project/vllm; vLLM is not a dependency and nothing here imports it):

- `vllm/transformers_utils/configs/isaac.py` (commit 532e9822): `IsaacConfig(Qwen3Config)`. Its `Qwen3Config`
  part takes the text fields from the TOP LEVEL of config.json, with Qwen3's defaults where a key is absent
  (hidden_size 4096, vocab_size 151936, head_dim 128, ...). `text_config` is a `Qwen3Config` built from the nested
  dict, or from those same top-level keys when config.json has none. The top-level processing keys, with their
  defaults, are video_patch_size 16, vision_max_num_patches 256, vision_min_num_patches None,
  pixel_shuffle_scale 1, max_sequence_length 16384, vision_token "<image>" and vision_attn_implementation None.
- `vllm/model_executor/models/isaac.py` (commit 0330e893): the projector's output width is the top-level
  `hidden_size`. The mRoPE section is always [head_dim//4, head_dim//8, head_dim//8], taken from the top-level
  `head_dim` and written into text_config's rope_parameters. The language model is a stock `Qwen3ForCausalLM`
  whose lm_head uses the top-level vocab_size, hidden_size and tie_word_embeddings. The vision tower comes from
  `vision_config`. The image processor (`IsaacImageProcessor`) has class defaults patch_size 16,
  max_num_patches 6144, min_num_patches 256 and pixel_shuffle_scale 2. It is built from the processor kwargs
  only, popping `patch_size`, `vision_max_num_patches`, `vision_min_num_patches` and `pixel_shuffle_scale`, and
  processor_config.json is never read. So a model trained with other budgets needs
  `--mm-processor-kwargs '{"vision_max_num_patches": ...}'`, with exactly those names. The `max_num_patches` /
  `min_num_patches` names in its kwargs TypedDict reach `preprocess`, which ignores them. The token bound per
  image that vLLM profiles with comes from config.json: `vision_max_num_patches // pixel_shuffle_scale**2`.
- `vllm/transformers_utils/config.py`, `uses_mrope` (read through the code index; its commit was not pinned):
  a model uses 3-D positions when "mrope_section" is in the rope_parameters of the config or of its text config.
  The model runner reads this before it builds the model, so the key must be in config.json.

tests/export/test_vllm_config.py restates these facts in its own docstring and checks real exports against them.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

# vLLM's IsaacImageProcessor class defaults, under the kwarg names its constructor pops.
VLLM_IMAGE_DEFAULTS: dict[str, int | None] = {
    "patch_size": 16, "vision_max_num_patches": 6144, "vision_min_num_patches": 256, "pixel_shuffle_scale": 2,
}
# Text fields vLLM's Isaac takes from the top level itself (projector output, lm_head, mRoPE section).
VLLM_TOP_LEVEL_USED = ("hidden_size", "vocab_size", "tie_word_embeddings", "head_dim")
# Top-level processing fields vLLM's processing info reads from config.json (for profiling and the image token).
VLLM_PROCESSING_KEYS = ("video_patch_size", "vision_max_num_patches", "vision_min_num_patches", "pixel_shuffle_scale",
                        "max_sequence_length", "vision_token")
ARCHITECTURE = "IsaacForConditionalGeneration"


def processing_fields(processor) -> dict[str, Any]:
    """The processor's settings under config.json's names (what vLLM reads at the top level for profiling)."""
    ip = processor.image_processor
    return {"video_patch_size": ip.patch_size, "vision_max_num_patches": ip.max_num_patches,
            "vision_min_num_patches": ip.min_num_patches, "pixel_shuffle_scale": ip.pixel_shuffle_scale,
            "max_sequence_length": processor.max_sequence_length, "vision_token": processor.vision_token}


def mm_processor_kwargs(processor) -> dict[str, Any]:
    """The `--mm-processor-kwargs` vLLM needs to preprocess images as `processor` does: only the settings that
    differ from vLLM's IsaacImageProcessor defaults (empty when all are equal)."""
    fields = processing_fields(processor)
    ours = {key: fields["video_patch_size" if key == "patch_size" else key] for key in VLLM_IMAGE_DEFAULTS}
    return {key: value for key, value in ours.items() if value != VLLM_IMAGE_DEFAULTS[key]}


def vllm_serve_command(out_dir: str | Path, processor) -> str:
    """`vllm serve DIR`, plus `--mm-processor-kwargs '{...}'` when the processor's budgets differ from vLLM's."""
    cmd = ["vllm", "serve", str(out_dir)]
    kwargs = mm_processor_kwargs(processor)
    if kwargs:
        cmd += ["--mm-processor-kwargs", json.dumps(kwargs)]
    return shlex.join(cmd)


def vllm_mrope_section(head_dim: int) -> list[int]:
    """The mRoPE section vLLM's Isaac uses whatever config.json says."""
    return [head_dim // 4, head_dim // 8, head_dim // 8]


def vllm_config_problems(written: dict[str, Any], config, processor) -> list[str]:
    """What in a written config.json (`written`) vLLM's Isaac would read wrongly, for the model `config` and its
    `processor`; empty when it reads the model's real dimensions everywhere."""
    problems = []
    if written.get("model_type") != "isaac":
        problems.append(f"model_type is {written.get('model_type')!r}, vLLM's Isaac needs 'isaac'")
    if written.get("architectures") != [ARCHITECTURE]:
        problems.append(f"architectures is {written.get('architectures')!r}, vLLM picks its model by "
                        f"[{ARCHITECTURE!r}]")
    text = config.text_config.to_dict()
    nested = written.get("text_config")
    for key in VLLM_TOP_LEVEL_USED + ("intermediate_size", "num_hidden_layers", "num_attention_heads",
                                      "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act"):
        expected = config.tie_word_embeddings if key == "tie_word_embeddings" else text[key]
        if written.get(key) != expected:
            problems.append(f"top-level {key} is {written.get(key)!r}, the model's is {expected!r}")
        if isinstance(nested, dict) and nested.get(key) != expected:
            problems.append(f"text_config.{key} is {nested.get(key)!r}, the model's is {expected!r}")
    for where, holder in (("top-level", written), ("text_config", nested)):
        if not isinstance(holder, dict):
            continue
        rope = holder.get("rope_parameters") or {}
        if rope.get("mrope_section") != list(config.mrope_section):
            problems.append(f"{where} rope_parameters.mrope_section is {rope.get('mrope_section')!r}: vLLM uses 3-D "
                            f"positions only when it is there (the model's is {config.mrope_section})")
        if rope.get("rope_theta") != config.rope_theta:
            problems.append(f"{where} rope_parameters.rope_theta is {rope.get('rope_theta')!r}, the model's is "
                            f"{config.rope_theta}")
    for key, value in processing_fields(processor).items():
        if written.get(key) != value:
            problems.append(f"top-level {key} is {written.get(key)!r}, the processor's is {value!r}")
    return problems


def vllm_notes(config) -> list[str]:
    """Where vLLM would serve this model differently whatever config.json says (printed in the summary)."""
    section = vllm_mrope_section(config.head_dim)
    if section != list(config.mrope_section):
        return [f"vLLM forces mRoPE section {section} (head_dim {config.head_dim}); this model uses "
                f"{config.mrope_section}: image prompts will not match in vLLM"]
    return []
