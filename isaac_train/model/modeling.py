"""Isaac model: Qwen3 decoder with 3-D mRoPE over packed text/image rows, SigLIP2 vision embedding.

Inputs (every tensor optional but one of input_ids / inputs_embeds / tensor_stream):
- `input_ids` (B, T): text ids, `config.image_token_id` wherever an image token goes.
- `pixel_values` (sum_i H_i*W_i, 3*p*p): all images' patches, in the order their placeholders appear.
- `image_grid_hw` (n_img, 2): each image's real patch grid (H_i, W_i) (its decoder tokens: H_i*W_i / s^2).
- `position_ids` (B, T, 3): (t, h, w) positions; derived from the ids and grids when absent.
- `cu_seqlens` (n_docs + 1,): document boundaries over the flattened B*T tokens of packed rows; attention
  never crosses them and positions restart at each. Padding at a row's tail must be a segment of its own.
- `attention_mask` (B, T): 1 for real tokens, 0 for padding (batched inference).
- `tensor_stream`: a TensorStream, embedded directly (text and vision) with positions taken from it.
- `packed`: a PackedLayout (packed.py), the host's copy of a packed batch's structure (boundaries, padding,
  image grids, label positions); with it a training forward reads nothing back from the device. The packer
  makes it; `cu_seqlens` and `image_grid_hw` are then taken from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm

from ..processing.tensor_stream import Modality, TensorStream
from .attention import ATTN_FUNCTION_NAME, AttentionSpec, padded_causal_mask, resolve_backend
from .config import IsaacConfig
from .layouts import LOAD_KEY_MAPPING, to_layout
from .loss import group_sums, lm_loss_at, lm_loss_sum, lm_token_logps, shift_labels
from .packed import PackedLayout, check_segments
from .rope import IsaacRotaryEmbedding, mrope_positions
from .vision import IsaacVisionEmbedding


@dataclass
class IsaacModelOutput(BaseModelOutputWithPast):
    """Decoder output plus what generation and the loss need: per-row rope delta and document starts."""

    rope_deltas: torch.Tensor | None = None
    segment_starts: torch.Tensor | None = None


@dataclass
class IsaacCausalLMOutput(CausalLMOutputWithPast):
    """`loss` is loss_sum / (num_items_in_batch or num_label_tokens); the parts are returned for global means."""

    loss_sum: torch.Tensor | None = None
    num_label_tokens: torch.Tensor | None = None
    rope_deltas: torch.Tensor | None = None
    group_logps: torch.Tensor | None = None  # (n_groups,) summed log-probs per labelled group (PackedLayout)
    token_logps: torch.Tensor | None = None  # (n_targets,) log-prob of each label target of a grouped layout


class IsaacPreTrainedModel(PreTrainedModel):
    """Loads either Perceptron layout and saves in `config.checkpoint_layout` (see layouts.py)."""

    config_class = IsaacConfig
    config: IsaacConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen3DecoderLayer", "Siglip2EncoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\."]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):  # noqa: ANN002, ANN003, ANN206
        kwargs.setdefault("key_mapping", LOAD_KEY_MAPPING)
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
        """Write weights named as in `config.checkpoint_layout` ("0.1": model.layers.*, "0.2": model.text_model.*)."""
        if state_dict is None:
            state_dict = self.state_dict()
        state_dict = to_layout(state_dict, self.config.checkpoint_layout, prefixed=self.base_model is not self)
        kwargs["save_original_format"] = False  # our names are final; transformers must not rename them again
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)


def host_layout(
    batch: int,
    length: int,
    cu_seqlens: torch.Tensor | list[int] | None,
    attention_mask: torch.Tensor | None,
) -> PackedLayout:
    """The segments of a batch on the host: the documents of packed rows (`cu_seqlens`), the padding and real runs
    of padded rows (`attention_mask`), or one segment per row. Reads each given tensor once (a device read when
    it lives on the device; the packer's PackedLayout avoids even that)."""
    if cu_seqlens is not None:
        cu = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else list(cu_seqlens)
        check_segments(cu, batch, length)
        return PackedLayout(cu)
    if attention_mask is None or attention_mask.shape[1] != length:
        return PackedLayout(list(range(0, batch * length + 1, length)))
    keep = attention_mask.to("cpu", torch.bool).reshape(-1)
    starts = torch.ones_like(keep)
    starts[1:] = keep[1:] != keep[:-1]
    starts[::length] = True
    cu = [*starts.numpy().nonzero()[0].tolist(), batch * length]
    padding = frozenset(i for i, lo in enumerate(cu[:-1]) if not keep[lo])
    return PackedLayout(cu, padding)


class IsaacModel(IsaacPreTrainedModel):
    """Isaac without the LM head. Module names follow Isaac-0.1's checkpoint layout (`embed_tokens`, `layers`,
    `norm`, `vision_embedding`); Isaac-0.2's `text_model.` prefix is mapped on load and save."""

    def __init__(self, config: IsaacConfig) -> None:
        super().__init__(config)
        text = config.text_config.__class__(**config.text_config.to_dict())
        text._attn_implementation = ATTN_FUNCTION_NAME  # private copy: our attention function, whatever HF sets
        self.text_config = text
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size, text.pad_token_id)
        self.layers = nn.ModuleList([Qwen3DecoderLayer(text, i) for i in range(text.num_hidden_layers)])
        self.norm = Qwen3RMSNorm(text.hidden_size, eps=text.rms_norm_eps)
        self.rotary_emb = IsaacRotaryEmbedding(text.head_dim, config.rope_theta, config.mrope_section)
        self.vision_embedding = IsaacVisionEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @property
    def merge(self) -> int:
        return self.config.vision_config.pixel_shuffle_scale_factor

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
        image_grid_hw: torch.Tensor | list[tuple[int, int]] | None, keep_vision_graph: bool = False,
        image_tokens: int | None = None, image_order: list[int] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with each image's projected features written over its placeholder tokens.

        keep_vision_graph: with no image, still run the vision tower on one blank merge x merge image and add 0x its
        features, so that every process runs the same modules and every vision parameter gets a (zero) gradient.
        image_tokens: the number of placeholders in input_ids when the host knows it (a PackedLayout); else it is
        counted on the device.
        image_order: the encoded image that fills each placeholder image, in order (PackedLayout.image_order: a
        preference pair's documents share their images); None: one placeholder image per encoded image."""
        image_mask = input_ids == self.config.image_token_id
        embeds = self.embed_tokens(input_ids.masked_fill(image_mask, 0))
        if pixel_values is None or pixel_values.shape[0] == 0:
            placeholders = image_tokens if image_tokens is not None else int(image_mask.sum())
            if placeholders:
                raise ValueError(
                    f"input_ids hold {placeholders} image tokens (id {self.config.image_token_id}) but no "
                    "pixel_values were given"
                )
            if keep_vision_graph:
                embeds = embeds + 0.0 * self.blank_image_features(embeds.device).to(embeds.dtype).sum()
            return embeds
        if image_grid_hw is None:
            raise ValueError("pixel_values need image_grid_hw (the (H, W) patch grid of each image)")
        features = self.vision_embedding(pixel_values, image_grid_hw).to(embeds.dtype)
        if image_order is not None:
            grids = image_grid_hw.tolist() if isinstance(image_grid_hw, torch.Tensor) else image_grid_hw
            per_image = features.split([(h // self.merge) * (w // self.merge) for h, w in grids])
            features = torch.cat([per_image[i] for i in image_order])
        placeholders = image_tokens if image_tokens is not None else int(image_mask.sum())
        if features.shape[0] != placeholders:
            raise ValueError(
                f"the images give {features.shape[0]} decoder tokens but input_ids hold {placeholders} image "
                f"tokens (id {self.config.image_token_id}); the processor must put (H/{self.merge})*(W/{self.merge}) "
                "placeholders per image"
            )
        return embeds.masked_scatter(image_mask[..., None], features)

    def blank_image_features(self, device: torch.device) -> torch.Tensor:
        """Vision features of one all-zero image of merge x merge patches (one decoder token). Sizes come from the
        config, not from the weights: sharded strategies must not see parameters touched outside a forward."""
        vc = self.config.vision_config
        patches = torch.zeros(self.merge * self.merge, vc.num_channels * vc.patch_size**2, device=device)
        return self.vision_embedding(patches, [(self.merge, self.merge)])

    def embed_stream(self, tensor_stream: TensorStream, keep_vision_graph: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a TensorStream (text and images) and return (inputs_embeds, position_ids) for it.

        The vision tower encodes every image whole; an image cut by left truncation contributes only the live
        part of its features, with its original (h, w) positions.
        """
        device = self.embed_tokens.weight.device
        input_ids = tensor_stream.input_ids(self.config.image_token_id).to(device)
        image_mask = tensor_stream.modality_mask().to(device) == int(Modality.image)
        embeds = self.embed_tokens(input_ids.masked_fill(image_mask, 0))
        patches, grids = tensor_stream.image_patches()
        if patches is not None:
            features = self.vision_embedding(patches.to(device), grids).to(embeds.dtype)
            counts = ((grids[:, 0] // self.merge) * (grids[:, 1] // self.merge)).tolist()
            slices = tensor_stream.image_token_slices()
            live = [f[lo:hi] for f, (lo, hi) in zip(features.split(counts), slices, strict=True)]
            embeds = embeds.masked_scatter(image_mask[..., None], torch.cat(live))
        elif keep_vision_graph:  # no image: the vision tower still runs (see `embed`)
            embeds = embeds + 0.0 * self.blank_image_features(device).to(embeds.dtype).sum()
        return embeds, tensor_stream.position_ids().to(device)

    def compute_position_ids(
        self, input_ids: torch.Tensor, image_grid_hw: torch.Tensor | None, segment_starts: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, 3) positions from placeholder ids and image grids, restarting at every segment start."""
        b, t = input_ids.shape
        image_mask = (input_ids == self.config.image_token_id).reshape(-1)
        if image_grid_hw is None:
            grids = torch.zeros(0, 2, dtype=torch.long, device=input_ids.device)
        else:
            grids = image_grid_hw.to(input_ids.device) // self.merge
        return mrope_positions(image_mask, grids, segment_starts.reshape(-1)).view(b, t, 3)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_hw: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        tensor_stream: TensorStream | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        rope_deltas: torch.Tensor | None = None,
        keep_vision_graph: bool = False,
        packed: PackedLayout | None = None,
        **_: object,
    ) -> IsaacModelOutput:
        """Run the decoder; see the module docstring for the inputs."""
        if tensor_stream is not None:
            inputs_embeds, stream_positions = self.embed_stream(tensor_stream, keep_vision_graph)
            position_ids = stream_positions if position_ids is None else position_ids
            if cu_seqlens is None and tensor_stream.doc_starts is not None:
                cu_seqlens = tensor_stream.cu_seqlens().to(inputs_embeds.device)
        elif inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids, inputs_embeds or tensor_stream")
            grids = packed.image_grids if packed is not None else image_grid_hw
            image_tokens = packed.image_tokens if packed is not None else None
            order = packed.image_order if packed is not None else None
            inputs_embeds = self.embed(input_ids, pixel_values, grids, keep_vision_graph, image_tokens, order)
        b, t = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if use_cache and cache is None:
            cache = DynamicCache(config=self.text_config)
        past = cache.get_seq_length() if cache is not None else 0
        if (cu_seqlens is not None or packed is not None) and past:
            raise ValueError("cu_seqlens (packed documents) cannot be combined with a KV cache")
        if packed is not None:
            check_segments(packed.cu_seqlens, b, t)
            layout = packed
        else:
            layout = host_layout(b, t, cu_seqlens, attention_mask if past == 0 else None)
        starts = layout.segment_starts(b, t).to(device, non_blocking=True)

        if position_ids is None:
            if past == 0:
                if input_ids is None:
                    raise ValueError("position_ids are needed when the model is called with inputs_embeds")
                position_ids = self.compute_position_ids(input_ids, image_grid_hw, starts)
            else:
                if rope_deltas is None:
                    rope_deltas = torch.zeros(b, dtype=torch.long, device=device)
                step = torch.arange(past, past + t, device=device)[None] + rope_deltas.to(device)[:, None]
                position_ids = step[..., None].expand(b, t, 3)
        if past == 0:
            # Decode positions continue from the largest prefill position on any axis (isaac_spec.md §7.4);
            # padding tokens do not count.
            real = position_ids if attention_mask is None else position_ids * attention_mask[..., None].to(device)
            rope_deltas = real.amax(dim=(1, 2)) + 1 - t

        backend = resolve_backend(self.config.attn_backend, device, inputs_embeds.dtype)
        needs_dense = past > 0 or (cache is not None and attention_mask is not None)
        if needs_dense:
            # Decoding against a KV cache goes through SDPA with an explicit mask (a one-token query is cheap).
            spec = AttentionSpec(
                backend="eager" if backend == "eager" else "sdpa",
                causal=True,
                dense_mask=padded_causal_mask(attention_mask, b, t, past, device),
            )
        else:
            spec = AttentionSpec.for_segments(backend, True, layout.cu_seqlens, device, skip=layout.padding)

        cos_sin = self.rotary_emb(position_ids.to(device), inputs_embeds.dtype)
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=spec, position_embeddings=cos_sin, cache=cache, use_cache=use_cache)
        hidden = self.norm(hidden)
        return IsaacModelOutput(
            last_hidden_state=hidden, cache=cache, rope_deltas=rope_deltas, segment_starts=starts
        )


class IsaacForConditionalGeneration(IsaacPreTrainedModel, GenerationMixin):
    """Isaac with its (untied) LM head: logits, packed-row loss, and `generate` with a KV cache."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: IsaacConfig) -> None:
        super().__init__(config)
        self.model = IsaacModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def embed_stream(self, tensor_stream: TensorStream, keep_vision_graph: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed_stream(tensor_stream, keep_vision_graph)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_hw: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        tensor_stream: TensorStream | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        rope_deltas: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        return_logits: bool | None = None,
        keep_vision_graph: bool = False,
        packed: PackedLayout | None = None,
        **kwargs: object,
    ) -> IsaacCausalLMOutput:
        """Logits and/or the loss. With `labels` (aligned with the inputs, -100 = no loss) the loss is the sum of
        next-token cross-entropy within each document divided by `num_items_in_batch` (or the number of label
        tokens). `return_logits` defaults to False when training with labels: the loss never needs the row's
        full logits. With `packed` (and its label positions) the loss positions come from the host."""
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            pixel_values=pixel_values, image_grid_hw=image_grid_hw, cu_seqlens=cu_seqlens,
            tensor_stream=tensor_stream, inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
            rope_deltas=rope_deltas, keep_vision_graph=keep_vision_graph, packed=packed,
        )
        hidden = out.last_hidden_state
        loss = loss_sum = count = group_logps = token_logps = None
        if labels is not None and packed is not None and packed.label_groups is not None:
            # per-target and per-document log-probabilities (preference pairs, GRPO completions); their negated sum
            # is the documents' token loss
            token_logps = lm_token_logps(hidden, self.lm_head.weight, packed.label_index, packed.label_targets)
            group_logps = group_sums(token_logps, packed.label_groups, packed.num_groups)
            loss_sum, count = -group_logps.sum(), torch.tensor(packed.num_label_tokens)
        elif labels is not None and packed is not None and packed.label_index is not None:
            loss_sum, count = lm_loss_at(hidden, self.lm_head.weight, packed.label_index, packed.label_targets)
        elif labels is not None:
            targets = shift_labels(labels.to(hidden.device), out.segment_starts)
            loss_sum, count = lm_loss_sum(hidden, self.lm_head.weight, targets)
        if loss_sum is not None:
            denom = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
            loss = loss_sum / denom
        if return_logits is None:
            return_logits = labels is None or not self.training
        logits = None
        if return_logits:
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            logits = self.lm_head(kept)
        return IsaacCausalLMOutput(
            loss=loss, logits=logits, cache=out.cache, loss_sum=loss_sum,
            num_label_tokens=count, rope_deltas=out.rope_deltas, group_logps=group_logps,
            token_logps=token_logps,
        )

    # ---- generation -------------------------------------------------------------------------------------

    def generate(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        """transformers' `generate`, never emitting the image placeholder (`config.image_token_id`): only the
        processor places it, and a generated one would be taken for an image at the next step. It is added to
        `suppress_tokens` (greedy, sampling and beam search alike)."""
        suppress = kwargs.get("suppress_tokens")
        if suppress is None:
            config = kwargs.get("generation_config") or self.generation_config
            suppress = getattr(config, "suppress_tokens", None)
        kwargs["suppress_tokens"] = sorted({*(suppress or []), self.config.image_token_id})
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_hw: torch.Tensor | None = None,
        tensor_stream: TensorStream | None = None,
        position_ids: torch.Tensor | None = None,
        rope_deltas: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        keep_vision_graph: bool = False,
        **kwargs: object,
    ) -> dict:
        """Images, the stream and explicit positions go in at the first step only; later steps take their
        positions from the cache length plus the prefill's rope delta. `keep_vision_graph=True` (sharded weights:
        every rank runs the vision tower in the prefill, images or not) applies to the first step only."""
        inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, attention_mask=attention_mask, is_first_iteration=is_first_iteration, **kwargs
        )
        prefill = cache is None or cache.get_seq_length() == 0
        if prefill:
            inputs.update(
                pixel_values=pixel_values, image_grid_hw=image_grid_hw, tensor_stream=tensor_stream,
                position_ids=position_ids, keep_vision_graph=keep_vision_graph,
            )
        else:
            inputs["rope_deltas"] = rope_deltas
        return inputs

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):  # noqa: ANN001
        return None  # 1-D positions cannot express mRoPE; the model derives (t, h, w) itself

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):  # noqa: ANN001
        model_kwargs.pop("position_ids", None)  # (B, T, 3): positions after the prompt come from rope_deltas
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if getattr(outputs, "rope_deltas", None) is not None and model_kwargs.get("rope_deltas") is None:
            model_kwargs["rope_deltas"] = outputs.rope_deltas
        return model_kwargs


def isaac_of(model: nn.Module) -> IsaacForConditionalGeneration:
    """The IsaacForConditionalGeneration inside peft / DDP / DeepSpeed wrappers (or the model itself)."""
    for module in model.modules():
        if isinstance(module, IsaacForConditionalGeneration):
            return module
    raise TypeError("no IsaacForConditionalGeneration inside the model")
