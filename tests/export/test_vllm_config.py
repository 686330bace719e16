"""Exports serve in vLLM as written: config.json carries what vLLM's built-in Isaac reads, for every layout and
dtype of a real export; the `vllm serve` command in the export summary; configs of every shape load alike.

What vLLM reads, restated from its source (github.com/vllm-project/vllm). vLLM is not installed here and nothing
below is imported from it. The files, at the commits the code index held:
  vllm/transformers_utils/configs/isaac.py    @ 532e9822d6fee16dee75aef8fd567e3a32bcb64c
  vllm/model_executor/models/isaac.py         @ 0330e8932239df2d368f026607d6d330bd28c70e
  vllm/transformers_utils/config.py, uses_mrope (commit not pinned)
(the issue names vLLM 0.33; the index gave commits, not a release tag)

1. `IsaacConfig(Qwen3Config)`: its `Qwen3Config.__init__(**kwargs)` takes the text fields from the TOP LEVEL of
   config.json, with these defaults where a key is absent (transformers' Qwen3Config):
     vocab_size 151936, hidden_size 4096, intermediate_size 22016, num_hidden_layers 32, num_attention_heads 32,
     num_key_value_heads 32, head_dim 128, hidden_act "silu", max_position_embeddings 32768, rms_norm_eps 1e-6,
     tie_word_embeddings False, rope_parameters {"rope_type": "default", "rope_theta": 10000.0}
     (transformers 4.x: rope_theta 10000.0), attention_bias False.
   `text_config` is `Qwen3Config(**config["text_config"])`, or, when there is none, `Qwen3Config(**top-level keys)`.
   Top-level processing keys (default): video_patch_size (16), vision_max_num_patches (256),
   vision_min_num_patches (None), pixel_shuffle_scale (1), max_sequence_length (16384), vision_token ("<image>"),
   vision_attn_implementation (None).
2. The model, `IsaacForConditionalGeneration`:
   - the projector's output width is the top-level hidden_size;
   - mrope_section = [head_dim // 4, head_dim // 8, head_dim // 8] from the TOP-LEVEL head_dim, always, written
     into text_config's rope_parameters (rope_theta is kept from there);
   - the LM is a stock Qwen3ForCausalLM: its lm_head / logits take the top-level vocab_size, hidden_size and
     tie_word_embeddings, and its decoder layers are built from text_config;
   - the vision tower comes from vision_config: hidden_size, intermediate_size, num_hidden_layers,
     num_attention_heads, patch_size, num_channels, num_patches, pixel_shuffle_scale_factor, layer_norm_eps,
     hidden_act;
   - vision_token is tokenized for the image token id.
3. `uses_mrope(config)`: "mrope_section" in the rope_parameters of the config or of its text config. The model
   runner reads it before the model exists, so config.json must carry it, or images get 1-D positions.
4. vLLM picks the model by architectures ["IsaacForConditionalGeneration"] and the config class by model_type
   "isaac". With dtype "auto" it takes config.json's dtype.
5. `IsaacImageProcessor` defaults: patch_size 16, max 6144, min 256 patches, pixel_shuffle_scale 2. It is built
   from the processor kwargs alone, under the names `patch_size`, `vision_max_num_patches`,
   `vision_min_num_patches`, `pixel_shuffle_scale`, and processor_config.json is not read. Other budgets need
   `--mm-processor-kwargs`.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from isaac_train import IsaacConfig
from isaac_train.export import export_checkpoint, export_model, load_trained
from isaac_train.export.serving import mm_processor_kwargs, vllm_notes
from isaac_train.export.writer import fixed_sample, logits_of, written_tensors
from isaac_train.model import IsaacForConditionalGeneration
from isaac_train.model.tiny import tiny_config
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from ..train.conftest import tiny_overrides

# (1) above: the text keys IsaacConfig's Qwen3Config part reads at the top level, with its defaults.
QWEN3_DEFAULTS = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "rope_theta": 10000.0,
    "attention_bias": False,
}
# (1) above: the top-level processing keys vLLM's processing info reads, with its defaults.
PROCESSING_DEFAULTS = {"video_patch_size": 16, "vision_max_num_patches": 256, "vision_min_num_patches": None,
                       "pixel_shuffle_scale": 1, "max_sequence_length": 16384, "vision_token": "<image>"}
# (2) above: the vision_config keys the vision tower is built from.
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
               "num_channels", "num_patches", "pixel_shuffle_scale_factor", "layer_norm_eps", "hidden_act")
# (5) above
VLLM_PROCESSOR = {"patch_size": 16, "vision_max_num_patches": 6144, "vision_min_num_patches": 256,
                  "pixel_shuffle_scale": 2}
LAYOUTS, DTYPES = ("0.1", "0.2"), ("fp32", "bf16")


def vllm_reads(cfg: dict) -> tuple[dict, dict]:
    """(top level, text config) as vLLM's IsaacConfig would hold them, defaults where config.json is silent."""
    top = {key: cfg.get(key, default) for key, default in QWEN3_DEFAULTS.items()}
    source = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    text = {key: source.get(key, default) for key, default in QWEN3_DEFAULTS.items()}
    return top, text


