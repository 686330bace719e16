"""From a sample's tar members to an EncodedSample, or a skip with a reason (docs/data_format.md)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .records import Skip, open_image

if TYPE_CHECKING:  # the processor imports torch and transformers: parse_sample (eval, isaac-data) needs neither
    from ..processing.processor import EncodedSample, IsaacProcessor

_IMAGE_SUFFIX = re.compile(r"^(\d+)\.(jpg|jpeg|png|webp|bmp|gif|tif|tiff)$", re.IGNORECASE)

SKIP_REASONS = (
    "truncated_shard", "unreadable_shard", "corrupt_tar", "bad_member", "missing_member", "bad_json", "bad_schema",
    "image_count_mismatch", "corrupt_image", "image_too_large", "too_long", "no_labels", "invalid_sample",
    "missing_side", "identical_pair", "not_a_pair",
)


class SkipSample(Exception):
    """A sample the loader skips and counts under `reason`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def image_members(members: dict[str, bytes]) -> list[str]:
    """Image member suffixes in numeric order ("0.jpg", "1.png", ...)."""
    found = [(int(m.group(1)), s) for s in members if (m := _IMAGE_SUFFIX.match(s))]
    return [s for _, s in sorted(found)]


def parse_sample(members: dict[str, bytes]) -> tuple[str, list[dict[str, Any]], list[bytes], dict[str, Any]]:
    """-> (kind "chat"|"document", messages or segments, image bytes in order of use, the raw JSON object).
    Every image's size is checked from its header here (check_image_size), so nothing decodes an image too large."""
    try:
        obj = json.loads(members["json"])
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SkipSample("bad_json", f"the json member does not parse: {err}") from err
    if not isinstance(obj, dict) or ("messages" in obj) == ("segments" in obj):
        raise SkipSample("bad_schema", "the json must hold exactly one of 'messages' or 'segments'")
    kind = "chat" if "messages" in obj else "document"
    if kind == "chat" and ("chosen" in obj or "rejected" in obj):
        kind = "preference"
    items = obj["segments"] if kind == "document" else obj["messages"]
    if not isinstance(items, list) or not items:
        raise SkipSample("bad_schema", f"'{'segments' if kind == 'document' else 'messages'}' must be a non-empty list")
    if kind != "document" and not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in items):
        raise SkipSample("bad_schema", "every message must be an object with a string 'role'")
    if kind == "preference":
        check_answers(obj)
    contents = [m.get("content") for m in items] if kind != "document" else [items]
    image_items = [it for c in contents if isinstance(c, list) for it in c
                   if isinstance(it, dict) and it.get("type") == "image"]
    available = image_members(members)
    if len(image_items) != len(available):
        raise SkipSample("image_count_mismatch",
                         f"{len(image_items)} image item(s) but {len(available)} image member(s) {available}")
    images, next_default = [], iter(available)
    for it in image_items:
        name = it.get("image")
        if isinstance(name, str):
            if name not in members:
                raise SkipSample("missing_member", f"image item names member {name!r}, which is absent")
            images.append(members[name])
        else:
            images.append(members[next(next_default)])
    for k, data in enumerate(images):
        check_image_size(data, f"image {k}")
    return kind, items, images, obj


def check_answers(obj: dict[str, Any]) -> None:
    """A preference pair's `chosen` and `rejected`: each a non-empty list of messages, the last an assistant turn,
    no image in them (the images belong to the prompt, `messages`), and not the same (docs/data_format.md)."""
    for side in ("chosen", "rejected"):
        turns = obj.get(side)
        if not isinstance(turns, list) or not turns:
            raise SkipSample("missing_side", f"'{side}' must be a non-empty list of messages (the answer)")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in turns):
            raise SkipSample("bad_schema", f"every message of '{side}' must be an object with a string 'role'")
        if turns[-1]["role"] != "assistant":
            raise SkipSample("bad_schema", f"the last message of '{side}' must be an assistant turn")
        if any(isinstance(m.get("content"), list) and any(isinstance(it, dict) and it.get("type") == "image"
                                                           for it in m["content"]) for m in turns):
            raise SkipSample("bad_schema", f"'{side}' holds an image item; a pair's images belong to its prompt")
    if obj["chosen"] == obj["rejected"]:
        raise SkipSample("identical_pair", "'chosen' and 'rejected' are the same answer")


