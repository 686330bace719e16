"""`isaac-data make-shards --format refcoco`: RefCOCO, RefCOCO+ and RefCOCOg as published on the Hugging Face hub
-> one grounding sample per referring expression, in the form `--format coco --refs` writes (docs/grounding.md).

Two published layouts, told apart by their columns (`LAYOUTS`):

- `lmms-lab` (lmms-lab/RefCOCO, RefCOCOplus, RefCOCOg): `question_id`, `image` (the COCO image, {"bytes",
  "path"}), `question` (one fixed captioning prompt, not used), `answer` (the referring expressions, a list of
  strings), `segmentation`, `bbox` ([x, y, w, h] in pixels, float32), `iscrowd`, `file_name`. No split column: the
  split is the file's (`val-00000-of-00004.parquet`; RefCOCO has val, test, testA, testB, RefCOCO+ val, testA,
  testB, RefCOCOg val, test) or the `save_to_disk` split's.
- `refer` (jxu124/refcoco, refcocoplus, refcocog: refer's refs as rows): `ref_id`, `ann_id`, `image_id`,
  `category_id`, `split` (refer's: train, val, testA, testB, test), `sentences` ([{raw, sent, sent_id, tokens}]),
  `captions`, `bbox` ([x1, y1, x2, y2] in pixels), `image_path` (`coco/train2014/COCO_train2014_....jpg`, read
  under --image-root, or its file name directly under it), `raw_image_info` (COCO's image entry as JSON: width and
  height, checked against the file) and `raw_anns` (as JSON; its `bbox`, COCO's [x, y, w, h] as written, is used
  when it agrees with `bbox`, so that corners are summed exactly from the published numbers).

Every box goes to the 0-1000 grid of the image's real size (read from the image) by isaac_train/processing/grid.py;
float32 coordinates are read as the shortest decimal that is the same float32 (10.5 stays 10.5, 0.19 is 0.19).
Input: a parquet file, --hf-data-files (parquet), a folder of the hub's parquet files (a snapshot of the dataset
repository), or a `save_to_disk` directory (a DatasetDict converts every split). `split` (--hf-split) keeps one
split; by default every split is converted and each sample's meta names its own.
"""

from __future__ import annotations

import glob
import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

from isaac_train.processing.grid import box_to_grid, exact, outside_image, xywh_corners

from . import coco
from .converters import (
    Converted,
    Converter,
    HfInput,
    InputError,
    Item,
    Skip,
    check_image,
    hf_row,
    load_hf_rows,
    read_image_ref,
)

LAYOUTS = {"lmms-lab": ("image", "answer", "bbox"), "refer": ("sentences", "bbox", "image_path")}
_HUB_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-\d{5}-of-\d{5}")  # the hub's {split}-00000-of-00004[-hash]
_AGREE = 1e-6  # px: raw_anns' bbox is the same box as the bbox column


def refcoco_layout(columns: list[str] | tuple[str, ...]) -> str | None:
    """The RefCOCO layout of a dataset with these columns, or None."""
    return next((name for name, need in LAYOUTS.items() if set(need) <= set(columns)), None)


def file_split(path: Path) -> str | None:
    """The split a hub parquet file holds: `val` for data/val-00000-of-00004.parquet, `testA` for the parquet
    converter's default/testA/0000.parquet; None when the name does not say."""
    match = _HUB_FILE.match(path.name)
    if match:
        return match.group("split")
    return path.parent.name if path.stem.isdigit() else None


