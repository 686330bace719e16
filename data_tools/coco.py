"""`isaac-data make-shards --format coco`: a COCO instances JSON (and optionally RefCOCO-style referring
expressions) -> grounding samples in Isaac's box grammar. The conventions are in docs/grounding.md.

Coordinates. COCO's `bbox` is [x, y, w, h] in pixels of the original image, (x, y) its top-left corner, on
continuous pixel coordinates (the image spans [0, W] x [0, H]). Its corners x1 = x, y1 = y, x2 = x + w, y2 = y + h
go to Isaac's 0-1000 grid of the original image by isaac_train/processing/grid.py, the one rounding rule of the
project: g = floor(v * 1000 / size + 1/2) in exact arithmetic of the numbers as written (halves round up, never to
even), clamped to [0, 1000], each side at least one grid unit (a thinner box becomes the unit cell holding its
centre); W and H are the `images` entry's width and height, which must equal the image file's size (else Skip
"size_mismatch"). `grid_box_to_pixels` maps back with v = g * size / 1000, as `Grounding.to_pixels` does, so a
round trip is within 0.5 * size / 1000 px per corner (a widened side: within one grid unit).

Samples. The prompt is one user message per content item, as Isaac's demo prompts: the hint `<hint>BOX</hint>`,
the image, the question. Each answer is `<point_box mention="NAME"> (x1,y1) (x2,y2) </point_box>` tags joined by
single spaces (no `<collection>`: every box carries its own mention).

- detection, `group="category"` (default): one sample per (image, category present in it), "Find every NAME.",
  its instances ordered by (y1, x1, y2, x2) on the grid, then annotation id.
- detection, `group="image"`: one sample per image, "Find every NAME1, NAME2 and NAME3." (the categories present,
  in the order of `categories`), boxes by category in that order, then as above.
- refexp (`refs=REFS`): one sample per referring expression: the expression as the question, and one box whose
  mention is the expression. REFS is refer's pickle as distributed (refs(unc).p, read through an unpickler that
  admits plain data only, data_tools/plain_pickle.py), a JSON list or JSONL.

Crowd annotations (iscrowd=1) are left out of detection answers unless `include_crowd` (their ids go to
meta.crowd_ann_ids); an image without annotations gives no sample but a Skip("no_objects"), so the report
accounts for every image.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import PIL.Image

from isaac_train.processing.grid import GRID, outside_image, xywh_corners, xywh_to_grid

from .converters import Converted, Converter, InputError, Item, Skip, check_image, read_image_ref
from .plain_pickle import load_plain_pickle, looks_like_pickle

HINT = "<hint>BOX</hint>"
GROUPS = ("category", "image")
REQUIRED_KEYS = ("images", "annotations", "categories")


# ---- coordinates and tags ---------------------------------------------------------------------------------


def coco_box_to_grid(bbox: Any, width: float, height: float) -> tuple[int, int, int, int]:
    """COCO [x, y, w, h] (pixels, top-left corner) of an image of `width` x `height` -> Isaac (x1, y1, x2, y2):
    integers on the 0-1000 grid of that image, top-left then bottom-right (isaac_train.processing.grid: exact,
    rounded half up, clamped, each side at least one unit)."""
    return xywh_to_grid(bbox, width, height)


def grid_box_to_pixels(box: Any, width: float, height: float) -> tuple[float, float, float, float]:
    """The inverse: Isaac (x1, y1, x2, y2) on the 0-1000 grid -> COCO [x, y, w, h] in pixels of a `width` x
    `height` image (corners mapped with g * size / 1000, like Grounding.to_pixels)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    px1, py1 = x1 * width / GRID, y1 * height / GRID
    px2, py2 = x2 * width / GRID, y2 * height / GRID
    return px1, py1, px2 - px1, py2 - py1


