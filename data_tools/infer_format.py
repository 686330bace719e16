"""`isaac-data make-shards` without --format: which format an input is, from a cheap look at it.

- a JSONL file (or a .json holding JSON lines): the keys of its first non-blank record that parses as an object:
  `segments` -> documents-jsonl, `messages` -> chat-jsonl, `conversations` -> llava, `texts` + `images` -> obelics,
  `text_list` + `image_info` -> mmc4, `image` + `caption`/`text` -> hf-dataset (captions), COCO's `images` +
  `annotations` + `categories` -> coco;
- a .json file holding a JSON list whose first entry has `conversations` -> llava; one JSON object (pretty-printed)
  with COCO's keys -> coco;
- a directory written by `save_to_disk` (dataset_info.json / dataset_dict.json), a parquet or arrow file, or
  --hf-data-files: its columns (`texts` + `images` -> obelics, `text_list` + `image_info` -> mmc4, RefCOCO's
  `image` + `answer` + `bbox` (lmms-lab) or `sentences` + `bbox` + `image_path` (jxu124) -> refcoco, else
  hf-dataset);
- a directory of parquet files with RefCOCO's columns (a download of the hub's dataset repository) -> refcoco;
- any other directory holding images (or captions.jsonl / metadata.jsonl) -> image-folder.

A record, a JSON list's first entry or a dataset with `chosen` and `rejected` is a preference pair
(data_tools/preference.py `preference_kind`, looked at first): with `conversations`, `messages` or `instruction`
-> llamafactory-preference, with `question` -> rlaif-v, else (`prompt`, or TRL's implicit prompt) -> trl-preference.

Anything else is refused with InputError naming the formats (--format is then needed).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from .basic import CAPTION_FILES
from .converters import IMAGE_EXTENSIONS, InputError
from .formats import FORMATS
from .interleaved import Mmc4, Obelics
from .preference import preference_kind
from .refcoco import LAYOUTS, Refcoco

PEEK_LINES = 1000  # non-blank lines tried for the first record that parses
LIST_HEAD = 1 << 20  # bytes of a JSON list read to find its first entry
COCO_KEYS = {"images", "annotations", "categories"}
RECORD_KINDS = (  # (format, the keys a record needs), first match wins
    ("documents-jsonl", ("segments",)),
    ("chat-jsonl", ("messages",)),
    ("llava", ("conversations",)),
    ("obelics", ("texts", "images")),
    ("mmc4", ("text_list", "image_info")),
    ("hf-dataset", ("image", "caption")),
    ("hf-dataset", ("image", "text")),
)
DATASET_KINDS = (*((c.name, c.columns) for c in (Obelics, Mmc4)),  # dataset columns -> format
                 *((Refcoco.name, columns) for columns in LAYOUTS.values()))


def _keys(keys: tuple[str, ...]) -> str:
    return " and ".join(f"'{k}'" for k in keys)


def _refuse(input_path: Path | str, why: str) -> InputError:
    return InputError(f"cannot tell the format of {input_path}: {why}; pass --format, one of {', '.join(FORMATS)}")


def record_format(obj: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """The format a JSON record's keys say, with those keys; None when none fits."""
    if COCO_KEYS <= set(obj):
        return "coco", tuple(sorted(COCO_KEYS))
    found = preference_kind(obj)  # `chosen` + `rejected`: before `messages` / `conversations`, which pairs hold too
    if found is not None:
        return found
    for fmt, keys in RECORD_KINDS:
        if all(obj.get(k) is not None for k in keys):
            return fmt, keys
    return None


def dataset_format(columns: list[str]) -> str:
    """The format of a Hugging Face dataset with these columns (hf-dataset unless OBELICS, MMC4, RefCOCO or
    preference columns)."""
    found = preference_kind(columns)
    if found is not None:
        return found[0]
    if "messages" in columns or "conversations" in columns:
        return "hf-dataset"
    return next((fmt for fmt, need in DATASET_KINDS if set(need) <= set(columns)), "hf-dataset")


