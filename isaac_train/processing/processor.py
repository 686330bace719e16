"""IsaacProcessor: chat messages, documents and images -> model inputs (and training labels).

Inference follows Perceptron's processor: the rendered prompt is split on `<image>`, each text piece is tokenized
on its own (no BPE merge across an image), each image becomes packed patches, and the whole is a TensorStream;
`input_ids` carry `<|image_pad|>` where image tokens go. Several prompts are left-padded into one batch.
Training (`encode_chat`, `encode_document`) returns one sample with labels: assistant turns only (content and
the closing `<|im_end|>`) for chats, all text for documents, never image positions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .chat_template import ASSISTANT_HEADER, CHAT_TEMPLATE, IM_END
from .image_processing import ImageError, ImageLike, IsaacImageProcessorFast
from .tensor_stream import Event, Modality, TensorStream

IGNORE_INDEX = -100
IMAGE_PAD_TOKEN = "<|image_pad|>"
PROCESSOR_CONFIG = "processor_config.json"
# Fields of Perceptron's processor_config.json / config.json that drive processing.
PROCESSING_FIELDS = ("video_patch_size", "vision_max_num_patches", "vision_min_num_patches", "pixel_shuffle_scale",
                     "max_sequence_length", "vision_token", "vision_rescale_factor", "vision_mean", "vision_std")


class SampleTooLongError(ValueError):
    """A training sample that does not fit `max_length` under the length policy (the loader counts these)."""


class NoLabelTokensError(ValueError):
    """A training sample with nothing to learn from (no assistant turn, no text)."""


@dataclass
class EncodedSample:
    """One training sample: a single document/conversation."""

    input_ids: torch.Tensor  # (T,) long, image_token_id at image positions
    labels: torch.Tensor  # (T,) long, IGNORE_INDEX where no loss
    pixel_values: torch.Tensor | None  # (sum H*W, 3*p*p)
    image_grid_hw: torch.Tensor  # (n_img, 2) long
    events: list[Event]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def tensor_stream(self) -> TensorStream:
        return TensorStream([self.events])


class IsaacProcessor(ProcessorMixin):
    """Tokenizer + IsaacImageProcessorFast + Isaac's prompt format."""

    def __init__(
        self,
        image_processor: IsaacImageProcessorFast,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: str | None = None,
        max_sequence_length: int = 16384,
        vision_token: str = "<image>",
    ) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template or tokenizer.chat_template
                         or CHAT_TEMPLATE)
        self.max_sequence_length = max_sequence_length
        self.vision_token = vision_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {IMAGE_PAD_TOKEN} token; Isaac's processor needs Qwen3's tokens")
        self._split = re.compile(f"({re.escape(vision_token)})")

    # ---- loading and saving ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> IsaacProcessor:  # type: ignore[override]
        """From a Perceptron checkpoint directory or one we saved: tokenizer files, chat template, and the vision
        settings from processor_config.json (else from config.json)."""
        path = Path(path)
        settings: dict[str, Any] = {}
        for name in ("config.json", PROCESSOR_CONFIG):  # processor_config.json wins where both have a field
            file = path / name
            if file.is_file():
                data = json.loads(file.read_text())
                for source in (data.get("config") if isinstance(data.get("config"), dict) else {}, data):
                    settings.update({k: v for k, v in source.items() if k in PROCESSING_FIELDS})
        if not settings:
            raise FileNotFoundError(f"{path} has neither {PROCESSOR_CONFIG} nor config.json with Isaac's vision fields")
        tokenizer = kwargs.pop("tokenizer", None) or AutoTokenizer.from_pretrained(path)
        ours = {k: kwargs[k] for k in ("chat_template", "max_sequence_length") if kwargs.get(k) is not None}
        return cls.from_settings(tokenizer, settings, **ours)  # other kwargs (trust_remote_code, ...) do not apply

    @classmethod
    def from_settings(cls, tokenizer: PreTrainedTokenizerBase, settings: Any, **kwargs: Any) -> IsaacProcessor:
        """From a tokenizer and an IsaacConfig (or a dict of Perceptron's processing fields)."""
        get = settings.get if isinstance(settings, dict) else lambda k, d=None: getattr(settings, k, d)
        return cls(
            IsaacImageProcessorFast.from_isaac_config(settings), tokenizer,
            max_sequence_length=kwargs.pop("max_sequence_length", get("max_sequence_length", 16384)),
            vision_token=get("vision_token", "<image>"), **kwargs,
        )

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> list[str]:  # type: ignore[override]
        """Tokenizer files, chat template and processor_config.json (Perceptron's field names)."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.chat_template = self.chat_template
        files = list(self.tokenizer.save_pretrained(out))
        ip = self.image_processor
        config = {
            "processor_class": type(self).__name__, "video_patch_size": ip.patch_size,
            "vision_max_num_patches": ip.max_num_patches, "vision_min_num_patches": ip.min_num_patches,
            "pixel_shuffle_scale": ip.pixel_shuffle_scale, "max_sequence_length": self.max_sequence_length,
            "vision_token": self.vision_token, "vision_rescale_factor": ip.rescale_factor,
            "vision_mean": ip.image_mean, "vision_std": ip.image_std,
        }
        (out / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return [*files, str(out / PROCESSOR_CONFIG)]

    # ---- chat template -----------------------------------------------------------------------------------

    def flatten_messages(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Content lists -> strings with `<image>` markers; refuses unknown roles' shapes and content types."""
        flat = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}")
            content = message["content"]
            if isinstance(content, list):
                parts = []
                for item in content:
                    kind = item.get("type") if isinstance(item, dict) else None
                    if kind == "image":
                        parts.append(self.vision_token)
                    elif kind == "text":
                        parts.append(str(item.get("text", "")))
                    else:
                        raise ValueError(
                            f"message {i} has a content item of type {kind!r}; Isaac takes 'text' and 'image' items"
                        )
                content = "".join(parts)
            elif content is None:
                content = ""
            elif not isinstance(content, str):
                raise ValueError(f"message {i} content must be a string or a list of items, got {type(content)}")
            flat.append({**message, "content": content})
        return flat

    def apply_chat_template(  # type: ignore[override]
        self, messages: Sequence[dict[str, Any]], tokenize: bool = False, add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str:
        """Render messages (content strings or lists of text/image items) to a prompt with `<image>` markers."""
        if tokenize:
            raise ValueError("apply_chat_template(tokenize=True) is not supported; pass the string to processor(...)")
        return self.tokenizer.apply_chat_template(
            self.flatten_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
            chat_template=self.chat_template, **kwargs,
        )

    # ---- building streams --------------------------------------------------------------------------------

    def _encode_text(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None and hasattr(backend, "encode"):  # the Rust tokenizer, without per-call overhead
            enc = backend.encode(text, add_special_tokens=False)
            return enc.ids, enc.offsets
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def build_events(
        self, text: str, images: Sequence[ImageLike], label_spans: Sequence[tuple[int, int]] | None = None,
        normalize: bool = True,
    ) -> tuple[list[Event], list[torch.Tensor]]:
        """Split `text` on `<image>` markers into text and image events (Perceptron's rule: each text piece is
        tokenized alone). Also returns, per text event, whether each token starts inside a label span."""
        n_markers = text.count(self.vision_token)
        if n_markers != len(images):
            raise ValueError(
                f"the text has {n_markers} {self.vision_token} marker(s) but {len(images)} image(s) were given; "
                "each image needs exactly one marker (an image content item in a chat message)"
            )
        events, in_loss, image_idx, offset = [], [], 0, 0
        merge = self.image_processor.pixel_shuffle_scale
        for time, piece in enumerate(self._split.split(text)):
            if piece == self.vision_token:
                try:
                    patches, grid = self.image_processor.process_one(images[image_idx], normalize=normalize)
                except ImageError as err:
                    raise ImageError(f"image {image_idx}: {err}") from err
                events.append(Event.image(patches, grid, merge, time=float(time)))
                image_idx += 1
            elif piece:
                ids, offsets = self._encode_text(piece)
                if ids:
                    events.append(Event.text(ids, time=float(time)))
                    starts = torch.tensor([offset + s for s, _ in offsets])
                    flags = torch.zeros(len(ids), dtype=torch.bool)
                    for a, b in label_spans or ():
                        flags |= (starts >= a) & (starts < b)
                    in_loss.append(flags)
            offset += len(piece)
        return events, in_loss

    # ---- inference ---------------------------------------------------------------------------------------

    def __call__(  # type: ignore[override]
        self,
        text: str | Sequence[str] | None = None,
        images: ImageLike | Sequence[ImageLike] | Sequence[Sequence[ImageLike]] | None = None,
        return_tensors: str | None = "pt",
        truncation: str | bool = False,
        **_: Any,
    ) -> BatchFeature:
        """Prompts (with `<image>` markers) and their images -> input_ids, attention_mask, pixel_values,
        image_grid_hw and tensor_stream, left-padded for batched generation.

        `images`: one image, a flat list consumed by the prompts' markers in order, or one list per prompt.
        `truncation`: False (default) refuses prompts over `max_sequence_length`; "left" keeps the last tokens as
        Perceptron's processor does (an image may be cut; the model still encodes it whole).
        """
        if text is None:
            raise ValueError("IsaacProcessor needs text (use processor.image_processor for images alone)")
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = self._images_per_prompt(texts, images)
        rows = []
        for i, (prompt, imgs) in enumerate(zip(texts, per_prompt, strict=True)):
            events, _ = self.build_events(prompt, imgs)
            length = sum(e.num_tokens() for e in events)
            if length > self.max_sequence_length:
                if truncation != "left":
                    raise ValueError(
                        f"prompt {i} has {length} tokens, over max_sequence_length={self.max_sequence_length}; shorten "
                        "it, raise max_sequence_length, or pass truncation='left' to keep its end"
                    )
                events = TensorStream([events]).slice(length - self.max_sequence_length, length).rows[0]
            if not events:
                raise ValueError(f"prompt {i} is empty")
            rows.append(events)
        return self.batch_events(rows)

    def batch_events(self, rows: Sequence[Sequence[Event]]) -> BatchFeature:
        """Prompts already made into events (`build_events`) -> the left-padded batch `__call__` returns."""
        longest = max(sum(e.num_tokens() for e in row) for row in rows)
        pad_id = self.tokenizer.pad_token_id
        padded, masks = [], []
        for row in rows:
            n_pad = longest - sum(e.num_tokens() for e in row)
            pad = [Event(Modality.padding, torch.full((n_pad,), pad_id), (n_pad, 1, 1), (n_pad, 1, 1), (0, n_pad))]
            padded.append((pad if n_pad else []) + list(row))
            masks.append([0] * n_pad + [1] * (longest - n_pad))
        stream = TensorStream(padded)
        pixel_values, grids = stream.image_patches()
        data = {
            "input_ids": stream.input_ids(self.image_token_id, pad_id),
            "attention_mask": torch.tensor(masks, dtype=torch.long),
            "tensor_stream": stream,
        }
        if pixel_values is not None:
            data.update(pixel_values=pixel_values, image_grid_hw=grids)
        return BatchFeature(data)

    def _images_per_prompt(self, texts: list[str], images: Any) -> list[list[ImageLike]]:
        counts = [t.count(self.vision_token) for t in texts]
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if images and all(isinstance(x, (list, tuple)) for x in images):
            if len(images) != len(texts):
                raise ValueError(f"got {len(images)} image lists for {len(texts)} prompts")
            return [list(x) for x in images]
        images = list(images)
        if sum(counts) != len(images):
            raise ValueError(
                f"the prompts have {sum(counts)} {self.vision_token} marker(s) but {len(images)} image(s) were given"
            )
        out, start = [], 0
        for c in counts:
            out.append(images[start : start + c])
            start += c
        return out

    def post_process_image_text_to_text(
        self, generated_outputs: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True,
        **kwargs: Any,
    ) -> list[str]:
        """Decode generated token ids (pass `generated[:, prompt_len:]` for the new text only)."""
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    # ---- training samples --------------------------------------------------------------------------------

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], images: Sequence[ImageLike] = (), max_length: int | None = None,
        length_policy: str = "truncate", normalize_pixels: bool = True, unlabelled_turns: int = 0,
    ) -> EncodedSample:
        """A conversation -> one sample with loss on assistant turns (content and closing `<|im_end|>`).
        `unlabelled_turns`: the first that many assistant turns carry no label (a preference pair's prompt: only
        the answer is scored)."""
        text = self.apply_chat_template(messages)
        spans, start = [], text.find(ASSISTANT_HEADER)
        while start != -1:
            begin = start + len(ASSISTANT_HEADER)
            end = text.find(IM_END, begin)
            end = len(text) if end == -1 else end + len(IM_END)
            spans.append((begin, end))
            start = text.find(ASSISTANT_HEADER, end)
        return self._sample(text, images, spans[unlabelled_turns:], max_length, length_policy, normalize_pixels)

    def encode_document(
        self, segments: Sequence[dict[str, Any]], images: Sequence[ImageLike] = (), max_length: int | None = None,
        length_policy: str = "truncate", normalize_pixels: bool = True,
    ) -> EncodedSample:
        """An interleaved document (`{"type": "text", "text": ...}` / `{"type": "image"}` items, images in order)
        -> one sample with loss on all text."""
        text = self.flatten_messages([{"role": "document", "content": list(segments)}])[0]["content"]
        return self._sample(text, images, [(0, len(text))], max_length, length_policy, normalize_pixels)

    def _sample(
        self, text: str, images: Sequence[ImageLike], spans: list[tuple[int, int]], max_length: int | None,
        length_policy: str, normalize_pixels: bool,
    ) -> EncodedSample:
        """`length_policy`: "truncate" keeps the first `max_length` tokens without cutting an image; "drop"
        refuses the sample (SampleTooLongError). `normalize_pixels=False` keeps patches as uint8 (the model
        normalises them)."""
        if length_policy not in ("truncate", "drop"):
            raise ValueError(f"length_policy={length_policy!r}; use 'truncate' or 'drop'")
        events, in_loss = self.build_events(text, list(images), spans, normalize=normalize_pixels)
        ids, labels, loss_iter = [], [], iter(in_loss)
        for e in events:
            if e.type == Modality.text:
                flags = next(loss_iter)
                ids.append(e.data)
                labels.append(torch.where(flags, e.data, IGNORE_INDEX))
            else:
                n = e.num_tokens()
                ids.append(torch.full((n,), self.image_token_id))
                labels.append(torch.full((n,), IGNORE_INDEX))
        sample = EncodedSample(
            input_ids=torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long),
            labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
            pixel_values=None, image_grid_hw=torch.zeros(0, 2, dtype=torch.long), events=events,
        )
        if sample.num_label_tokens == 0:
            raise NoLabelTokensError("the sample has no label tokens (no assistant turn or no text)")
        limit = max_length or self.max_sequence_length
        if len(sample) > limit:
            if length_policy == "drop":
                raise SampleTooLongError(f"the sample has {len(sample)} tokens, over the limit of {limit}")
            sample = truncate_sample(sample, limit)
            if sample.num_label_tokens == 0:
                raise SampleTooLongError(
                    f"the sample has {len(sample)} tokens; cut to {limit} (before any image it would split) it has "
                    "no label tokens left"
                )
        patches, grids = sample.tensor_stream().image_patches()
        if patches is not None:
            sample.pixel_values, sample.image_grid_hw = patches, grids
        return sample


def truncate_sample(sample: EncodedSample, max_length: int) -> EncodedSample:
    """Training length policy: keep the first `max_length` tokens, never cutting through an image (the cut moves
    to just before an image it would split, and that image and everything after it are dropped)."""
    kept, total = [], 0
    for e in sample.events:
        n = e.num_tokens()
        if total + n <= max_length:
            kept.append(e)
            total += n
        else:
            if e.type == Modality.text and max_length > total:
                kept.append(e.slice_tokens(0, max_length - total))
                total = max_length
            break
    return EncodedSample(
        input_ids=sample.input_ids[:total], labels=sample.labels[:total], pixel_values=None,
        image_grid_hw=torch.zeros(0, 2, dtype=torch.long), events=[_materialize(e) for e in kept],
    )


def _materialize(e: Event) -> Event:
    """A text event narrowed by slice_tokens, with its data cut to match (so streams stay self-consistent)."""
    if e.type != Modality.text or e.idx_range == (0, e.dims_virtual[0]):
        return e
    lo, hi = e.idx_range
    return Event.text(e.data[lo:hi], role=e.role, time=e.time[0])
