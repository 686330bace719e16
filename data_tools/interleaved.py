"""Interleaved documents in: `documents-jsonl`, `obelics` and `mmc4` (docs/data_format.md, "Interleaved documents").

Every record becomes the shard format's document, `segments` (text and image items in reading order; the loss is
on all its text):

- `documents-jsonl`: the shard format's own document records, one a line: `segments` (an image item names its
  file with `image` or `path`, or takes the next of the record's `images`; `<image>` in a text item is an image,
  as in chat records), optional `id`. (`chat-jsonl` converts such lines too, so files mixing both kinds work.)
- `obelics`: `texts` and `images`, parallel lists where position i holds a text or an image and the other is
  null, from JSONL or a Hugging Face dataset (a `save_to_disk` directory, a parquet/arrow file, --hf-data-files).
  Consecutive texts are joined with a blank line.
- `mmc4`: `text_list` (the sentences) and `image_info` ({`image_name` | `raw_url` | `image_base64`,
  `matched_text_index`, ...}), JSONL or a Hugging Face dataset. Each image goes just before its matched sentence
  (OpenFlamingo's reading of MMC4, the default) or just after it (`--mmc4-image-position after`); images matched to
  the same sentence keep their `image_info` order; sentences are joined with a space.

Images are paths (relative to --image-root), embedded bytes (Hugging Face image dicts {"bytes", "path"}, PIL images,
MMC4's `image_base64`), or http(s) URLs already downloaded into --image-root, found by `url_file` (`--url-names`).

An image that is missing, unreadable or too large skips its document, counted under the image's reason; with
--drop-missing-images only that image is left out, and make-shards counts it under `dropped_images`. A document
with no content is skipped as `empty_document`, one without text as `no_text`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isaac_train.data.records import _as_list, _content_items

from .converters import (
    IMAGE_EXTENSIONS,
    IMAGE_MARKER,
    Converted,
    Converter,
    HfInput,
    InputError,
    Item,
    Skip,
    _jsonl_items,
    _parse_line,
    check_image,
    hf_input,
    hf_row,
    load_hf_rows,
    read_image_ref,
)

URL_NAMES = ("sha1", "basename")
MMC4_POSITIONS = ("before", "after")
DROPPABLE = ("missing_image", "corrupt_image", "image_too_large")  # what --drop-missing-images leaves out
HF_SUFFIXES = (".parquet", ".arrow")

Piece = tuple[str, Any]  # ("text", str) or ("image", an image reference)


@dataclass(frozen=True)
class DocumentOptions:
    """How a document's images are read: leave out the unusable ones (else the document is skipped), and how a
    URL names its downloaded file (None: URLs are not looked up, as for chat records)."""

    drop_missing_images: bool = False
    url_names: str | None = "sha1"


CHAT_JSONL_DOCUMENTS = DocumentOptions(url_names=None)  # `segments` lines of chat-jsonl: chat records' rules


# ---- images -----------------------------------------------------------------------------------------------


def url_file(url: str, root: Path, rule: str, where: str) -> str:
    """The file (relative to `root`) a downloaded `url` was saved as; Skip("missing_image") when it is absent.

    `sha1`: the SHA-1 hex digest of the URL's UTF-8 bytes, exactly as written in the record, with any one of the
    image extensions (.jpg, .jpeg, .png, .webp, .bmp, .gif, .tif, .tiff) or none, looked up in that order.
    `basename`: the last component of the URL's path, percent-decoded, without the query or fragment (what
    `wget URL` writes); distinct URLs with the same basename collide, so prefer sha1 for web crawls."""
    if rule == "sha1":
        stem = hashlib.sha1(url.encode("utf-8")).hexdigest()
        for name in (stem, *(stem + ext for ext in IMAGE_EXTENSIONS)):
            if (root / name).is_file():
                return name
        raise Skip("missing_image", f"{where}: {url} is not downloaded: no file {stem}[.jpg|.png|...] in {root} "
                                    "(--url-names sha1: the SHA-1 of the URL)")
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or "/" in name or name in (".", "..") or not (root / name).is_file():
        raise Skip("missing_image", f"{where}: {url} is not downloaded: no file {name or '(empty name)'!r} in "
                                    f"{root} (--url-names basename)")
    return name


def resolve_image(ref: Any, root: Path, url_names: str | None, where: str) -> Any:
    """A document image reference ready for read_image_ref: a downloaded URL becomes its local file name, MMC4's
    {"base64": ...} its bytes; anything else stays as it is."""
    if isinstance(ref, dict) and "base64" in ref:
        try:
            return base64.b64decode(ref["base64"])
        except (binascii.Error, TypeError, ValueError) as err:
            raise Skip("corrupt_image", f"{where}: image_base64 does not decode ({err})") from err
    url = ref.get("path") if isinstance(ref, dict) and not ref.get("bytes") else ref
    if url_names is None or not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return ref
    return url_file(url, root, url_names, where)


def _label(ref: Any) -> str | None:
    """A short name of an image reference for messages."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict):
        return ref.get("path") or ref.get("name")
    return None