def escape_mention(text: str) -> str:
    """A mention for a double-quoted attribute: & < > and " HTML-escaped (the parser unescapes them); an
    apostrophe stays as it is."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def box_tag(mention: str, box: tuple[int, int, int, int]) -> str:
    """`<point_box mention="..."> (x1,y1) (x2,y2) </point_box>`."""
    x1, y1, x2, y2 = box
    return f'<point_box mention="{escape_mention(mention)}"> ({x1},{y1}) ({x2},{y2}) </point_box>'


def detection_question(names: list[str]) -> str:
    """"Find every cat." / "Find every cat and dog." / "Find every cat, dog and person."."""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"Find every {listed}."


def grounding_messages(question: str, answer: str) -> list[dict[str, Any]]:
    """The hint, the image and the question as three user messages (Isaac's demo), then the answer."""
    return [
        {"role": "user", "content": HINT},
        {"role": "user", "content": [{"type": "image"}]},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


# ---- reading the input ------------------------------------------------------------------------------------


def _norm_id(value: Any) -> Any:
    """Ids as the JSON has them, except that a string of digits equals the number ("42" == 42)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _read_json(path: Path, what: str, fix: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text ({err}); {what} must be a JSON file. {fix}") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); {what} must be a JSON file. {fix}") from err


def _read_refs(path: Path) -> list[tuple[str, Any]]:
    """A refs file: refer's pickle (refs(unc).p, read as plain data only), a JSON list, or one JSON object a line
    -> [(where, ref or None when the line is not JSON)]."""
    if not path.is_file():
        raise InputError(f"--refs {path} does not exist or is not a file; pass refer's refs(unc).p (or "
                         "refs(google).p, refs(umd).p) as distributed, or the expressions as JSON (a list of "
                         "{\"ann_id\", \"sentences\"}) or JSONL")
    if looks_like_pickle(path):
        try:
            refs = load_plain_pickle(path, "--refs")
        except ValueError as err:
            raise InputError(str(err)) from None
        if not isinstance(refs, list):
            raise InputError(f"--refs {path} holds a pickled {type(refs).__name__}, not refer's list of refs")
        return [(f"ref {i}", ref) for i, ref in enumerate(refs)]
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):
        refs = _read_json(path, "--refs", "Pass refer's refs(unc).p as it is, or a JSON list of refs.")
        return [(f"ref {i}", ref) for i, ref in enumerate(refs)]
    if not text.lstrip().startswith("{"):
        raise InputError(f"--refs {path} holds neither a JSON list nor JSON lines; expected "
                         '[{"ann_id": ..., "sentences": [...]}, ...]')
    out: list[tuple[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path.name} line {lineno}", json.loads(line)))
            except json.JSONDecodeError:
                out.append((f"{path.name} line {lineno}", None))
    return out


def _sentences(ref: dict[str, Any]) -> list[Any]:
    """A ref's expressions: strings, or refer's {"sent": ...} objects (else their "raw")."""
    raw = ref.get("sentences")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    return [(s.get("sent") if s.get("sent") is not None else s.get("raw")) if isinstance(s, dict) else s
            for s in raw]


def _skip_item(reason: str, message: str) -> dict[str, Any]:
    return {"kind": "skip", "reason": reason, "message": message}


class Coco(Converter):
    """`coco`: a COCO instances JSON (images, annotations, categories); images from --image-root (default: the
    JSON's folder) by `file_name`. Detection samples by (image, category) or by image (`group`), or, with
    `refs`, one sample per referring expression (RefCOCO/+/g: refer's pickle, JSON or JSONL), optionally of one
    `refs_split`."""

    name = "coco"

    def __init__(self, input_path: Path, image_root: Path | None, group: str = "category",
                 refs: str | Path | None = None, refs_split: str | None = None, include_crowd: bool = False) -> None:
        super().__init__(input_path, image_root)
        if not self.input.is_file():
            raise InputError(f"{self.input} is not a file; coco takes a COCO instances JSON "
                             "(e.g. annotations/instances_val2017.json)")
        if group not in GROUPS:
            raise InputError(f"--coco-group {group!r}: choose one of {', '.join(GROUPS)}")
        if refs is None and refs_split is not None:
            raise InputError("--refs-split picks referring expressions; pass --refs REFS with it")
        if refs is not None and group != "category":
            raise InputError("--coco-group applies to detection samples; with --refs each expression is a sample")
        self.group, self.include_crowd, self.refs_split = group, include_crowd, refs_split
        self.refs_path = None if refs is None else Path(refs)
        data = _read_json(self.input, "a COCO instances file", "Pass instances_*.json from COCO's annotations.")
        self._index(data)
        self.refs = None if self.refs_path is None else self._select_refs(_read_refs(self.refs_path))
        self._total = sum(1 for _ in self._plan())

    def _index(self, data: Any) -> None:
        """Categories by id, images in file order, and lean copies of the annotations by image (the
        segmentation polygons are left behind: the items stay small)."""
        if not isinstance(data, dict):
            raise InputError(f"{self.input} holds a JSON {type(data).__name__}, not an object; a COCO instances "
                             "JSON is an object with 'images', 'annotations' and 'categories'")
        for key in REQUIRED_KEYS:
            if key not in data:
                hint = " (a captions file? use instances_*.json)" if key == "categories" else ""
                raise InputError(f"{self.input} has no {key!r} key{hint}; a COCO instances JSON holds 'images', "
                                 "'annotations' and 'categories'")
            if not isinstance(data[key], list):
                raise InputError(f"{self.input}: {key!r} is a {type(data[key]).__name__}, not a list")
        self.categories: dict[Any, tuple[int, str]] = {}  # id -> (rank in the file, name)
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or "id" not in cat or not str(cat.get("name") or "").strip():
                raise InputError(f"{self.input}: categories[{i}] is {cat!r:.80}; each category needs 'id' and 'name'")
            self.categories[_norm_id(cat["id"])] = (i, str(cat["name"]).strip())
        self.bad: list[tuple[str, dict[str, Any]]] = []  # malformed entries, skipped (and counted) in detection
        self.images: list[dict[str, Any]] = []
        self.images_by_id: dict[Any, dict[str, Any]] = {}
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                self.bad.append((f"images[{i}]", _skip_item("bad_schema", f"images[{i}]: {img!r:.80} needs 'id' and "
                                                                          "'file_name'")))
                continue
            lean = {k: img.get(k) for k in ("id", "file_name", "width", "height")}
            self.images.append(lean)
            self.images_by_id.setdefault(_norm_id(img["id"]), lean)
        self.anns_by_image: dict[Any, list[dict[str, Any]]] = {}
        self.anns_by_id: dict[Any, dict[str, Any]] = {}
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
                self.bad.append((f"annotations[{i}]", _skip_item(
                    "bad_schema", f"annotations[{i}]: {ann!r:.80} needs 'image_id', 'category_id' and 'bbox'")))
                continue
            cat = self.categories.get(_norm_id(ann["category_id"]))
            lean = {"id": ann.get("id", f"#{i}"), "image_id": _norm_id(ann["image_id"]), "bbox": ann.get("bbox"),
                    "iscrowd": bool(ann.get("iscrowd", 0)), "category_id": ann["category_id"],
                    "category": None if cat is None else cat[1], "rank": None if cat is None else cat[0]}
            self.anns_by_image.setdefault(lean["image_id"], []).append(lean)
            if "id" in ann:
                self.anns_by_id.setdefault(_norm_id(ann["id"]), lean)

    def _select_refs(self, refs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """The refs of --refs-split (all when None); InputError when none is left."""
        if self.refs_split is None:
            return refs
        chosen = [(w, r) for w, r in refs
                  if r is None or isinstance(r, dict) and str(r.get("split")) == self.refs_split]
        if not any(r is not None for _, r in chosen):  # (lines that do not parse stay, to be counted)
            splits = sorted({str(r.get("split")) for _, r in refs if isinstance(r, dict)})
            raise InputError(f"--refs-split {self.refs_split!r} matches no referring expression in {self.refs_path}; "
                             f"its splits are {', '.join(splits) or 'none'}")
        return chosen

    def default_source(self) -> str:
        return self.input.stem if self.refs_path is None else self.refs_path.stem

    def total(self) -> int | None:
        return self._total

    def items(self) -> Iterator[Item]:
        for index, (where, data) in enumerate(self._plan()):
            yield Item(index, where, data)

    # ---- the work items (main process) ----

    def _plan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if self.refs is not None:
            yield from self._ref_plan()
            return
        yield from self.bad
        for img in self.images:
            where = f"image {img['id']} ({img['file_name']})"
            anns = self.anns_by_image.get(_norm_id(img["id"]), [])
            if not anns:
                yield where, _skip_item("no_objects", f"{where}: no annotations (nothing to find)")
            elif self.group == "image":
                yield where, {"kind": "detection", "image": img, "anns": anns}
            else:
                by_category: dict[Any, list[dict[str, Any]]] = {}
                for ann in sorted(anns, key=lambda a: (a["rank"] is None, a["rank"] or 0)):
                    by_category.setdefault(ann["category_id"], []).append(ann)
                for cat_id, group in by_category.items():
                    name = group[0]["category"]
                    yield f"{where} category {name if name is not None else cat_id}", {
                        "kind": "detection", "image": img, "anns": group}
        known = {_norm_id(img["id"]) for img in self.images}
        for image_id, anns in self.anns_by_image.items():
            if image_id not in known:
                yield f"image_id {image_id}", _skip_item(
                    "unknown_image", f"{len(anns)} annotation(s) name image_id {image_id!r}, which 'images' lacks")

    def _ref_plan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        assert self.refs is not None
        for where, ref in self.refs:
            if ref is None:
                yield where, _skip_item("bad_json", f"{where}: not valid JSON")
                continue
            if not isinstance(ref, dict) or "ann_id" not in ref:
                yield where, _skip_item("bad_schema", f"{where}: {ref!r:.80} needs 'ann_id' and 'sentences'")
                continue
            name = f"ref {ref['ref_id']}" if ref.get("ref_id") is not None else where
            ann = self.anns_by_id.get(_norm_id(ref["ann_id"]))
            sentences = _sentences(ref)
            if not sentences:
                yield name, _skip_item("no_sentences", f"{name}: no referring expression in 'sentences'")
                continue
            info = {k: ref.get(k) for k in ("ref_id", "ann_id", "image_id", "split")}
            image = None if ann is None else self.images_by_id.get(ann["image_id"])
            for k, sentence in enumerate(sentences):
                yield f"{name} sentence {k}", {"kind": "refexp", "ref": info, "number": k, "sentence": sentence,
                                               "ann": ann, "image": image}

    # ---- conversion (workers) ----

    def convert(self, item: Item) -> Converted:
        data = item.data
        if data["kind"] == "skip":
            raise Skip(data["reason"], data["message"])
        if data["kind"] == "refexp":
            return self._refexp(data, item.where)
        return self._detection(data, item.where)

    def _image(self, img: dict[str, Any], where: str) -> tuple[list[tuple[str, bytes]], int, int]:
        """The image's member and its size, which must be the size the annotations were made on."""
        ext, encoded = check_image(read_image_ref(img["file_name"], self.root, where), where)
        members = [(f"0.{ext}", encoded)]
        with PIL.Image.open(io.BytesIO(encoded)) as opened:
            actual = opened.size
        declared = (img.get("width"), img.get("height"))
        if declared == (None, None):
            return members, actual[0], actual[1]
        if declared != actual:
            raise Skip("size_mismatch", f"{where}: 'images' gives {declared[0]}x{declared[1]} but {img['file_name']} "
                                        f"is {actual[0]}x{actual[1]}; the boxes would be placed wrongly")
        return members, actual[0], actual[1]

    @staticmethod
    def _check_box(ann: dict[str, Any], where: str) -> None:
        bbox = ann["bbox"]
        ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        if not ok or bbox[2] <= 0 or bbox[3] <= 0:
            raise Skip("bad_box", f"{where}: annotation {ann['id']} has bbox {bbox!r:.60}; expected [x, y, w, h] "
                                  "with w, h > 0")

    @staticmethod
    def _grid_box(ann: dict[str, Any], width: int, height: int, where: str) -> tuple[int, int, int, int]:
        """A checked annotation's box on the grid; Skip("bad_box") when it lies wholly outside the image (a
        clamped box there would name a sliver at the border that the object is not in)."""
        if outside_image(*xywh_corners(ann["bbox"]), width, height):
            raise Skip("bad_box", f"{where}: annotation {ann['id']} has bbox {ann['bbox']!r:.60}, wholly outside "
                                  f"the {width}x{height} image")
        return coco_box_to_grid(ann["bbox"], width, height)

    def _detection(self, data: dict[str, Any], where: str) -> Converted:
        img, anns = data["image"], data["anns"]
        crowd = [a for a in anns if a["iscrowd"] and not self.include_crowd]
        kept = [a for a in anns if self.include_crowd or not a["iscrowd"]]
        if not kept:
            raise Skip("crowd_only", f"{where}: only crowd annotations ({len(crowd)}), which are left out")
        for ann in kept:
            if ann["category"] is None:
                raise Skip("unknown_category", f"{where}: annotation {ann['id']} has category_id "
                                               f"{ann['category_id']!r}, which 'categories' lacks")
            self._check_box(ann, where)
        members, width, height = self._image(img, where)
        boxes = [(self._grid_box(a, width, height, where), a) for a in kept]
        boxes.sort(key=lambda b: (b[1]["rank"], b[0][1], b[0][0], b[0][3], b[0][2], str(b[1]["id"])))
        names = list(dict.fromkeys(a["category"] for _, a in boxes))
        answer = " ".join(box_tag(a["category"], box) for box, a in boxes)
        meta: dict[str, Any] = {"task": "detection", "type": "grounding"}
        if self.group == "image":
            meta["categories"] = names
            sample_id = str(img["id"])
        else:
            meta["category"] = names[0]
            sample_id = f"{img['id']}_{kept[0]['category_id']}"
        meta.update({"coco_image_id": img["id"], "file_name": img["file_name"], "width": width, "height": height,
                     "ann_ids": [a["id"] for _, a in boxes]})
        if crowd:
            meta["crowd_ann_ids"] = [a["id"] for a in crowd]
        sample = {"id": sample_id, "messages": grounding_messages(detection_question(names), answer), "meta": meta}
        return Converted(sample, members)

    def _refexp(self, data: dict[str, Any], where: str) -> Converted:
        ann, img, ref, sentence = data["ann"], data["image"], data["ref"], data["sentence"]
        if not isinstance(sentence, str) or not sentence.strip():
            raise Skip("no_sentences", f"{where}: the referring expression is {sentence!r:.60}, not text")
        if ann is None:
            raise Skip("unknown_annotation", f"{where}: ann_id {ref['ann_id']!r} is not in the annotations of "
                                             f"{self.input.name}")
        if img is None:
            raise Skip("unknown_image", f"{where}: annotation {ann['id']} names image_id {ann['image_id']!r}, "
                                        "which 'images' lacks")
        if ref.get("image_id") is not None and _norm_id(ref["image_id"]) != ann["image_id"]:
            raise Skip("ref_mismatch", f"{where}: the ref says image_id {ref['image_id']!r} but annotation "
                                       f"{ann['id']} is on image {ann['image_id']!r} (refs of another COCO file?)")
        self._check_box(ann, where)
        members, width, height = self._image(img, where)
        expression = " ".join(sentence.split())
        box = self._grid_box(ann, width, height, where)
        meta = {"task": "refexp", "type": "grounding", "category": ann["category"], "coco_image_id": img["id"],
                "file_name": img["file_name"], "width": width, "height": height, "ann_ids": [ann["id"]],
                "ref_id": ref.get("ref_id"), "split": ref.get("split"), "sentence": data["number"]}
        ref_name = ref["ref_id"] if ref.get("ref_id") is not None else f"ann{ann['id']}"
        sample = {"id": f"ref{ref_name}_{data['number']}",
                  "messages": grounding_messages(expression, box_tag(expression, box)), "meta": meta}
        return Converted(sample, members)

