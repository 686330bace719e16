"""Readers of `isaac-data make-shards`: each input format -> Isaac samples (docs/data_format.md).

A converter has two halves, so that the slow part runs in worker processes:

- `items()` runs in the main process and yields small picklable `Item`s in input order (a JSONL line, a LLaVA
  entry, a dataset row number, an image path; for coco, data_tools/coco.py, an image's annotations of one category
  or one referring expression; for the interleaved formats, data_tools/interleaved.py, a document);
- `convert(item)` runs in a worker: it parses and checks the record, reads and verifies its images, and returns a
  `Converted` sample or raises `Skip` with a reason (counted in the report, never fatal).

Input that cannot be used at all (a missing file, an unknown format, a dataset without usable columns) raises
`InputError` from the constructor, with a message that names the cause and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isaac_train.data.records import (  # noqa: F401  (chat records: the library's reader, re-exported here)
    IMAGE_EXTENSIONS,
    IMAGE_MARKER,
    KEPT_FORMATS,
    ROLES,
    Converted,
    Skip,
    check_image,
    convert_conversation,
    convert_record,
    load_images,
    read_image_ref,
    split_markers,
)

HF_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}
CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")


class InputError(Exception):
    """Input that cannot be converted at all; the message says why and what to do."""


@dataclass(frozen=True)
class Item:
    """One unit of work: its running number in the input, where it is (for messages) and its raw data."""

    index: int
    where: str
    data: Any


def convert_caption(image_ref: Any, caption: Any, root: Path, where: str, sample_id: str | None) -> Converted:
    """An image and its caption -> a document: the image, then the caption text."""
    if not isinstance(caption, str) or not caption.strip():
        raise Skip("no_caption", f"{where}: no caption text")
    if IMAGE_MARKER in caption:
        raise Skip("image_count_mismatch", f"{where}: the caption contains {IMAGE_MARKER!r}, read as an image")
    sample: dict[str, Any] = {} if sample_id is None else {"id": sample_id}
    sample["segments"] = [{"type": "image"}, {"type": "text", "text": caption.strip()}]
    return Converted(sample, load_images([image_ref], root, where))


# ---- the formats ------------------------------------------------------------------------------------------


class Converter:
    """Base class: `items()` in the main process, `convert(item)` in workers; `total()` if known."""

    name = ""

    def __init__(self, input_path: Path, image_root: Path | None) -> None:
        self.input = Path(input_path)
        if not self.input.exists():
            raise InputError(f"input {self.input} does not exist; check the path")
        self.root = Path(image_root) if image_root is not None else self.default_root()
        if not self.root.is_dir():
            raise InputError(f"image root {self.root} is not a directory; pass --image-root DIR")

    def default_root(self) -> Path:
        """Where relative image paths start when --image-root is not given."""
        return self.input.parent

    def default_source(self) -> str:
        """The `source` stored in each sample when --source is not given."""
        return self.input.stem

    def total(self) -> int | None:
        """How many items `items()` yields, when known without reading the input (for the progress bar)."""
        return None

    def items(self) -> Iterator[Item]:
        """The work items in input order (main process)."""
        raise NotImplementedError

    def convert(self, item: Item) -> Converted:
        """One item -> a sample, or Skip (worker process)."""
        raise NotImplementedError


def _jsonl_items(path: Path) -> Iterator[Item]:
    """Non-blank lines of a JSONL file, numbered in order (the JSON is parsed in the workers)."""
    index = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield Item(index, f"line {lineno}", line)
                index += 1


def _parse_line(item: Item) -> Any:
    """The JSON value of a line item; Skip("bad_json") when it does not parse."""
    try:
        return json.loads(item.data)
    except json.JSONDecodeError as err:
        raise Skip("bad_json", f"{item.where}: not valid JSON ({err})") from err


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
        with open(self.input, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        self.entries: list[Any] | None = None
        if head.startswith("["):
            try:
                self.entries = json.loads(self.input.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise InputError(f"{self.input} is not valid JSON ({err}); llava expects a JSON list of entries "
                                 "(or one entry a line as JSONL)") from err
        elif not head.startswith("{"):
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


@dataclass(frozen=True)
class HfInput:
    """Where a Hugging Face dataset input is: `spec` as given, the `builder` (parquet/json/csv/arrow) and
    `data_files` for data files (None for a `save_to_disk` directory), the folder relative image paths start
    from, and the default source name."""

    spec: str
    builder: str | None
    data_files: list[str] | None
    folder: Path
    source: str


def hf_input(input_path: Path | str, data_files: list[str] | None = None) -> HfInput:
    """INPUT (+ --hf-data-files) of an HF dataset: a `save_to_disk` directory, one data file, or with data files
    the builder's name. InputError for an unknown builder."""
    spec = str(input_path)
    if data_files:
        if spec not in set(HF_FILE_BUILDERS.values()):
            raise InputError(f"with --hf-data-files, INPUT names the file type (parquet, json, csv or arrow), "
                             f"got {spec!r}")
        return HfInput(spec, spec, list(data_files), Path(data_files[0]).parent, Path(data_files[0]).stem)
    path = Path(spec)
    builder = HF_FILE_BUILDERS.get(path.suffix.lower()) if path.is_file() else None
    if builder:
        return HfInput(spec, builder, [spec], path.parent, path.stem)
    return HfInput(spec, None, None, path, path.name)


