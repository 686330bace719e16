"""Preference (DPO) pairs in: `trl-preference`, `llamafactory-preference`, `rlaif-v` (docs/data_format.md,
"Preference pairs").

Every pair becomes one sample holding the prompt once and both answers:

    {"messages": [the prompt, Isaac-format turns, the last one a user turn; image items only here],
     "chosen": [{"role": "assistant", "content": ...}], "rejected": [{"role": "assistant", "content": ...}],
     "id": ...}

with the prompt's images as the usual KEY.0.jpg ... members. The prompt is read as chat records are
(isaac_train/data/records.py `convert_conversation`: image items and `<image>` markers take the record's images in
order, a prompt with images but no image item gets them at the start of its first user turn), so the counts must
match as for chat samples.

- `trl-preference`: TRL's preference datasets. Conversational, explicit prompt: `prompt` (messages, image parts
  `{"type": "image"}`), `chosen` / `rejected` (assistant messages), `images`. Conversational, implicit prompt: only
  `chosen` / `rejected`, whole conversations sharing their prompt: the prompt is their longest common prefix of
  messages, cut back to its last user turn; each answer is the rest, which must be assistant turns. Standard:
  `prompt`, `chosen`, `rejected` strings (the prompt is one user turn, `<image>` markers are its images).
- `llamafactory-preference`: LLaMA-Factory's sharegpt preference records: `conversations` (`{"from": "human" |
  "gpt" | "system", "value"}` turns with `<image>` markers, ending with a human turn), `chosen` / `rejected` single
  `{"from": "gpt", "value"}` turns, `images` (paths), optional `system`; its OpenAI-style form (`messages` with
  `role` / `content`, `chosen` / `rejected` single `{"role": "assistant", "content"}` objects); and its alpaca
  form (`instruction`, optional `input`, `system` and `history`, `chosen` / `rejected` strings).
- `rlaif-v`: RLAIF-V-style rows: `image` (an HF image dict, a PIL image, or a path; `image_path` when `image`
  is absent), `question`, `chosen` and `rejected` strings, `idx` as the id.

Each reads a JSONL file, a JSON list (LLaMA-Factory's data.json), or a Hugging Face dataset (a `save_to_disk`
directory, a parquet/arrow file, or INPUT=parquet|json|csv|arrow with --hf-data-files). An answer is a message, a
list of messages or a string; it may hold text only.

Pairs left out (Skip): `missing_side` (chosen or rejected absent or empty), `identical_pair` (the two answers equal
after conversion, surrounding white space aside), `image_count_mismatch` (image items/markers against the images
listed, or an image in an answer), `bad_schema` (no prompt, a prompt not ending with a user turn, an answer that is
not assistant turns, implicit conversations that differ before their last user turn), and the image reasons
(missing_image, corrupt_image, image_too_large).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from isaac_train.data.records import ROLES, _as_list, _content_items

from .converters import (
    Converted,
    Converter,
    HfInput,
    InputError,
    Item,
    Skip,
    _jsonl_items,
    _parse_line,
    convert_conversation,
    hf_input,
    hf_row,
    load_hf_rows,
    load_images,
    read_json_list,
)

HF_SUFFIXES = (".parquet", ".arrow")
SIDES = ("chosen", "rejected")
Message = dict[str, Any]


def preference_kind(keys: Collection[str]) -> tuple[str, tuple[str, ...]] | None:
    """The preference format that a record's keys (or a dataset's columns) say, with the keys that decided it;
    None without both `chosen` and `rejected`. Used by data_tools/infer_format.py."""
    keys = set(keys)
    if not set(SIDES) <= keys:
        return None
    for fmt, field in (("llamafactory-preference", "conversations"), ("llamafactory-preference", "messages"),
                       ("llamafactory-preference", "instruction"), ("rlaif-v", "question"),
                       ("trl-preference", "prompt")):
        if field in keys:
            return fmt, (field, *SIDES)
    return "trl-preference", SIDES  # TRL's implicit prompt: whole conversations


# ---- a pair -----------------------------------------------------------------------------------------------


def _role(turn: dict[str, Any]) -> str | None:
    raw = turn.get("role", turn.get("from"))
    return None if raw is None else ROLES.get(str(raw).lower())


def _is_empty(content: Any) -> bool:
    if content is None:
        return True
    if isinstance(content, str):
        return not content.strip()
    if isinstance(content, list):
        return all(isinstance(it, dict) and it.get("type") == "text" and not str(it.get("text") or "").strip()
                   for it in content)
    return False


def convert_answer(value: Any, side: str, where: str) -> list[Message]:
    """One side of a pair (a string, a message, or a list of messages) -> Isaac assistant messages.

    Skip("missing_side") when it is absent or has no text, Skip("bad_schema") for a turn that is not an
    assistant's, Skip("image_count_mismatch") for an image item or `<image>` marker (answers are text only)."""
    label = f"{where} {side}"
    turns = [{"role": "assistant", "content": value}] if isinstance(value, str) else _as_list(value)
    if not turns or all(isinstance(t, dict) and _is_empty(t.get("content", t.get("value"))) for t in turns):
        raise Skip("missing_side", f"{label}: the {side} answer is absent or empty")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Skip("bad_schema", f"{label} turn {i}: a {type(turn).__name__}, not a message object")
        role = _role(turn) if turn.get("role", turn.get("from")) is not None else "assistant"
        if role != "assistant":
            raise Skip("bad_schema", f"{label} turn {i}: role {turn.get('role', turn.get('from'))!r}; an answer "
                                     "is assistant turns only")
        content, refs = _content_items(turn["content"] if "content" in turn else turn.get("value"),
                                       f"{label} turn {i}")
        if refs:
            raise Skip("image_count_mismatch", f"{label} turn {i}: holds {len(refs)} image item(s)/marker(s); "
                                               "images belong to the prompt, answers are text only")
        messages.append({"role": "assistant", "content": content})
    return messages


