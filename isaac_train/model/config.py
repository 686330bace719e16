"""Isaac configuration: reads Perceptron's config.json as published (0.1 flat, 0.2 nested) and writes it back.

Isaac-0.1's `IsaacConfig` subclassed `Qwen3Config`, so its text fields sit flat at the top level of
config.json; Isaac-0.2 nests them under `text_config`. We always hold a nested `text_config`
(a transformers `Qwen3Config`) and remember which layout we came from in `checkpoint_layout`, so that
`save_pretrained` writes config.json and weight names back in that same layout.

Three shapes of config.json load: flat (0.1), nested (0.2), and both (the text fields at the top level and in
`text_config`), which is what we write for 0.2: vLLM's built-in Isaac config (a `Qwen3Config` subclass) reads
the sizes it uses for the LM head, the projector's output and the mRoPE section from the top level and builds the
decoder from `text_config`, and Perceptron's 0.2-era class builds its text config from top-level keys when
present. A config whose two copies disagree is refused, naming the key.
Both layouts write the mRoPE section inside `rope_parameters` too: vLLM decides whether a model uses 3-D
positions from `rope_parameters["mrope_section"]` (top level or text_config) before it builds the model.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import PreTrainedConfig, Qwen3Config, Siglip2VisionConfig

logger = logging.getLogger(__name__)

ISAAC_ROPE_THETA = 1_000_000.0
LAYOUTS = ("0.1", "0.2")
ATTN_BACKENDS = ("auto", "sdpa", "eager", "varlen", "flash_attn")

# Keys of a flat (Isaac-0.1) config.json that belong to the text model. Qwen3Config's own fields, plus the
# legacy RoPE keys that transformers 4.x configs and Perceptron's checkpoints carry.
_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "_rope_parameters", "_rope_scaling")
_QWEN3_FIELDS = frozenset(Qwen3Config.__annotations__)
_TEXT_KEYS = _QWEN3_FIELDS | frozenset(_ROPE_KEYS)
# Keys that stay at the top level even in the flat layout (they describe the whole model too).
_SHARED_KEYS = frozenset({"tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"})
# The text model's own fields, written at the top level (flat in 0.1, beside text_config in 0.2), plus the legacy
# `rope_theta` transformers 4.x (and Perceptron's 0.1 remote code) read.
FLAT_TEXT_KEYS = tuple(sorted(_QWEN3_FIELDS - _SHARED_KEYS)) + ("rope_theta",)


class IsaacVisionConfig(Siglip2VisionConfig):
    """SigLIP2 (NaFlex) vision tower config plus Isaac's pixel shuffle; `model_type` as Perceptron writes it."""

    model_type = "pixel_shuffle_siglip2"
    base_config_key = "vision_config"

    pixel_shuffle_scale_factor: int = 1
    num_patches: int = 256
    vision_use_head: bool = False


def _rope_theta_from(text: dict[str, Any]) -> float | None:
    """Find rope theta wherever a config stores it (top-level key, rope_parameters, legacy scaling dicts)."""
    if text.get("rope_theta") is not None:
        return float(text["rope_theta"])
    for key in ("rope_parameters", "_rope_parameters", "rope_scaling", "_rope_scaling"):
        params = text.get(key)
        if isinstance(params, dict) and params.get("rope_theta") is not None:
            return float(params["rope_theta"])
    return None


def _mrope_section_from(text: dict[str, Any]) -> list[int] | None:
    for key in ("rope_parameters", "rope_scaling", "_rope_parameters", "_rope_scaling"):
        params = text.get(key)
        if isinstance(params, dict) and params.get("mrope_section") is not None:
            return [int(x) for x in params["mrope_section"]]
    return None