@dataclass
class Part:
    """Rows of one split (None: unknown, or in the rows' `split` column) in arrow format."""

    split: str | None
    rows: Any
    label: str


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Refcoco(Converter):
    """`refcoco`: RefCOCO / RefCOCO+ / RefCOCOg from the Hugging Face hub (lmms-lab's or jxu124's layout), one
    sample per referring expression with its split."""

    name = "refcoco"

    def __init__(self, input_path: Path | str, image_root: Path | None, data_files: list[str] | None = None,
                 split: str | None = None, cache_dir: str | None = None) -> None:
        path = Path(input_path)
        files = self._data_files(path, data_files)
        folder = path if path.is_dir() else (Path(files[0]).parent if files else path.parent)
        super().__init__(folder, image_root)
        self._source = path.name if path.is_dir() else Path(files[0]).stem if files else path.stem
        self.parts = self._load(path, files, cache_dir)
        columns = list(self.parts[0].rows.column_names)
        self.layout = refcoco_layout(columns)
        if self.layout is None:
            need = " or ".join(" + ".join(map(repr, c)) for c in LAYOUTS.values())
            raise InputError(f"{input_path}: columns {columns} are not a RefCOCO layout; refcoco needs {need}")
        self.float32 = self._float32_boxes(self.parts[0].rows)
        self.plan = self._plan(split)

    # ---- the input (main process) ----

    @staticmethod
    def _data_files(path: Path, data_files: list[str] | None) -> list[str]:
        """The parquet files to read (none for a save_to_disk directory)."""
        if data_files:
            files = [f for pattern in data_files for f in sorted(glob.glob(pattern))]
            if not files:
                raise InputError(f"--hf-data-files {' '.join(data_files)} matches no file")
            return files
        if not path.exists():
            raise InputError(f"input {path} does not exist; check the path")
        if path.is_file():
            if path.suffix.lower() != ".parquet":
                raise InputError(f"{path}: refcoco reads parquet files, a folder of them or a save_to_disk directory")
            return [str(path)]
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return []
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise InputError(f"{path} holds no parquet files and is not a save_to_disk directory; pass the "
                             "dataset's parquet files (e.g. a download of lmms-lab/RefCOCO)")
        return files

    def _load(self, path: Path, files: list[str], cache_dir: str | None) -> list[Part]:
        """One Part per split: the files grouped by the split their names say, or the saved dataset's splits."""
        if not files:
            try:
                import datasets
            except ImportError as err:
                raise InputError("reading a save_to_disk directory needs `datasets`: pip install -e '.[data]'") from err
            try:
                saved = datasets.load_from_disk(str(path))
            except (FileNotFoundError, ValueError) as err:
                raise InputError(f"cannot load the dataset {path} ({type(err).__name__}: {err})") from err
            if isinstance(saved, datasets.DatasetDict):
                return [Part(name, saved[name].with_format("arrow"), f"{path.name}[{name}]") for name in saved]
            return [Part(None, saved.with_format("arrow"), path.name)]
        groups: dict[str | None, list[str]] = {}
        for f in files:
            groups.setdefault(file_split(Path(f)), []).append(f)
        return [Part(split, load_hf_rows(HfInput(str(path), "parquet", group, Path(group[0]).parent, ""),
                                         "train", cache_dir), Path(group[0]).name)
                for split, group in groups.items()]

    @staticmethod
    def _float32_boxes(rows: Any) -> bool:
        import pyarrow as pa

        kind = rows.data.schema.field("bbox").type
        return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_float32(kind.value_type)

    def _expression_columns(self, columns: list[str]) -> list[str]:
        wanted = ["answer"] if self.layout == "lmms-lab" else ["sentences", "captions", "split", "ref_id"]
        return [c for c in wanted if c in columns]

    def _expressions(self, row: dict[str, Any]) -> list[Any]:
        if self.layout == "lmms-lab":
            answer = row.get("answer")
            return [answer] if isinstance(answer, str) else list(answer or [])
        return coco._sentences(row) or list(row.get("captions") or [])

    def _plan(self, split: str | None) -> list[tuple[str, Any]]:
        """(where, data) of every work item: (part, row, expression number, expression, split), or a skip."""
        plan: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for p, part in enumerate(self.parts):
            columns = list(part.rows.column_names)
            small = part.rows.select_columns(self._expression_columns(columns))
            row_index = 0
            for batch in small.iter(batch_size=1024):
                for row in batch.to_pylist():
                    r, row_index = row_index, row_index + 1
                    row_split = row.get("split") if isinstance(row.get("split"), str) else part.split
                    seen.update(s for s in (part.split, row_split) if s)
                    if split is not None and split not in (part.split, row_split):
                        continue
                    ref = f" (ref {row['ref_id']})" if row.get("ref_id") is not None else ""
                    where = f"{part.label} row {r}{ref}"
                    expressions = self._expressions(row)
                    if not expressions:
                        plan.append((where, {"skip": ("no_sentences", f"{where}: no referring expression")}))
                    for k, expression in enumerate(expressions):
                        plan.append((f"{where} sentence {k}", {"part": p, "row": r, "number": k,
                                                               "expression": expression, "split": row_split}))
        if split is not None and not plan:
            raise InputError(f"--hf-split {split!r} matches no row of {self.input}; its splits are "
                             f"{', '.join(sorted(seen)) or 'not named'}")
        return plan

    def default_root(self) -> Path:
        return self.input if self.input.is_dir() else self.input.parent

    def default_source(self) -> str:
        return self._source

    def total(self) -> int | None:
        return len(self.plan)

    def items(self) -> Iterator[Item]:
        for index, (where, data) in enumerate(self.plan):
            yield Item(index, where, data)

    # ---- conversion (workers) ----

    def convert(self, item: Item) -> Converted:
        data, where = item.data, item.where
        if "skip" in data:
            raise Skip(*data["skip"])
        expression = data["expression"]
        if not isinstance(expression, str) or not expression.strip():
            raise Skip("no_sentences", f"{where}: the referring expression is {expression!r:.60}, not text")
        expression = " ".join(expression.split())
        row = hf_row(self.parts[data["part"]].rows, data["row"])
        if self.layout == "lmms-lab":
            corners = self._lmms_corners(row, where)
            members, width, height = self._image(row.get("image"), None, where)
            meta = {"question_id": row.get("question_id"), "file_name": row.get("file_name")}
            name = row.get("question_id") if row.get("question_id") is not None else f"row{data['row']}"
        else:
            corners = self._refer_corners(row, where)
            info = self._json(row.get("raw_image_info"))
            members, width, height = self._image(row.get("image_path"), info, where)
            meta = {"coco_image_id": row.get("image_id"), "category_id": row.get("category_id"),
                    "file_name": info.get("file_name") or Path(str(row.get("image_path"))).name,
                    "ann_ids": [row.get("ann_id")], "ref_id": row.get("ref_id")}
            name = f"ref{row['ref_id']}" if row.get("ref_id") is not None else f"row{data['row']}"
        if outside_image(*corners, width, height):
            raise Skip("bad_box", f"{where}: bbox {row.get('bbox')!r:.60} lies wholly outside the {width}x{height} "
                                  "image")
        box = box_to_grid(*corners, width, height)
        meta = {"task": "refexp", "type": "grounding", **meta, "width": width, "height": height,
                "split": data["split"], "sentence": data["number"]}
        sample = {"id": f"{name}_{data['number']}", "messages": coco.grounding_messages(
                      expression, coco.box_tag(expression, box)),
                  "meta": meta}
        return Converted(sample, members)

    def _values(self, bbox: Any, where: str, form: str) -> list[Any]:
        """The four numbers of a bbox as exact values (float32 through their shortest float32 decimal)."""
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise Skip("bad_box", f"{where}: bbox {bbox!r:.60} is not four finite numbers {form}")
        if not self.float32:
            return list(bbox)
        import numpy as np

        return [exact(str(np.float32(v))) for v in bbox]

    def _lmms_corners(self, row: dict[str, Any], where: str) -> tuple[Any, ...]:
        x, y, w, h = self._values(row.get("bbox"), where, "[x, y, w, h]")
        if w <= 0 or h <= 0:
            raise Skip("bad_box", f"{where}: bbox {row.get('bbox')!r:.60} has w or h <= 0")
        return xywh_corners((x, y, w, h))

    def _refer_corners(self, row: dict[str, Any], where: str) -> tuple[Any, ...]:
        x1, y1, x2, y2 = self._values(row.get("bbox"), where, "[x1, y1, x2, y2]")
        if x2 <= x1 or y2 <= y1:
            raise Skip("bad_box", f"{where}: bbox {row.get('bbox')!r:.60} has x2 <= x1 or y2 <= y1")
        raw = self._json(row.get("raw_anns")).get("bbox")
        if isinstance(raw, list) and len(raw) == 4 and all(_number(v) for v in raw) and raw[2] > 0 and raw[3] > 0:
            corners = xywh_corners(raw)
            if all(abs(float(c) - float(v)) <= _AGREE for c, v in zip(corners, (x1, y1, x2, y2), strict=True)):
                return corners  # COCO's numbers as written, summed exactly
        return exact(x1), exact(y1), exact(x2), exact(y2)

    @staticmethod
    def _json(text: Any) -> dict[str, Any]:
        """A JSON-object column (raw_image_info, raw_anns) as a dict; {} when absent or not an object."""
        if isinstance(text, dict):
            return text
        try:
            value = json.loads(text) if isinstance(text, str) else None
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def _image(self, ref: Any, info: dict[str, Any] | None, where: str) -> tuple[list[tuple[str, bytes]], int, int]:
        """The image's member and its real size (checked against raw_image_info's when given)."""
        if isinstance(ref, str) and not (self.root / ref).is_file() and (self.root / Path(ref).name).is_file():
            ref = Path(ref).name  # --image-root is the train2014 folder itself
        ext, encoded = check_image(read_image_ref(ref, self.root, where), where)
        with PIL.Image.open(io.BytesIO(encoded)) as opened:
            width, height = opened.size
        declared = (info or {}).get("width"), (info or {}).get("height")
        if declared != (None, None) and declared != (width, height):
            raise Skip("size_mismatch", f"{where}: raw_image_info gives {declared[0]}x{declared[1]} but the image is "
                                        f"{width}x{height}; the box would be placed wrongly")
        return [(f"0.{ext}", encoded)], width, height