def load_hf_rows(source: HfInput, split: str = "train", cache_dir: str | None = None) -> Any:
    """The dataset's `split` in arrow format (raw rows: images stay undecoded {"bytes", "path"} dicts);
    InputError when `datasets` is missing or the dataset does not load."""
    try:
        import datasets
    except ImportError as err:
        raise InputError("Hugging Face datasets need the `datasets` package: pip install -e '.[data]'") from err
    try:
        if source.data_files:
            ds = datasets.load_dataset(source.builder, data_files=source.data_files, split=split, cache_dir=cache_dir)
        else:
            ds = datasets.load_from_disk(source.spec)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"cannot load the dataset {source.spec} ({type(err).__name__}: {err}); pass a directory "
                         "written by Dataset.save_to_disk, or INPUT=parquet|json|csv|arrow with "
                         "--hf-data-files FILES") from err
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{source.spec} has splits {sorted(ds)}, not {split!r}; pick one with --hf-split")
        ds = ds[split]
    return ds.with_format("arrow")


def hf_row(rows: Any, index: int) -> dict[str, Any]:
    """Row `index` of an arrow-format dataset as a plain dict."""
    return rows[index].to_pylist()[0]


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


FORMATS: dict[str, type[Converter]] = {c.name: c for c in (ChatJsonl, Llava, HfDataset, ImageFolder)}


def build_converter(fmt: str, input_path: str | Path, image_root: str | Path | None = None,
                    **options: Any) -> Converter:
    """The converter of `fmt` for `input_path`; `options` go to its constructor: data_files, split, cache_dir for
    hf-dataset (and obelics, mmc4, refcoco); group, refs, refs_split, include_crowd for coco (data_tools/coco.py);
    drop_missing_images, url_names for documents-jsonl, obelics and mmc4, image_position for mmc4
    (data_tools/interleaved.py); data_files, split, cache_dir for the preference formats (data_tools/preference.py)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = Path(image_root) if image_root is not None else None
    if fmt == HfDataset.name:
        return HfDataset(input_path, root, **options)
    return FORMATS[fmt](Path(input_path), root, **options)


# coco (data_tools/coco.py), refcoco (data_tools/refcoco.py), the interleaved formats (data_tools/interleaved.py)
# and the preference formats (data_tools/preference.py) build on the classes above and add themselves to FORMATS.
from . import coco, interleaved, preference, refcoco  # noqa: E402,F401