def default_mrope_section(head_dim: int) -> list[int]:
    """Isaac's split of the head_dim/2 rotary frequency pairs over (t, h, w): weights 2:1:1."""
    half = head_dim // 2
    return [half // 2, half // 4, half - half // 2 - half // 4]


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1e6 == 1000000, a tuple equals the same list."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _disagreement(top: str, top_value: Any, nested: str, nested_value: Any) -> ValueError:
    return ValueError(
        f"config.json disagrees with itself: top-level {top}={top_value!r} but {nested}={nested_value!r}. vLLM's "
        "Isaac reads the top level for the LM head, projector and mRoPE and builds the decoder from text_config: "
        "make the two equal (or delete one of them)."
    )


def _check_agreement(flat: dict[str, Any], nested: dict[str, Any], mrope_section: Any) -> None:
    """Refuse a config whose top-level text fields (`flat`) and `text_config` (`nested`) disagree.

    RoPE is compared by meaning (theta and mRoPE section, wherever each copy stores them), the rest key by key;
    a key present on one side only is no disagreement."""
    for key in sorted(set(flat) & set(nested) - set(_ROPE_KEYS)):
        if not _same(flat[key], nested[key]):
            raise _disagreement(key, flat[key], f"text_config.{key}", nested[key])
    theta_top, theta_nested = _rope_theta_from(flat), _rope_theta_from(nested)
    if theta_top is not None and theta_nested is not None and theta_top != theta_nested:
        raise _disagreement("rope theta", theta_top, "text_config's rope theta", theta_nested)
    sections = [("mrope_section", mrope_section), ("rope_parameters.mrope_section", _mrope_section_from(flat)),
                ("text_config.rope_parameters.mrope_section", _mrope_section_from(nested))]
    given = [(name, value) for name, value in sections if value is not None]
    for name, value in given[1:]:
        if not _same(given[0][1], value):
            raise _disagreement(given[0][0], given[0][1], name, value)


def _normalise_text_config(text: dict[str, Any]) -> dict[str, Any]:
    """Turn whatever RoPE keys a config has into Qwen3Config's `rope_parameters`, never defaulting silently."""
    text = dict(text)
    theta = _rope_theta_from(text)
    if theta is None:
        logger.warning(
            "Isaac config has no rope theta (looked in rope_theta, rope_parameters, _rope_parameters, "
            "rope_scaling, _rope_scaling); using Isaac's %.0f. Set text_config.rope_theta if that is wrong.",
            ISAAC_ROPE_THETA,
        )
        theta = ISAAC_ROPE_THETA
    params = {}
    for key in ("rope_parameters", "rope_scaling", "_rope_parameters", "_rope_scaling"):
        if isinstance(text.get(key), dict):
            params = {**text[key], **params}
    for key in _ROPE_KEYS:
        text.pop(key, None)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(
            f"Isaac config asks for rope_type={rope_type!r}; only 'default' RoPE is implemented for Isaac's 3-D "
            "mRoPE. Remove rope_scaling / rope_parameters.rope_type from config.json."
        )
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    return text


class IsaacConfig(PreTrainedConfig):
    """Configuration of an Isaac model (Perceptron), weight-compatible with the published checkpoints.

    Accepts both layouts of config.json: Isaac-0.1 (text fields flat at the top level) and Isaac-0.2
    (`text_config`), with or without a top-level copy of the text fields (refused where the copies disagree).
    Extra fields follow Perceptron's names: `video_patch_size` is the processor's patch edge,
    `vision_max_num_patches` / `vision_min_num_patches` its resize budget, `pixel_shuffle_scale` its merge factor.
    Our own additions: `attn_backend` (auto | sdpa | eager | varlen | flash_attn), `image_token_id` (the id the
    processor puts where image features go), and `checkpoint_layout` ("0.1" | "0.2").
    """

    model_type = "isaac"
    sub_configs = {"text_config": Qwen3Config, "vision_config": IsaacVisionConfig}

    def __init__(
        self,
        text_config: dict | Qwen3Config | None = None,
        vision_config: dict | IsaacVisionConfig | None = None,
        video_patch_size: int | None = None,
        vision_max_num_patches: int = 256,
        vision_min_num_patches: int | None = None,
        pixel_shuffle_scale: int = 1,
        max_sequence_length: int = 16384,
        vision_token: str = "<image>",
        vision_rescale_factor: float = 1 / 255,
        vision_mean: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5),
        vision_std: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5),
        image_token_id: int = 151655,
        attn_backend: str = "auto",
        checkpoint_layout: str | None = None,
        tie_word_embeddings: bool | None = None,
        **kwargs: Any,
    ) -> None:
        vision_patch_size = kwargs.pop("vision_patch_size", None)
        flat_text = {k: kwargs.pop(k) for k in list(kwargs) if k in _TEXT_KEYS and k not in _SHARED_KEYS}
        mrope_section = kwargs.pop("mrope_section", None)
        if text_config is None:
            layout = checkpoint_layout or "0.1"
            _check_agreement(flat_text, {}, mrope_section)  # the top-level mrope_section against rope_parameters'
            text_dict = dict(flat_text)
        else:
            layout = checkpoint_layout or "0.2"
            from_json = not isinstance(text_config, PreTrainedConfig)
            text_dict = dict(text_config) if from_json else text_config.to_dict()
            _check_agreement(flat_text, text_dict, mrope_section)
            if from_json and tie_word_embeddings is not None and "tie_word_embeddings" in text_dict \
                    and not _same(tie_word_embeddings, text_dict["tie_word_embeddings"]):
                # A config saved by transformers 4.x can carry PretrainedConfig's default (true) at the top level
                # beside Qwen3Config's (false) in text_config. Isaac stores its lm_head (isaac_spec.md 2.5): untied.
                logger.warning("config.json: top-level tie_word_embeddings=%r but text_config has %r; Isaac's "
                               "lm_head is stored separately, so it stays untied", tie_word_embeddings,
                               text_dict["tie_word_embeddings"])
                tie_word_embeddings = False
            text_dict.update(flat_text)  # equal where both have a key; a key only at the top level joins
        tie_word_embeddings = bool(tie_word_embeddings)
        for key in _SHARED_KEYS - {"tie_word_embeddings"}:
            if key in kwargs and key not in text_dict:
                text_dict[key] = kwargs[key]
        text_dict.pop("model_type", None)
        text_dict.pop("transformers_version", None)
        mrope_section = mrope_section or _mrope_section_from(text_dict)
        text_dict["tie_word_embeddings"] = tie_word_embeddings
        self.text_config = Qwen3Config(**_normalise_text_config(text_dict))

        if vision_config is None:
            vision_config = IsaacVisionConfig()
        elif isinstance(vision_config, dict):
            vision_config = {k: v for k, v in vision_config.items() if k not in ("model_type", "transformers_version")}
            vision_config = IsaacVisionConfig(**vision_config)
        self.vision_config = vision_config

        self.video_patch_size = int(video_patch_size or vision_patch_size or vision_config.patch_size)
        self.vision_max_num_patches = vision_max_num_patches
        self.vision_min_num_patches = vision_min_num_patches
        self.pixel_shuffle_scale = pixel_shuffle_scale
        self.max_sequence_length = max_sequence_length
        self.vision_token = vision_token
        self.vision_rescale_factor = vision_rescale_factor
        self.vision_mean = list(vision_mean)
        self.vision_std = list(vision_std)
        self.image_token_id = image_token_id
        self.attn_backend = attn_backend
        self.checkpoint_layout = layout
        self.mrope_section = list(mrope_section) if mrope_section else default_mrope_section(self.head_dim)
        kwargs.setdefault("bos_token_id", self.text_config.bos_token_id)
        kwargs.setdefault("eos_token_id", self.text_config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.text_config.pad_token_id)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_isaac()

    # The text model's sizes, readable on the top-level config as in Isaac-0.1 (and by generation utilities).
    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def num_attention_heads(self) -> int:
        return self.text_config.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.text_config.head_dim

    @property
    def rope_theta(self) -> float:
        return float(self.text_config.rope_parameters["rope_theta"])

    def get_text_config(self, *args: Any, **kwargs: Any) -> Qwen3Config:
        return self.text_config

    def validate_isaac(self) -> None:
        """Check the cross-field constraints Perceptron's code assumes, naming the field to change."""
        vc = self.vision_config
        if self.pixel_shuffle_scale != vc.pixel_shuffle_scale_factor:
            raise ValueError(
                f"pixel_shuffle_scale={self.pixel_shuffle_scale} must equal "
                f"vision_config.pixel_shuffle_scale_factor={vc.pixel_shuffle_scale_factor}"
            )
        if self.video_patch_size != vc.patch_size:
            raise ValueError(
                f"video_patch_size={self.video_patch_size} must equal vision_config.patch_size={vc.patch_size}"
            )
        side = round(vc.num_patches**0.5)
        if side * side != vc.num_patches:
            raise ValueError(f"vision_config.num_patches={vc.num_patches} must be a perfect square (e.g. 256)")
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2:
            raise ValueError(
                f"mrope_section={self.mrope_section} must have 3 entries summing to head_dim/2={self.head_dim // 2}"
            )
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend={self.attn_backend!r} is not one of {ATTN_BACKENDS}")
        if self.checkpoint_layout not in LAYOUTS:
            raise ValueError(f"checkpoint_layout={self.checkpoint_layout!r} must be one of {LAYOUTS}")
        if vc.hidden_size % vc.num_attention_heads:
            raise ValueError("vision_config.hidden_size must be divisible by vision_config.num_attention_heads")

    def to_dict(self) -> dict[str, Any]:
        """Serialise in the layout we were read from: the text fields flat at the top level for 0.1; for 0.2 in
        `text_config` and, with equal values, at the top level as well (what vLLM's Isaac config reads there).
        Both carry the mRoPE section in `rope_parameters` and a top-level `mrope_section`."""
        out = super().to_dict()
        text = out.pop("text_config")
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": list(self.mrope_section)}
        flat = {key: text[key] for key in FLAT_TEXT_KEYS if key in text}
        # transformers 4.x (and Perceptron's 0.1 remote code) read `rope_theta` directly.
        flat["rope_theta"] = self.rope_theta
        out.update(flat)
        for key in _SHARED_KEYS:
            if key in text:
                out.setdefault(key, text[key])
        if self.checkpoint_layout != "0.1":
            out["text_config"] = {**text, "rope_theta": self.rope_theta}  # for a transformers 4.x Qwen3Config
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        # The diff against a default config would drop fields Perceptron's loaders need; write them all.
        return self.to_dict()