def chosen_chat(kind: str, items: list[dict[str, Any]], obj: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """parse_sample's (kind, items) with a preference pair read as the chat of its prompt and chosen answer (what
    sft trains on and evaluation asks); any other sample as it is."""
    return ("chat", items + obj["chosen"]) if kind == "preference" else (kind, items)


def check_image_size(data: bytes, where: str) -> None:
    """Refuse an image over data.max_image_pixels (records.max_image_pixels()) from its header, before anything
    decodes it: SkipSample("image_too_large"). Bytes PIL cannot read are left to the processor, whose
    corrupt_image message says what failed in decoding."""
    try:
        open_image(data, where).close()
    except Skip as err:
        if err.reason == "image_too_large":
            raise SkipSample(err.reason, str(err)) from err


def encode_members(
    members: dict[str, bytes], processor: IsaacProcessor, max_length: int | None, length_policy: str = "truncate",
    normalize_pixels: bool = True,
) -> EncodedSample:
    """Decode and process one sample; raises SkipSample with the reason when it cannot be used.
    `normalize_pixels=False` keeps uint8 patches (the training loader's choice; the model normalises)."""
    kind, items, images, obj = parse_sample(members)
    kind, items = chosen_chat(kind, items, obj)  # a pair trains as the chat that ends with its chosen answer
    encode = processor.encode_chat if kind == "chat" else processor.encode_document
    with _skips():
        return encode(items, images, max_length=max_length, length_policy=length_policy,
                      normalize_pixels=normalize_pixels)


def encode_pair(members: dict[str, bytes], processor: IsaacProcessor, max_length: int,
                normalize_pixels: bool = True) -> tuple[EncodedSample, EncodedSample]:
    """A preference pair -> (prompt + chosen, prompt + rejected), labels on the answer only (not on assistant turns
    of the prompt). The two must fit one row together (`max_length` tokens): a pair is never truncated (a cut
    answer scores another answer), it is skipped as too_long. Anything but a pair: SkipSample("not_a_pair")."""
    kind, prompt, images, obj = parse_sample(members)
    if kind != "preference":
        raise SkipSample("not_a_pair", f"a {kind} sample, not a preference pair ('chosen' and 'rejected'); "
                                       "objective=dpo trains on pairs only (docs/data_format.md)")
    answered = sum(m["role"] == "assistant" for m in prompt)
    with _skips():
        chosen, rejected = (
            processor.encode_chat(prompt + obj[side], images, max_length=1 << 40, length_policy="drop",
                                  normalize_pixels=normalize_pixels, unlabelled_turns=answered)
            for side in ("chosen", "rejected"))
    if len(chosen) + len(rejected) > max_length:
        raise SkipSample("too_long", f"the pair has {len(chosen)} + {len(rejected)} tokens, over train.seq_len="
                                     f"{max_length} (both answers go in one row); raise train.seq_len or shorten the "
                                     "prompt")
    return chosen, rejected


@contextlib.contextmanager
def _skips() -> Iterator[None]:
    """The processor's errors on a sample -> SkipSample with the reason."""
    from ..processing.image_processing import ImageError
    from ..processing.processor import NoLabelTokensError, SampleTooLongError

    try:
        yield
    except SampleTooLongError as err:
        raise SkipSample("too_long", str(err)) from err
    except NoLabelTokensError as err:
        raise SkipSample("no_labels", str(err)) from err
    except ImageError as err:
        raise SkipSample("corrupt_image", str(err)) from err
    except (ValueError, TypeError, KeyError) as err:  # anything else malformed in the sample's structure
        raise SkipSample("invalid_sample", f"{type(err).__name__}: {err}") from err
