"""`isaac-data make-shards [--format FORMAT] INPUT OUT_DIR`: convert a dataset to Isaac shards with manifests.

Formats (data_tools/formats.py): `chat-jsonl`, `llava`, `hf-dataset`, `image-folder`, `coco` (COCO
instances JSON -> grounding samples, data_tools/coco.py and docs/grounding.md), `refcoco` (RefCOCO/+/g from the
Hugging Face hub -> the same, data_tools/refcoco.py), and the interleaved documents
`documents-jsonl`, `obelics`, `mmc4` (data_tools/interleaved.py), and the preference (DPO) pairs `trl-preference`,
`llamafactory-preference`, `rlaif-v` (data_tools/preference.py). Without --format the format is inferred from
the input (data_tools/infer_format.py) and the inference printed. Records are read and checked (JSON, schema,
every image decoded with PIL) in a pool of worker processes, in input order, and written by the main process
through ShardWriter: the output bytes do not depend on the number of workers. Records that cannot be used are
skipped and counted by reason (images left out of documents with --drop-missing-images are counted too); the
summary is printed and written to OUT_DIR/make_shards_report.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from isaac_train.data.records import DEFAULT_MAX_IMAGE_PIXELS, set_max_image_pixels
from isaac_train.data.records import max_image_pixels as process_pixel_limit
from isaac_train.data.shards import INDEX_NAME, ShardWriter
from isaac_train.processing.limits import MAX_PIXELS

from .converters import Converted, Converter, InputError, Item, Skip
from .formats import FORMATS, build_converter
from .infer_format import infer_format
from .interleaved import MMC4_POSITIONS, URL_NAMES

REPORT_NAME = "make_shards_report.json"
DOCUMENT_FORMATS = ("documents-jsonl", "obelics", "mmc4")  # take --drop-missing-images and --url-names
HF_FORMATS = ("hf-dataset", "obelics", "mmc4", "refcoco",  # take --hf-data-files, --hf-split, --hf-cache-dir
              "trl-preference", "llamafactory-preference", "rlaif-v")
ALL_SPLITS_FORMATS = ("refcoco",)  # without --hf-split: every split (else: train)
EXAMPLES_PER_REASON = 5
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """"256MB" / "1.5GiB" / "800K" / "1000000" -> bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"cannot read the size {text!r}; write e.g. 256MB, 1GB or 1000000")
    number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * 1024 ** "_KMGT".index(unit or "_"))
    if size <= 0:
        raise argparse.ArgumentTypeError(f"the size must be positive, got {text!r}")
    return size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of `isaac-data make-shards`."""
    parser.add_argument("--format", default=None, choices=list(FORMATS),
                        help="the input's format (default: inferred from the input, and printed)")
    parser.add_argument("input", metavar="INPUT", help="the JSONL/JSON file, dataset directory or image folder "
                        "(with --hf-data-files: the file type, parquet|json|csv|arrow)")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where the shards and index.json go")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="folder that relative image paths start from (default: the input file's folder)")
    parser.add_argument("--shard-size", type=parse_size, default=256 << 20, help="max bytes per shard (256MB)")
    parser.add_argument("--max-samples", type=int, default=None, help="stop after writing this many samples")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                        help="skip a record whose image has more than N pixels (width x height, read from the "
                             f"header; never decoded) as image_too_large (default and most: {MAX_PIXELS:,}, Isaac's "
                             "processor limit)")
    parser.add_argument("--workers", type=int, default=None,
                        help="reader processes (default min(4, CPUs)); 1 reads in the main process")
    parser.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar, ... (shard)")
    parser.add_argument("--source", default=None, help="dataset name stored in each sample (default: input name)")
    parser.add_argument("--keys", choices=("number", "id"), default="number",
                        help="sample keys: running numbers 000000123 (default) or the sanitised original ids")
    parser.add_argument("--overwrite", action="store_true", help="replace the shards already in OUT_DIR")
    parser.add_argument("--hf-data-files", action="append", default=None, metavar="FILES",
                        help="hf-dataset, obelics, mmc4, refcoco, the preference formats: local data files or a "
                             "glob (repeatable); INPUT is then their type")
    parser.add_argument("--hf-split", default=None, help="hf-dataset, obelics, mmc4, the preference formats: the split "
                        "to convert (train); refcoco: the one split to keep (default: every split)")
    parser.add_argument("--hf-cache-dir", default=None, help="the formats taking --hf-data-files: cache "
                        "for --hf-data-files (HF default)")
    parser.add_argument("--drop-missing-images", action="store_true",
                        help="documents-jsonl, obelics, mmc4: leave out an image that is missing, unreadable or too "
                             "large (counted as dropped_images) instead of skipping its document")
    parser.add_argument("--url-names", choices=URL_NAMES, default=None,
                        help="documents-jsonl, obelics, mmc4: the file a downloaded image URL was saved as under "
                             "--image-root: sha1 (default; SHA1(url) plus any image extension) or basename (the "
                             "URL path's last part)")
    parser.add_argument("--mmc4-image-position", choices=MMC4_POSITIONS, default=None,
                        help="mmc4: each image goes just before (default) or after its matched sentence")
    parser.add_argument("--coco-group", choices=("category", "image"), default=None,
                        help="coco: one sample per (image, category) (default) or per image with all categories")
    parser.add_argument("--coco-include-crowd", action="store_true",
                        help="coco: keep crowd annotations (iscrowd=1) in the answers (left out by default)")
    parser.add_argument("--refs", type=Path, default=None, metavar="REFS",
                        help="coco: RefCOCO-style referring expressions: refer's refs(unc).p as distributed (read as "
                             "plain data only), or a JSON list / JSONL of {ann_id, sentences}; one sample per "
                             "expression instead of detection samples")
    parser.add_argument("--refs-split", default=None, metavar="SPLIT",
                        help="coco --refs: keep only the expressions of this split (e.g. val)")


def run(args: argparse.Namespace) -> int:
    """Run the command; 0 when samples were written (skips included), 2 for unusable input."""
    try:
        if not 1 <= args.max_image_pixels <= MAX_PIXELS:
            raise InputError(f"--max-image-pixels {args.max_image_pixels}: must be within [1, {MAX_PIXELS:,}] "
                             "(Isaac's processor refuses larger images)")
        fmt = args.format
        if fmt is None:
            fmt, why = infer_format(args.input, args.hf_data_files)
            print(f"make-shards: inferred --format {fmt} ({why}); pass --format to override")
        options = {**_hf_options(args, fmt), **_coco_options(args, fmt), **_document_options(args, fmt)}
        converter = build_converter(fmt, args.input, args.image_root, **options)
        report = make_shards(converter, args.out_dir, shard_size=args.shard_size, max_samples=args.max_samples,
                             workers=args.workers, prefix=args.prefix, source=args.source, keys=args.keys,
                             overwrite=args.overwrite, max_image_pixels=args.max_image_pixels)
    except InputError as err:
        print(f"make-shards: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(report))
    if report["samples"] == 0:
        print(f"make-shards: error: no sample was written; every one of the {report['records']} records was "
              "skipped (see the reasons above)", file=sys.stderr)
        return 1
    return 0


def _hf_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    """The Hugging Face dataset options of the command line, for build_converter."""
    if fmt not in HF_FORMATS:
        if args.hf_data_files:
            raise InputError(f"--hf-data-files applies to --format {', '.join(HF_FORMATS)}, not {fmt}")
        return {}
    split = args.hf_split if args.hf_split is not None or fmt in ALL_SPLITS_FORMATS else "train"
    return {"data_files": args.hf_data_files, "split": split, "cache_dir": args.hf_cache_dir}


def _document_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    """The interleaved-document options, for build_converter (InputError when given for another format)."""
    if args.mmc4_image_position and fmt != "mmc4":
        raise InputError(f"--mmc4-image-position applies to --format mmc4 only, not {fmt}")
    if fmt not in DOCUMENT_FORMATS:
        given = [flag for flag, value in (("--drop-missing-images", args.drop_missing_images),
                                          ("--url-names", args.url_names)) if value]
        if given:
            raise InputError(f"{', '.join(given)} apply to --format {', '.join(DOCUMENT_FORMATS)} only, not {fmt}")
        return {}
    options = {"drop_missing_images": args.drop_missing_images, "url_names": args.url_names or "sha1"}
    if fmt == "mmc4":
        options["image_position"] = args.mmc4_image_position or "before"
    return options


def _coco_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    """The coco options of the command line, for build_converter (InputError when given for another format)."""
    given = [flag for flag, value in (("--coco-group", args.coco_group), ("--refs", args.refs),
                                      ("--refs-split", args.refs_split),
                                      ("--coco-include-crowd", args.coco_include_crowd)) if value]
    if fmt != "coco":
        if given:
            raise InputError(f"{', '.join(given)} apply to --format coco only, not {fmt}")
        return {}
    return {"group": args.coco_group or "category", "refs": args.refs, "refs_split": args.refs_split,
            "include_crowd": args.coco_include_crowd}


def make_shards(converter: Converter, out_dir: str | Path, *, shard_size: int = 256 << 20,
                max_samples: int | None = None, workers: int | None = None, prefix: str = "shard",
                source: str | None = None, keys: str = "number", overwrite: bool = False,
                progress: bool | None = None, max_image_pixels: int | None = None) -> dict[str, Any]:
    """Convert everything `converter` reads into shards under `out_dir`; returns the report (also written to
    out_dir/make_shards_report.json). `progress=None` shows a bar only on a terminal. `max_image_pixels` (None:
    this process's limit, records.max_image_pixels()) skips larger images from their header as image_too_large."""
    out_dir = Path(out_dir)
    if max_image_pixels is not None:
        set_max_image_pixels(max_image_pixels)
    pixel_limit = process_pixel_limit()
    _prepare_out_dir(out_dir, overwrite)
    workers = min(4, os.cpu_count() or 1) if workers is None else max(1, workers)
    source = source or converter.default_source()
    writer = ShardWriter(out_dir, prefix=prefix, max_bytes=shard_size)
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    dropped: Counter[str] = Counter()  # images left out of written documents (--drop-missing-images), by reason
    dropped_examples: dict[str, list[str]] = {}
    used_keys: set[str] = set()  # with --keys id only: running numbers are unique by construction
    records = written = images = 0
    start = time.time()
    disable = None if progress is None else not progress
    with _converted(converter, workers, pixel_limit) as results, tqdm(
            total=converter.total(), unit="record", desc="make-shards", disable=disable, dynamic_ncols=True) as bar:
        for index, converted, skip in results:
            records += 1
            bar.update(1)
            if skip is not None:
                skipped[skip[0]] += 1
                examples.setdefault(skip[0], [])
                if len(examples[skip[0]]) < EXAMPLES_PER_REASON:
                    examples[skip[0]].append(skip[1])
                bar.set_postfix(skipped=sum(skipped.values()), refresh=False)
                continue
            key = _unique_key(_key(index, converted, keys), used_keys) if keys == "id" else f"{index:09d}"
            writer.write(key, {"source": source, **converted.sample}, converted.images)
            written += 1
            images += len(converted.images)
            for reason, message in converted.dropped:
                dropped[reason] += 1
                if len(dropped_examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
                    dropped_examples[reason].append(message)
            if max_samples is not None and written >= max_samples:
                break
    writer.close()
    seconds = time.time() - start
    shard_bytes = sum(p.stat().st_size for p in writer.written)
    report = {
        "format": converter.name, "input": str(converter.input), "out_dir": str(out_dir), "source": source,
        "records": records, "samples": written, "images": images, "shards": len(writer.written),
        "max_image_pixels": pixel_limit,
        "shard_files": [p.name for p in writer.written], "bytes": shard_bytes,
        "skipped_total": sum(skipped.values()), "skipped": dict(sorted(skipped.items())),
        "examples": {k: examples[k] for k in sorted(examples)},
        "dropped_images": sum(dropped.values()), "dropped_images_by_reason": dict(sorted(dropped.items())),
        "dropped_examples": {k: dropped_examples[k] for k in sorted(dropped_examples)}, "workers": workers,
        "seconds": round(seconds, 3), "samples_per_second": round(written / seconds, 1) if seconds > 0 else None,
        "index": str(out_dir / INDEX_NAME),
    }
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix a new dataset into old shards (keys would repeat); --overwrite removes the old ones."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"OUT_DIR {out_dir} exists and is not a directory; choose another OUT_DIR")
    old = sorted(out_dir.glob("*.tar")) if out_dir.is_dir() else []
    if old and not overwrite:
        raise InputError(f"{out_dir} already holds {len(old)} shard(s) ({old[0].name}, ...); choose an empty "
                         "OUT_DIR or pass --overwrite to replace them")
    for path in [*old, *out_dir.glob("*.manifest.json"), out_dir / INDEX_NAME] if old else []:
        path.unlink(missing_ok=True)


def _key(index: int, converted: Converted, keys: str) -> str:
    """The sample key: the running number 000000123, or (keys="id") the id with anything but [A-Za-z0-9_-]
    replaced by '_' (no '.' or '/', which the shard format reserves)."""
    if keys == "id" and converted.id is not None:
        cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", converted.id).strip("_")[:120]
        if cleaned:
            return cleaned
    return f"{index:09d}"


def _unique_key(key: str, used: set[str]) -> str:
    """`key`, or `key-2`, `key-3`... when an earlier sample took it (possible only with --keys id)."""
    candidate, n = key, 1
    while candidate in used:
        n += 1
        candidate = f"{key}-{n}"
    used.add(candidate)
    return candidate


# ---- reading in worker processes --------------------------------------------------------------------------

Result = tuple[int, Converted | None, tuple[str, str] | None]
_WORKER_CONVERTER: Converter | None = None


def _init_worker(converter: Converter, pixel_limit: int) -> None:
    """Pool initializer: the converter each worker uses, and the image pixel limit (not inherited under spawn)."""
    global _WORKER_CONVERTER
    _WORKER_CONVERTER = converter
    set_max_image_pixels(pixel_limit)


def _convert_one(item: Item) -> Result:
    """Convert one item in a worker: (index, sample, None) or (index, None, (reason, message))."""
    assert _WORKER_CONVERTER is not None
    return convert_item(_WORKER_CONVERTER, item)


def convert_item(converter: Converter, item: Item) -> Result:
    """Convert one item, turning a Skip (or a malformed record's type/key error) into (reason, message)."""
    try:
        return item.index, converter.convert(item), None
    except Skip as skip:
        return item.index, None, (skip.reason, str(skip))
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        return item.index, None, ("bad_schema", f"{item.where}: malformed record ({type(err).__name__}: {err})")
    except OSError as err:
        return item.index, None, ("unreadable_file", f"{item.where}: {err}")


class _Window:
    """Feeds items to Pool.imap at most `size` ahead of what the main process has consumed (imap would
    otherwise read the whole input into its task queue)."""

    def __init__(self, items: Iterable[Item], size: int) -> None:
        self.items, self.slots, self.stopped = items, threading.Semaphore(size), False

    def __iter__(self) -> Iterator[Item]:
        for item in self.items:
            self.slots.acquire()
            if self.stopped:
                return
            yield item

    def consumed(self) -> None:
        """One result was taken: let one more item in."""
        self.slots.release()

    def stop(self) -> None:
        """Stop feeding (wakes the feeding thread so the pool can shut down)."""
        self.stopped = True
        self.slots.release()


class _converted:
    """Context manager yielding the Results in input order, from `workers` processes (or this one)."""

    def __init__(self, converter: Converter, workers: int, pixel_limit: int) -> None:
        self.converter, self.workers, self.pixel_limit = converter, workers, pixel_limit
        self.pool: Any = None
        self.window: _Window | None = None

    def __enter__(self) -> Iterator[Result]:
        if self.workers <= 1:
            return (convert_item(self.converter, item) for item in self.converter.items())
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        self.pool = context.Pool(self.workers, initializer=_init_worker,
                                 initargs=(self.converter, self.pixel_limit))
        self.window = _Window(self.converter.items(), size=self.workers * 64)
        return self._results(self.pool.imap(_convert_one, self.window, chunksize=8))

    def _results(self, results: Iterator[Result]) -> Iterator[Result]:
        for result in results:
            self.window.consumed()
            yield result

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.window.stop()
            self.pool.terminate()
            self.pool.join()


def format_summary(report: dict[str, Any]) -> str:
    """The human-readable summary printed at the end."""
    lines = [
        f"make-shards: wrote {report['samples']:,} samples ({report['images']:,} images) in {report['shards']} "
        f"shard(s), {report['bytes'] / 1e6:,.1f} MB, to {report['out_dir']} in {report['seconds']:.1f} s "
        f"({report['samples_per_second'] or 0:,.0f} samples/s, {report['workers']} worker(s))",
    ]
    if report["skipped_total"]:
        lines.append(f"skipped {report['skipped_total']:,} of {report['records']:,} records:")
        width = max(len(r) for r in report["skipped"])
        for reason, count in report["skipped"].items():
            lines.append(f"  {reason:<{width}} {count:>8,}   e.g. {report['examples'][reason][0]}")
    else:
        lines.append(f"skipped none of {report['records']:,} records")
    if report.get("dropped_images"):
        lines.append(f"dropped {report['dropped_images']:,} image(s) from the documents written "
                     "(--drop-missing-images):")
        width = max(len(r) for r in report["dropped_images_by_reason"])
        for reason, count in report["dropped_images_by_reason"].items():
            lines.append(f"  {reason:<{width}} {count:>8,}   e.g. {report['dropped_examples'][reason][0]}")
    lines.append(f"index: {report['index']}; report: {Path(report['out_dir']) / REPORT_NAME}")
    return "\n".join(lines)