def _answer_text(messages: list[Message]) -> list[str]:
    """An answer's text per message, surrounding white space aside (for identical_pair)."""
    out = []
    for m in messages:
        content = m["content"]
        text = content if isinstance(content, str) else "".join(str(it.get("text") or "") for it in content)
        out.append(text.strip())
    return out


def convert_pair(prompt: Any, chosen: Any, rejected: Any, images: list[Any], root: Path, where: str,
                 sample_id: Any = None) -> Converted:
    """A prompt (turns), the two answers and the prompt's images -> the stored preference sample."""
    answers = {"chosen": convert_answer(chosen, "chosen", where),
               "rejected": convert_answer(rejected, "rejected", where)}
    if _answer_text(answers["chosen"]) == _answer_text(answers["rejected"]):
        raise Skip("identical_pair", f"{where}: the chosen and rejected answers are the same (nothing to prefer)")
    if not isinstance(prompt, list) or not prompt:
        raise Skip("bad_schema", f"{where}: the prompt must be a non-empty list of turns")
    # convert_conversation wants something to learn: the chosen answer, text only, takes none of the images
    messages, refs = convert_conversation([*prompt, *answers["chosen"]], images, where)
    messages = messages[:len(prompt)]
    if messages[-1]["role"] != "user":
        raise Skip("bad_schema", f"{where}: the prompt ends with a {messages[-1]['role']} turn, not a user turn")
    sample: dict[str, Any] = {}
    if sample_id is not None:
        sample["id"] = sample_id if isinstance(sample_id, (int, str)) else str(sample_id)
    sample.update(messages=messages, chosen=answers["chosen"], rejected=answers["rejected"])
    return Converted(sample, load_images(refs, root, where))


def _images(obj: dict[str, Any]) -> list[Any]:
    return _as_list(obj.get("images")) or _as_list(obj.get("image"))


def _sample_id(obj: dict[str, Any]) -> Any:
    return obj["id"] if obj.get("id") is not None else obj.get("idx")


def _present(obj: dict[str, Any], where: str) -> None:
    """Skip("missing_side") when a side is absent, before anything else is looked at."""
    for side in SIDES:
        if obj.get(side) is None:
            raise Skip("missing_side", f"{where}: no {side!r} answer")


