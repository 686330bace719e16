"""The chat and caption formats of `isaac-data make-shards`: `chat-jsonl`, `llava`, `hf-dataset` and
`image-folder` (docs/data_format.md). Converters build on data_tools/converters.py; data_tools/formats.py lists
them in FORMATS with the other formats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import interleaved
from .converters import (
    IMAGE_EXTENSIONS,
    IMAGE_MARKER,
    Converted,
    Converter,
    InputError,
    Item,
    Skip,
    _jsonl_items,
    _parse_line,
    convert_record,
    hf_input,
    hf_row,
    load_hf_rows,
    load_images,
    read_json_list,
)

CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")


def convert_caption(image_ref: Any, caption: Any, root: Path, where: str, sample_id: str | None) -> Converted:
    """An image and its caption -> a document: the image, then the caption text."""
    if not isinstance(caption, str) or not caption.strip():
        raise Skip("no_caption", f"{where}: no caption text")
    if IMAGE_MARKER in caption:
        raise Skip("image_count_mismatch", f"{where}: the caption contains {IMAGE_MARKER!r}, read as an image")
    sample: dict[str, Any] = {} if sample_id is None else {"id": sample_id}
    sample["segments"] = [{"type": "image"}, {"type": "text", "text": caption.strip()}]
    return Converted(sample, load_images([image_ref], root, where))


class ChatJsonl(Converter):
    """`chat-jsonl`: one JSON object a line with `messages` (Isaac model card format) and optional `images`, or
    LLaVA `conversations`; a line holding `segments` (the shard format's document form) becomes a document, so a
    file mixing both kinds converts (data_tools/interleaved.py)."""

    name = "chat-jsonl"

    def __init__(self, input_path: Path, image_root: Path | None) -> None:
        super().__init__(input_path, image_root)
        if not self.input.is_file():
            raise InputError(f"{self.input} is not a file; chat-jsonl takes a .jsonl file")

    def items(self) -> Iterator[Item]:
        return _jsonl_items(self.input)

    def convert(self, item: Item) -> Converted:
        obj = _parse_line(item)
        if isinstance(obj, dict) and obj.get("segments") is not None and obj.get("messages") is None:
            return interleaved.convert_segments_record(obj, self.root, item.where, interleaved.CHAT_JSONL_DOCUMENTS)
        return convert_record(obj, self.root, item.where)


class Llava(Converter):
    """`llava`: a JSON list of {"id", "image", "conversations": [{"from", "value"}]} (or the same as JSONL)."""

    name = "llava"

    def __init__(self, input_path: Path, image_root: Path | None) -> None:
        super().__init__(input_path, image_root)
        if not self.input.is_file():
            raise InputError(f"{self.input} is not a file; llava takes a LLaVA-style .json (or .jsonl) file")
        self.entries: list[Any] | None
        self.entries, head = read_json_list(
            self.input, "llava expects a JSON list of entries (or one entry a line as JSONL)")
        if self.entries is None and not head.startswith("{"):
            raise InputError(f"{self.input} holds neither a JSON list nor JSON lines; llava expects "
                             '[{"id": ..., "image": ..., "conversations": [...]}, ...]')

    def total(self) -> int | None:
        return None if self.entries is None else len(self.entries)

    def items(self) -> Iterator[Item]:
        if self.entries is None:
            yield from _jsonl_items(self.input)
            return
        for i, entry in enumerate(self.entries):
            name = f" (id {entry['id']})" if isinstance(entry, dict) and "id" in entry else ""
            yield Item(i, f"entry {i}{name}", entry)

    def convert(self, item: Item) -> Converted:
        obj = _parse_line(item) if self.entries is None else item.data
        if isinstance(obj, dict) and "conversations" not in obj:
            raise Skip("bad_schema", f"{item.where}: no 'conversations' list")
        return convert_record(obj, self.root, item.where)


class HfDataset(Converter):
    """`hf-dataset`: a dataset saved with `save_to_disk`, or local data files (`--hf-data-files`, INPUT the
    builder: parquet/json/csv/arrow; or INPUT one such file). Columns: `messages` (+ `images`/`image`),
    `conversations` (LLaVA, + `image`/`images`) or `image` + `caption`/`text`. Images are read undecoded.
    (OBELICS- and MMC4-style datasets: `--format obelics` / `mmc4`, data_tools/interleaved.py.)"""

    name = "hf-dataset"

    def __init__(self, input_path: Path | str, image_root: Path | None, data_files: list[str] | None = None,
                 split: str = "train", cache_dir: str | None = None) -> None:
        source = hf_input(input_path, data_files)
        self.data_files = source.data_files
        super().__init__(source.folder, image_root)
        self._source = source.source
        self.rows = load_hf_rows(source, split, cache_dir)
        self.columns = list(self.rows.column_names)
        self.kind = self._kind(self.columns)

    def _kind(self, columns: list[str]) -> str:
        """"chat" or "caption" from the column names; InputError when neither fits."""
        if "messages" in columns or "conversations" in columns:
            return "chat"
        if "image" in columns and ("caption" in columns or "text" in columns):
            return "caption"
        hint = next((f"; these look like {c.name} documents: use --format {c.name}"
                     for c in (interleaved.Obelics, interleaved.Mmc4) if set(c.columns) <= set(columns)), "")
        raise InputError(f"dataset columns {columns} are not supported; hf-dataset needs 'messages' (+ 'images'), "
                         f"'conversations' (+ 'image') or 'image' + 'caption'/'text'{hint}")

    def default_root(self) -> Path:
        return self.input  # the dataset directory, or the folder of the (first) data file

    def default_source(self) -> str:
        return self._source

    def total(self) -> int | None:
        return len(self.rows)

    def items(self) -> Iterator[Item]:
        for i in range(len(self.rows)):
            yield Item(i, f"row {i}", i)

    def convert(self, item: Item) -> Converted:
        row = hf_row(self.rows, item.data)
        if self.kind == "chat":
            return convert_record(row, self.root, item.where)
        caption = row.get("caption") if row.get("caption") is not None else row.get("text")
        sample_id = None if row.get("id") is None else str(row["id"])
        if row.get("image") is None:
            raise Skip("missing_image", f"{item.where}: the image column is empty")
        return convert_caption(row["image"], caption, self.root, item.where, sample_id)


class ImageFolder(Converter):
    """`image-folder`: images with captions in `NAME.txt` beside `NAME.jpg`, or in a `captions.jsonl` /
    `metadata.jsonl` at the folder's root ({"file_name", "text" | "caption"}). Makes documents."""

    name = "image-folder"

    def __init__(self, input_path: Path, image_root: Path | None) -> None:
        super().__init__(input_path, image_root)
        if not self.input.is_dir():
            raise InputError(f"{self.input} is not a directory; image-folder takes a folder of images")
        self.metadata = next((self.input / n for n in CAPTION_FILES if (self.input / n).is_file()), None)
        self.files: list[Path] = []
        if self.metadata is None:
            self.files = sorted(p.relative_to(self.input) for p in self.input.rglob("*")
                                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not self.files:
                raise InputError(f"{self.input} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no "
                                 f"{' or '.join(CAPTION_FILES)}")

    def default_root(self) -> Path:
        return self.input

    def default_source(self) -> str:
        return self.input.resolve().name

    def total(self) -> int | None:
        return None if self.metadata else len(self.files)

    def items(self) -> Iterator[Item]:
        if self.metadata is not None:
            yield from _jsonl_items(self.metadata)
            return
        for i, rel in enumerate(self.files):
            yield Item(i, str(rel), rel.as_posix())

    def convert(self, item: Item) -> Converted:
        if self.metadata is None:
            rel = Path(item.data)
            txt = self.root / rel.with_suffix(".txt")
            if not txt.is_file():
                raise Skip("no_caption", f"{item.where}: no caption file {rel.with_suffix('.txt')} beside it")
            caption = txt.read_text(encoding="utf-8", errors="replace")
            return convert_caption(item.data, caption, self.root, item.where, rel.with_suffix("").as_posix())
        obj = _parse_line(item)
        where = f"{self.metadata.name} {item.where}"
        if not isinstance(obj, dict) or not isinstance(obj.get("file_name"), str):
            raise Skip("bad_schema", f"{where}: expected an object with 'file_name' and 'text' (or 'caption')")
        caption = obj.get("text") if obj.get("text") is not None else obj.get("caption")
        sample_id = Path(obj["file_name"]).with_suffix("").as_posix()
        return convert_caption(obj["file_name"], caption, self.root, where, sample_id)
