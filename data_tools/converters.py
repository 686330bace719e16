"""What the readers of `isaac-data make-shards` share: each input format -> Isaac samples (docs/data_format.md).
The formats build on the classes and helpers here, one family a module (data_tools/basic.py: chat-jsonl, llava,
hf-dataset, image-folder; coco.py, refcoco.py, interleaved.py, preference.py); data_tools/formats.py names them
all (FORMATS, build_converter) and is the one module that imports every format.

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


class InputError(Exception):
    """Input that cannot be converted at all; the message says why and what to do."""


@dataclass(frozen=True)
class Item:
    """One unit of work: its running number in the input, where it is (for messages) and its raw data."""

    index: int
    where: str
    data: Any


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


def read_json_list(path: Path, expects: str, errors: str = "strict") -> tuple[list[Any] | None, str]:
    """A file holding a JSON list (-> the list) or JSON lines (-> None: read it with _jsonl_items), and the head
    of its text (to tell other contents apart); a list that does not parse is an InputError saying `expects`."""
    with open(path, encoding="utf-8", errors=errors) as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        return None, head
    try:
        return json.loads(path.read_text(encoding="utf-8")), head
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); {expects}") from err


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
