"""Every input format of `isaac-data make-shards`, by name: FORMATS and build_converter.

The converters share data_tools/converters.py (Converter, Item, InputError, the JSONL and Hugging Face helpers)
and live one family a module: chat and captions (data_tools/basic.py), coco (data_tools/coco.py), refcoco
(data_tools/refcoco.py), interleaved documents (data_tools/interleaved.py), preference pairs
(data_tools/preference.py). This module imports them all and sits above them; none of them imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .basic import ChatJsonl, HfDataset, ImageFolder, Llava
from .coco import Coco
from .converters import Converter, InputError
from .interleaved import DocumentsJsonl, Mmc4, Obelics
from .preference import LlamaFactoryPreference, RlaifV, TrlPreference
from .refcoco import Refcoco

FORMATS: dict[str, type[Converter]] = {c.name: c for c in (
    ChatJsonl, Llava, HfDataset, ImageFolder, Coco, DocumentsJsonl, Obelics, Mmc4, TrlPreference,
    LlamaFactoryPreference, RlaifV, Refcoco)}


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