def file_columns(path: Path) -> list[str] | None:
    """The column names of a parquet, arrow or csv file; None when they cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return list(pq.read_schema(path).names)
        if suffix == ".arrow":
            with open(path, "rb") as f:
                try:
                    return list(pa.ipc.open_stream(f).schema.names)  # what datasets writes
                except pa.ArrowInvalid:
                    f.seek(0)
                    return list(pa.ipc.open_file(f).schema.names)
        if suffix == ".csv":
            with open(path, encoding="utf-8", errors="replace") as f:
                return [c.strip() for c in f.readline().split(",")]
    except (OSError, pa.ArrowException):
        return None
    return None


def _saved_dataset_columns(directory: Path) -> list[str] | None:
    """The columns of a `save_to_disk` directory (its dataset_info.json; for a DatasetDict the train split's, else
    the first split's); None when it is not one."""
    info = directory / "dataset_info.json"
    if (directory / "dataset_dict.json").is_file():
        try:
            splits = json.loads((directory / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        split = "train" if "train" in splits else (splits[0] if splits else None)
        info = directory / str(split) / "dataset_info.json"
    elif not (directory / "state.json").is_file():
        return None
    try:
        return list(json.loads(info.read_text())["features"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _directory_format(path: Path) -> tuple[str, str]:
    columns = _saved_dataset_columns(path)
    if columns is not None:
        fmt = dataset_format(columns)
        return fmt, f"{path} is a dataset written by save_to_disk with columns {columns}"
    parquet = next(path.rglob("*.parquet"), None)
    columns = file_columns(parquet) if parquet is not None else None
    if columns is not None and dataset_format(columns) == Refcoco.name:
        return Refcoco.name, f"{path} holds parquet files ({parquet.relative_to(path)}, ...) with columns {columns}"
    metadata = next((n for n in CAPTION_FILES if (path / n).is_file()), None)
    if metadata:
        return "image-folder", f"{path} is a folder with {metadata}"
    image = next((p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()), None)
    if image is not None:
        return "image-folder", f"{path} is a folder holding images ({image.relative_to(path)}, ...)"
    raise _refuse(path, "a directory that is neither a save_to_disk dataset nor a folder of images")


def _list_format(path: Path, head: str) -> tuple[str, str]:
    """A file holding a JSON list: llava when its first entry has 'conversations'."""
    start = head.index("[") + 1
    while start < len(head) and head[start].isspace():
        start += 1
    try:
        entry, _ = json.JSONDecoder().raw_decode(head, start)
    except json.JSONDecodeError:
        return "llava", f"{path.name} holds a JSON list (its first entry is longer than {LIST_HEAD:,} bytes)"
    found = preference_kind(entry) if isinstance(entry, dict) else None
    if found is not None:
        return found[0], f"{path.name} is a JSON list whose first entry has {_keys(found[1])}"
    if isinstance(entry, dict) and "conversations" in entry:
        return "llava", f"{path.name} is a JSON list whose first entry has 'conversations'"
    keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
    raise _refuse(path, f"a JSON list whose first entry has keys {keys}; llava needs 'conversations'")


def _text_file_format(path: Path) -> tuple[str, str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(LIST_HEAD)
    first = head.lstrip().split("\n", 1)[0].strip()
    if first.startswith("["):
        return _list_format(path, head)
    if first == "{":  # one pretty-printed JSON object, not JSON lines: a COCO file?
        return _object_format(path)
    tried = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            tried += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                found = record_format(obj)
                if found is None:
                    raise _refuse(path, f"line {lineno}, its first record, has keys {sorted(obj)}")
                return found[0], f"line {lineno} of {path.name} has {_keys(found[1])}"
            if tried >= PEEK_LINES:
                break
    raise _refuse(path, f"no JSON object in its first {tried} non-blank line(s)")


def _object_format(path: Path) -> tuple[str, str]:
    """A file holding one (pretty-printed) JSON object: coco when it has COCO's keys."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _refuse(path, f"not JSON lines and not one JSON value ({err})") from err
    if isinstance(obj, dict) and COCO_KEYS <= set(obj):
        return "coco", f"{path.name} has COCO's 'annotations', 'categories' and 'images'"
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise _refuse(path, f"one JSON object with keys {keys}")


def infer_format(input_path: str | Path, data_files: list[str] | None = None) -> tuple[str, str]:
    """(format, why) for `input_path` (with --hf-data-files: INPUT is the builder and the files are looked at).
    InputError when the input does not exist or cannot be placed."""
    if data_files:
        files = [f for pattern in data_files for f in sorted(glob.glob(pattern))] or list(data_files)
        columns = file_columns(Path(files[0])) if Path(files[0]).is_file() else None
        if columns is None:
            return "hf-dataset", "--hf-data-files given"
        return dataset_format(columns), f"--hf-data-files {files[0]} has columns {columns}"
    path = Path(input_path)
    if not path.exists():
        raise InputError(f"input {path} does not exist; check the path")
    if path.is_dir():
        return _directory_format(path)
    if path.suffix.lower() in (".parquet", ".arrow", ".csv"):
        columns = file_columns(path)
        if columns is None:
            raise _refuse(path, "its columns cannot be read")
        return dataset_format(columns), f"{path.name} has columns {columns}"
    return _text_file_format(path)