def real_dims(out: Path) -> dict:
    """The text model's dimensions as the written tensors have them (either layout)."""
    tensors = written_tensors(out)
    prefix = "model.text_model." if any(k.startswith("model.text_model.") for k in tensors) else "model."
    embed = tensors[prefix + "embed_tokens.weight"]
    head_dim = tensors[prefix + "layers.0.self_attn.q_norm.weight"].shape[0]
    layers = {k.removeprefix(prefix + "layers.").split(".")[0] for k in tensors if k.startswith(prefix + "layers.")}
    return {
        "vocab_size": embed.shape[0], "hidden_size": embed.shape[1], "head_dim": head_dim,
        "intermediate_size": tensors[prefix + "layers.0.mlp.up_proj.weight"].shape[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": tensors[prefix + "layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
        "num_key_value_heads": tensors[prefix + "layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "projector_out": tensors["model.vision_embedding.3.weight"].shape[0],
        "vision_hidden": tensors["model.vision_embedding.0.embeddings.patch_embedding.weight"].shape[0],
        "num_patches": tensors["model.vision_embedding.0.embeddings.position_embedding.weight"].shape[0],
    }


@pytest.fixture(scope="module")
def run_dir(train_shards, base_dir, tmp_path_factory) -> Path:
    """A tiny run trained 3 steps from the Perceptron-shaped (0.2, bf16) base."""
    out = tmp_path_factory.mktemp("vllm") / "run"
    train(compose_config(tiny_overrides(train_shards, out, f"model.pretrained={base_dir}", "train.max_steps=3")))
    return out


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory) -> dict:
    """(layout, dtype) -> (export directory, summary), each a real export_checkpoint of the run."""
    root = tmp_path_factory.mktemp("vllm_exports")
    return {(layout, dtype): (root / f"{layout}-{dtype}", export_checkpoint(
        run_dir, root / f"{layout}-{dtype}", layout=layout, dtype=dtype, log=lambda *_: None))
        for layout in LAYOUTS for dtype in DTYPES}


@pytest.fixture(scope="module")
def trained(run_dir):
    return load_trained(run_dir)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_config_json_carries_what_vllm_reads(exports, trained, layout, dtype):
    out, _ = exports[(layout, dtype)]
    cfg = json.loads((out / "config.json").read_text())
    dims, model_cfg = real_dims(out), trained.model.config
    assert cfg["model_type"] == "isaac" and cfg["architectures"] == ["IsaacForConditionalGeneration"]
    assert cfg["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    assert ("text_config" in cfg) == (layout == "0.2")

    for key in QWEN3_DEFAULTS:
        assert key in cfg, f"top-level {key} missing: vLLM would take Qwen3's default {QWEN3_DEFAULTS[key]!r}"
    top, text = vllm_reads(cfg)
    for view in (top, text):
        for key in ("vocab_size", "hidden_size", "head_dim", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "tie_word_embeddings"):
            assert view[key] == dims[key], (key, view[key], dims[key])
        assert view["max_position_embeddings"] == model_cfg.text_config.max_position_embeddings
        assert view["rms_norm_eps"] == model_cfg.text_config.rms_norm_eps
        assert view["hidden_act"] == model_cfg.text_config.hidden_act
        assert view["rope_theta"] == view["rope_parameters"]["rope_theta"] == model_cfg.rope_theta == 1e6
        # (3): vLLM uses 3-D positions only with the section in rope_parameters; (2): it forces this section
        hd = view["head_dim"]
        assert view["rope_parameters"]["mrope_section"] == [hd // 4, hd // 8, hd // 8] == model_cfg.mrope_section
    assert top == text, "0.2: the top level equals text_config; 0.1: both are the top level"
    assert dims["projector_out"] == top["hidden_size"]

    for key, value in cfg["vision_config"].items():
        assert key not in VISION_KEYS or value == model_cfg.vision_config.to_dict()[key], key
    assert all(key in cfg["vision_config"] for key in VISION_KEYS)
    assert cfg["vision_config"]["hidden_size"] == dims["vision_hidden"]
    assert cfg["vision_config"]["num_patches"] == dims["num_patches"]

    processor_config = json.loads((out / "processor_config.json").read_text())
    for key in PROCESSING_DEFAULTS:
        assert key in cfg and cfg[key] == processor_config[key], key


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_export_reloads_to_the_trained_logits(exports, trained, layout, dtype):
    out, summary = exports[(layout, dtype)]
    assert summary.layout == layout and summary.max_logit_diff == 0.0
    sample = fixed_sample(trained.processor)
    reference = trained.model if dtype == "fp32" else copy.deepcopy(trained.model).to(torch.bfloat16)
    reloaded = AutoModelForImageTextToText.from_pretrained(out, dtype=reference.dtype)
    assert isinstance(reloaded, IsaacForConditionalGeneration)
    assert reloaded.config.checkpoint_layout == layout
    assert torch.equal(logits_of(reloaded, sample), logits_of(reference, sample))


def test_summary_prints_the_vllm_command_with_the_processor_kwargs(exports):
    out, summary = exports[("0.2", "bf16")]
    text = str(summary)
    assert f"vllm serve {out}" in text and "not served in vLLM here" in text
    # the tiny processor: max 256 / min 16 patches, where vLLM's Isaac defaults to 6144 / 256
    argv = shlex.split(summary.vllm_command)
    assert argv[:3] == ["vllm", "serve", str(out)] and argv[3] == "--mm-processor-kwargs"
    assert json.loads(argv[4]) == {"vision_max_num_patches": 256, "vision_min_num_patches": 16}


def test_no_processor_kwargs_when_the_budgets_are_vllms(tiny_tokenizer, tmp_path):
    config = tiny_config(checkpoint_layout="0.2")
    torch.manual_seed(0)
    model = IsaacForConditionalGeneration(config)
    settings = {"video_patch_size": 16, "vision_max_num_patches": 6144, "vision_min_num_patches": 256,
                "pixel_shuffle_scale": 2, "max_sequence_length": 4096}
    processor = IsaacProcessor.from_settings(tiny_tokenizer, settings)
    lines = []
    summary = export_model(model, processor, tmp_path / "out", dtype="fp32", log=lines.append)
    assert summary.vllm_command == shlex.join(["vllm", "serve", str(tmp_path / "out")])
    assert "--mm-processor-kwargs" not in str(summary) and lines[-1] == str(summary)
    # config.json's processing fields follow the processor (vLLM profiles images with them), not the model's 256
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["vision_max_num_patches"] == 6144 and cfg["vision_min_num_patches"] == 256
    assert model.config.vision_max_num_patches == 256, "the caller's model is untouched"


@pytest.mark.parametrize(("settings", "expected"), [
    ({"vision_max_num_patches": 6144, "vision_min_num_patches": 256, "pixel_shuffle_scale": 2}, {}),
    ({"vision_max_num_patches": 1024, "vision_min_num_patches": 256, "pixel_shuffle_scale": 2},
     {"vision_max_num_patches": 1024}),
    ({"vision_max_num_patches": 6144, "vision_min_num_patches": None, "pixel_shuffle_scale": 2},
     {"vision_min_num_patches": None}),
    ({"vision_max_num_patches": 6144, "vision_min_num_patches": 256, "pixel_shuffle_scale": 1},
     {"pixel_shuffle_scale": 1}),
])
def test_processor_kwargs_are_the_settings_that_differ_from_vllms(tiny_tokenizer, settings, expected):
    processor = IsaacProcessor.from_settings(tiny_tokenizer, {"video_patch_size": 16, **settings})
    assert mm_processor_kwargs(processor) == expected
    assert set(expected) <= set(VLLM_PROCESSOR), "only names vLLM's IsaacImageProcessor takes"


def test_a_section_vllm_would_override_is_warned_about():
    assert vllm_notes(tiny_config()) == []
    (note,) = vllm_notes(tiny_config(mrope_section=[2, 4, 2]))
    assert "[4, 2, 2]" in note and "[2, 4, 2]" in note


# ---- configs of every shape ----------------------------------------------------------------------------------

VISION = {"model_type": "pixel_shuffle_siglip2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "patch_size": 16, "num_patches": 256, "pixel_shuffle_scale_factor": 2}
TEXT = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2]}}
TOP = {"model_type": "isaac", "video_patch_size": 16, "vision_max_num_patches": 256, "pixel_shuffle_scale": 2,
       "vision_config": VISION}
SHAPES = {"flat": {**TOP, **TEXT}, "nested": {**TOP, "text_config": TEXT},
          "both": {**TOP, **TEXT, "rope_theta": 1e6, "text_config": {**TEXT, "model_type": "qwen3"}}}


def _load(tmp_path: Path, cfg: dict) -> IsaacConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return IsaacConfig.from_pretrained(tmp_path)


def test_flat_nested_and_both_load_to_the_same_config(tmp_path):
    loaded = {name: _load(tmp_path / name, cfg) for name, cfg in SHAPES.items()}
    assert [c.checkpoint_layout for c in loaded.values()] == ["0.1", "0.2", "0.2"]
    for config in loaded.values():
        config.checkpoint_layout = "0.2"
    dicts = [c.to_dict() for c in loaded.values()]
    assert dicts[0] == dicts[1] == dicts[2]
    assert loaded["flat"].hidden_size == 64 and loaded["both"].mrope_section == [4, 2, 2]


def test_an_export_of_either_layout_loads_back_to_the_same_config(exports):
    configs = [IsaacConfig.from_pretrained(exports[(layout, "fp32")][0]) for layout in LAYOUTS]
    assert [c.checkpoint_layout for c in configs] == list(LAYOUTS)
    configs[0].checkpoint_layout = "0.2"
    assert configs[0].to_dict() == configs[1].to_dict()


@pytest.mark.parametrize(("top", "nested", "named"), [
    ({"hidden_size": 128}, {}, "hidden_size=128"),
    ({}, {"vocab_size": 1024}, "text_config.vocab_size=1024"),
    ({"head_dim": 32}, {}, "head_dim"),
    ({"rope_theta": 1e4}, {}, "rope theta"),
    ({"mrope_section": [2, 4, 2]}, {}, "mrope_section"),
])
def test_disagreeing_top_level_and_text_config_are_refused(tmp_path, top, nested, named):
    cfg = copy.deepcopy(SHAPES["both"])
    cfg.update(top)
    cfg["text_config"].update(nested)
    with pytest.raises(ValueError, match="disagrees") as err:
        _load(tmp_path, cfg)
    message = str(err.value)
    assert "\n" not in message and named in message and "make the two equal" in message


def test_a_transformers_4_tie_default_beside_text_configs_stays_untied(tmp_path, caplog):
    """transformers 4.x wrote PretrainedConfig's tie_word_embeddings=true at the top level beside Qwen3Config's
    false in text_config; Isaac stores its lm_head, so the model loads untied (with a warning), not refused."""
    cfg = copy.deepcopy(SHAPES["both"])
    cfg["tie_word_embeddings"], cfg["text_config"]["tie_word_embeddings"] = True, False
    assert _load(tmp_path, cfg).tie_word_embeddings is False
    assert "stays untied" in caplog.text


def test_a_flat_config_with_two_mrope_sections_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mrope_section"):
        _load(tmp_path, {**SHAPES["flat"], "mrope_section": [2, 4, 2]})