def _turn_key(turn: Any) -> Any:
    """A message in a form that compares equal when it converts to the same Isaac message."""
    if not isinstance(turn, dict):
        return ("?", json.dumps(turn, sort_keys=True, default=str))
    try:
        content, refs = _content_items(turn["content"] if "content" in turn else turn.get("value"), "")
    except Skip:
        content, refs = turn.get("content", turn.get("value")), []
    if isinstance(content, str):
        content = [{"type": "text", "text": content}] if content else []
    return (_role(turn), json.dumps(content, sort_keys=True, default=str), json.dumps(refs, default=str))


def split_implicit(chosen: Any, rejected: Any, where: str) -> tuple[list[Any], list[Any], list[Any]]:
    """TRL's implicit prompt: two whole conversations -> (the shared prompt, the chosen tail, the rejected tail).
    The prompt is their longest common prefix of messages, cut back to end with its last user turn (shared
    assistant turns after it go to both answers); the tails must be assistant turns (else Skip("bad_schema"))."""
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise Skip("bad_schema", f"{where}: no 'prompt', and 'chosen' / 'rejected' are not conversations (lists "
                                 "of messages); TRL's standard implicit-prompt strings carry no prompt to split")
    shared = 0
    while (shared < min(len(chosen), len(rejected))
           and _turn_key(chosen[shared]) == _turn_key(rejected[shared])):
        shared += 1
    if shared == len(chosen) == len(rejected):
        raise Skip("identical_pair", f"{where}: the chosen and rejected conversations are the same")
    cut = shared
    while cut > 0 and not (isinstance(chosen[cut - 1], dict) and _role(chosen[cut - 1]) == "user"):
        cut -= 1
    if cut == 0:
        raise Skip("bad_schema", f"{where}: the chosen and rejected conversations share no prompt ending with a "
                                 "user turn")
    tails = chosen[cut:], rejected[cut:]
    for side, tail in zip(SIDES, tails, strict=True):
        if not tail:
            raise Skip("missing_side", f"{where}: the {side} conversation has no answer after the shared prompt")
        if any(not isinstance(t, dict) or _role(t) != "assistant" for t in tail):
            raise Skip("bad_schema", f"{where}: the {side} conversation differs from the other before its last "
                                     "user turn; the answers must be the assistant turns after the shared prompt")
    return chosen[:cut], tails[0], tails[1]


def _user_turn(text: Any, field: str, where: str) -> Message:
    if not isinstance(text, str) or not text.strip():
        raise Skip("bad_schema", f"{where}: '{field}' must be a non-empty string")
    return {"role": "user", "content": text}


# ---- the formats ------------------------------------------------------------------------------------------


class PreferenceConverter(Converter):
    """Base of the preference formats: records from a JSONL file, a JSON list, or a Hugging Face dataset (a
    `save_to_disk` directory, a parquet/arrow file, or INPUT=parquet|json|csv|arrow with --hf-data-files)."""

    columns: tuple[str, ...] = SIDES  # what a dataset needs

    def __init__(self, input_path: Path | str, image_root: Path | None, data_files: list[str] | None = None,
                 split: str = "train", cache_dir: str | None = None) -> None:
        path = Path(input_path)
        self.hf: HfInput | None = None
        self.rows: Any = None
        self.entries: list[Any] | None = None
        if data_files or path.is_dir() or path.suffix.lower() in HF_SUFFIXES:
            self.hf = hf_input(input_path, data_files)
            super().__init__(self.hf.folder, image_root)
            self.rows = load_hf_rows(self.hf, split, cache_dir)
            missing = [c for c in self.columns if c not in self.rows.column_names]
            if missing:
                raise InputError(f"{self.hf.spec}: dataset columns {list(self.rows.column_names)} lack "
                                 f"{', '.join(map(repr, missing))}, which {self.name} needs")
            return
        super().__init__(path, image_root)
        if not self.input.is_file():
            raise InputError(f"{self.input} is not a file; {self.name} takes a JSONL file, a JSON list or a "
                             "Hugging Face dataset")
        self.entries, _ = read_json_list(
            self.input, f"{self.name} expects a JSON list of records or one record a line (JSONL)", errors="replace")

    def default_root(self) -> Path:
        return self.hf.folder if self.hf is not None else self.input.parent

    def default_source(self) -> str:
        return self.hf.source if self.hf is not None else self.input.stem

    def total(self) -> int | None:
        if self.rows is not None:
            return len(self.rows)
        return None if self.entries is None else len(self.entries)

    def items(self) -> Iterator[Item]:
        if self.rows is not None:
            for i in range(len(self.rows)):
                yield Item(i, f"row {i}", i)
        elif self.entries is not None:
            for i, entry in enumerate(self.entries):
                name = f" (id {entry['id']})" if isinstance(entry, dict) and entry.get("id") is not None else ""
                yield Item(i, f"entry {i}{name}", entry)
        else:
            yield from _jsonl_items(self.input)

    def convert(self, item: Item) -> Converted:
        if self.rows is not None:
            obj = hf_row(self.rows, item.data)
        else:
            obj = item.data if self.entries is not None else _parse_line(item)
        if not isinstance(obj, dict):
            raise Skip("bad_json", f"{item.where}: expected a JSON object, got {type(obj).__name__}")
        _present(obj, item.where)
        return self.convert_record(obj, item.where)

    def convert_record(self, obj: dict[str, Any], where: str) -> Converted:
        """One record (both sides present) -> Converted, or Skip."""
        raise NotImplementedError