def build_document(pieces: list[Piece], root: Path, where: str, options: DocumentOptions, joiner: str | None,
                   sample_id: Any = None) -> Converted:
    """Text and image pieces in reading order -> a `segments` document with its images read and checked.

    `joiner` (not None) joins consecutive text pieces into one text item. Skip("empty_document") without pieces,
    Skip("no_text") without text (checked before any image is read); an unusable image skips the document under
    its reason, or with options.drop_missing_images is left out and listed in Converted.dropped."""
    if not pieces:
        raise Skip("empty_document", f"{where}: the document has no text and no images")
    if not any(kind == "text" and value.strip() for kind, value in pieces):
        raise Skip("no_text", f"{where}: the document has no text (nothing to learn)")
    segments: list[dict[str, Any]] = []
    images: list[tuple[str, bytes]] = []
    dropped: list[tuple[str, str]] = []
    k = 0
    for kind, value in pieces:
        if kind == "text":
            if joiner is not None and segments and segments[-1]["type"] == "text":
                segments[-1]["text"] += joiner + value
            else:
                segments.append({"type": "text", "text": value})
            continue
        name = _label(value)
        label = f"{where} image {k}" + (f" ({name:.200})" if name else "")
        k += 1
        try:
            data = read_image_ref(resolve_image(value, root, options.url_names, label), root, label)
            ext, data = check_image(data, label)
        except Skip as skip:
            if not options.drop_missing_images or skip.reason not in DROPPABLE:
                raise
            dropped.append((skip.reason, str(skip)))
            continue
        segments.append({"type": "image"})
        images.append((f"{len(images)}.{ext}", data))
    sample: dict[str, Any] = {} if sample_id is None else {"id": sample_id}
    sample["segments"] = segments
    return Converted(sample, images, dropped)


def _sample_id(obj: dict[str, Any]) -> Any:
    """The record's `id` as stored in the sample (an int or a string), or None."""
    value = obj.get("id")
    return value if value is None or isinstance(value, (int, str)) else str(value)


def _web_text(text: Any, where: str) -> str:
    """A text of a web document (OBELICS, MMC4): a string without `<image>`, which Isaac would read as an image."""
    if not isinstance(text, str):
        raise Skip("bad_schema", f"{where} is a {type(text).__name__}, not a string")
    if IMAGE_MARKER in text:
        raise Skip("image_count_mismatch", f"{where} contains {IMAGE_MARKER!r}, which Isaac reads as an image")
    return text


# ---- the record layouts -----------------------------------------------------------------------------------