class TrlPreference(PreferenceConverter):
    """`trl-preference`: TRL's preference records, conversational (explicit or implicit prompt) or standard."""

    name = "trl-preference"

    def convert_record(self, obj: dict[str, Any], where: str) -> Converted:
        prompt, chosen, rejected = obj.get("prompt"), obj["chosen"], obj["rejected"]
        if prompt is None:
            prompt, chosen, rejected = split_implicit(chosen, rejected, where)
        elif isinstance(prompt, str):
            prompt = [_user_turn(prompt, "prompt", where)]
        return convert_pair(prompt, chosen, rejected, _images(obj), self.root, where, _sample_id(obj))


class LlamaFactoryPreference(PreferenceConverter):
    """`llamafactory-preference`: LLaMA-Factory's sharegpt (`conversations`), OpenAI-style (`messages`) or alpaca
    (`instruction`) preference records."""

    name = "llamafactory-preference"

    def convert_record(self, obj: dict[str, Any], where: str) -> Converted:
        turns = next((obj[k] for k in ("conversations", "messages") if obj.get(k) is not None), None)
        if turns is None:
            if obj.get("instruction") is None:
                raise Skip("bad_schema", f"{where}: no 'conversations', 'messages' or 'instruction' (the prompt)")
            turns = []
            for pair in _as_list(obj.get("history")):
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise Skip("bad_schema", f"{where}: 'history' holds [instruction, response] pairs")
                turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
            query = obj["instruction"] + (f"\n{obj['input']}" if obj.get("input") else "")
            turns.append(_user_turn(query, "instruction", where))
        if not isinstance(turns, list):
            raise Skip("bad_schema", f"{where}: the prompt's turns must be a list")
        system = obj.get("system")
        first = turns[0] if turns else None
        if isinstance(system, str) and system and not (isinstance(first, dict) and _role(first) == "system"):
            turns = [{"role": "system", "content": system}, *turns]
        return convert_pair(turns, obj["chosen"], obj["rejected"], _images(obj), self.root, where, _sample_id(obj))


class RlaifV(PreferenceConverter):
    """`rlaif-v`: RLAIF-V-style rows, `image`, `question`, `chosen`, `rejected`."""

    name = "rlaif-v"
    columns = ("question", *SIDES)

    def convert_record(self, obj: dict[str, Any], where: str) -> Converted:
        image = obj.get("image") if obj.get("image") is not None else obj.get("image_path")
        if image is None:
            raise Skip("missing_image", f"{where}: no 'image' (nor 'image_path')")
        prompt = [_user_turn(obj.get("question"), "question", where)]
        return convert_pair(prompt, obj["chosen"], obj["rejected"], _as_list(image), self.root, where,
                            _sample_id(obj))