def convert_segments_record(obj: Any, root: Path, where: str, options: DocumentOptions) -> Converted:
    """A shard-format document record ({"segments": [...], "images": [...], "id"}) -> Converted."""
    if not isinstance(obj, dict):
        raise Skip("bad_json", f"{where}: expected a JSON object, got {type(obj).__name__}")
    segments = obj.get("segments")
    if segments is None:
        hint = " (a conversation: use --format chat-jsonl)" if "messages" in obj or "conversations" in obj else ""
        raise Skip("bad_schema", f"{where}: no 'segments' in the record{hint}")
    if not isinstance(segments, list):
        raise Skip("bad_schema", f"{where}: 'segments' must be a list of text/image items")
    items, refs = _content_items(segments, f"{where} segments")
    images = _as_list(obj.get("images")) or _as_list(obj.get("image"))
    if not refs and images:  # images without any image item: before the text, as for captions
        items, refs = [{"type": "image"} for _ in images] + items, [None] * len(images)
    pathless = sum(r is None for r in refs)
    if pathless != len(images):
        raise Skip("image_count_mismatch", f"{where}: {pathless} image item(s)/marker(s) without a file but "
                                           f"{len(images)} image(s) listed")
    pending = iter(images)
    refs_in_order = iter([next(pending) if r is None else r for r in refs])
    pieces = [("image", next(refs_in_order)) if it["type"] == "image" else ("text", it["text"]) for it in items]
    return build_document(pieces, root, where, options, None, _sample_id(obj))


def obelics_pieces(obj: Any, where: str) -> list[Piece]:
    """An OBELICS record's `texts` / `images` (parallel, one of the two null at each position) -> pieces."""
    if not isinstance(obj, dict):
        raise Skip("bad_json", f"{where}: expected a JSON object, got {type(obj).__name__}")
    texts, images = obj.get("texts"), obj.get("images")
    if not isinstance(texts, (list, tuple)) or not isinstance(images, (list, tuple)):
        raise Skip("bad_schema", f"{where}: an OBELICS record needs 'texts' and 'images' lists")
    if len(texts) != len(images):
        raise Skip("bad_schema", f"{where}: 'texts' has {len(texts)} entries but 'images' {len(images)}; position i "
                                 "of the two lists holds a text or an image")
    pieces: list[Piece] = []
    for i, (text, image) in enumerate(zip(texts, images, strict=True)):
        if text is not None and image is not None:
            raise Skip("bad_schema", f"{where}: position {i} holds both a text and an image")
        if text is not None:
            if _web_text(text, f"{where} text {i}").strip():
                pieces.append(("text", text))
        elif image is not None:
            pieces.append(("image", image))
    return pieces


def _mmc4_ref(info: dict[str, Any]) -> Any:
    """An MMC4 image's reference: its embedded `image_base64`, else `image_name` (a file under --image-root, as
    MMC4's download_images.py saves it), else `raw_url` (looked up with --url-names)."""
    if info.get("image_base64"):
        return {"base64": info["image_base64"], "name": info.get("image_name")}
    return info.get("image_name") or info.get("raw_url")


def mmc4_pieces(obj: Any, where: str, position: str = "before") -> list[Piece]:
    """An MMC4 record's sentences with each image just before (or after) its `matched_text_index` sentence."""
    if not isinstance(obj, dict):
        raise Skip("bad_json", f"{where}: expected a JSON object, got {type(obj).__name__}")
    sentences, infos = obj.get("text_list"), obj.get("image_info")
    if not isinstance(sentences, (list, tuple)):
        raise Skip("bad_schema", f"{where}: an MMC4 record needs a 'text_list' list of sentences")
    if infos is None:
        infos = []
    if not isinstance(infos, (list, tuple)):
        raise Skip("bad_schema", f"{where}: 'image_info' must be a list of images")
    placed: list[list[Any]] = [[] for _ in sentences]
    for k, info in enumerate(infos):
        index = info.get("matched_text_index") if isinstance(info, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(sentences):
            raise Skip("bad_schema", f"{where}: image_info[{k}] has matched_text_index {index!r}, not an index "
                                     f"into text_list ({len(sentences)} sentences)")
        placed[index].append(_mmc4_ref(info))
    pieces: list[Piece] = []
    for j, sentence in enumerate(sentences):
        text = [("text", sentence)] if _web_text(sentence, f"{where} text_list[{j}]").strip() else []
        images = [("image", ref) for ref in placed[j]]
        pieces += images + text if position == "before" else text + images
    return pieces


# ---- the formats ------------------------------------------------------------------------------------------


class DocumentConverter(Converter):
    """Base of the interleaved formats: records from a JSONL file or, where `takes_hf`, a Hugging Face dataset
    (a `save_to_disk` directory, a parquet/arrow file, or INPUT=parquet|json|csv|arrow with --hf-data-files)."""

    takes_hf = True
    joiner: str | None = None
    columns: tuple[str, ...] = ()  # what a dataset needs

    def __init__(self, input_path: Path | str, image_root: Path | None, drop_missing_images: bool = False,
                 url_names: str = "sha1", data_files: list[str] | None = None, split: str = "train",
                 cache_dir: str | None = None) -> None:
        if url_names not in URL_NAMES:
            raise InputError(f"--url-names {url_names!r}: choose one of {', '.join(URL_NAMES)}")
        self.options = DocumentOptions(drop_missing_images, url_names)
        path = Path(input_path)
        self.hf: HfInput | None = None
        self.rows: Any = None
        if data_files or path.is_dir() or path.suffix.lower() in HF_SUFFIXES:
            if not self.takes_hf:
                raise InputError(f"{self.name} takes a JSONL file, one record a line, not {input_path}")
            self.hf = hf_input(input_path, data_files)
            super().__init__(self.hf.folder, image_root)
            self.rows = load_hf_rows(self.hf, split, cache_dir)
            missing = [c for c in self.columns if c not in self.rows.column_names]
            if missing:
                raise InputError(f"{self.hf.spec}: dataset columns {list(self.rows.column_names)} lack "
                                 f"{', '.join(map(repr, missing))}, which {self.name} needs")
        else:
            super().__init__(path, image_root)
            if not self.input.is_file():
                raise InputError(f"{self.input} is not a file; {self.name} takes a JSONL file")

    def default_root(self) -> Path:
        return self.hf.folder if self.hf is not None else self.input.parent

    def default_source(self) -> str:
        return self.hf.source if self.hf is not None else self.input.stem

    def total(self) -> int | None:
        return None if self.rows is None else len(self.rows)

    def items(self) -> Iterator[Item]:
        if self.rows is None:
            yield from _jsonl_items(self.input)
            return
        for i in range(len(self.rows)):
            yield Item(i, f"row {i}", i)

    def convert(self, item: Item) -> Converted:
        obj = _parse_line(item) if self.rows is None else hf_row(self.rows, item.data)
        return self.convert_record(obj, item.where)

    def convert_record(self, obj: Any, where: str) -> Converted:
        """One record -> Converted, or Skip."""
        raise NotImplementedError


class DocumentsJsonl(DocumentConverter):
    """`documents-jsonl`: the shard format's document records, one a line ({"segments": [...], "images"})."""

    name = "documents-jsonl"
    takes_hf = False

    def convert_record(self, obj: Any, where: str) -> Converted:
        return convert_segments_record(obj, self.root, where, self.options)


class Obelics(DocumentConverter):
    """`obelics`: OBELICS-style records, `texts` and `images` parallel lists with nulls."""

    name = "obelics"
    joiner = "\n\n"
    columns = ("texts", "images")

    def convert_record(self, obj: Any, where: str) -> Converted:
        return build_document(obelics_pieces(obj, where), self.root, where, self.options, self.joiner,
                              _sample_id(obj) if isinstance(obj, dict) else None)


class Mmc4(DocumentConverter):
    """`mmc4`: MMC4-style records, `text_list` sentences and `image_info` images matched to sentences."""

    name = "mmc4"
    joiner = " "
    columns = ("text_list", "image_info")

    def __init__(self, input_path: Path | str, image_root: Path | None, image_position: str = "before",
                 **options: Any) -> None:
        if image_position not in MMC4_POSITIONS:
            raise InputError(f"--mmc4-image-position {image_position!r}: choose one of {', '.join(MMC4_POSITIONS)}")
        self.image_position = image_position
        super().__init__(input_path, image_root, **options)

    def convert_record(self, obj: Any, where: str) -> Converted:
        return build_document(mmc4_pieces(obj, where, self.image_position), self.root, where, self.options,
                              self.joiner, _sample_id(obj) if isinstance(obj, dict) else None)

