"""`isaac-data stats DATA`: token, image and label counts, a length histogram, and packing efficiency.

Samples are processed as the loader does (`decode.encode_members` with --max-length / --length-policy), so the
lengths are what training sees. Packing: `packing.simulate_packing` runs the best-fit packer over the sample
lengths (and patch counts, with --max-patches) in data order for rows of --seq-len tokens; the baseline pads
each batch of the same number of samples (by default as many as a packed row holds on average, --pad-batch to
choose) to its longest sample. Both count only samples that fit a row (<= seq_len tokens and <= max_patches).

    isaac-data stats /data/sft --seq-len 4096 --png lengths.png --json stats.json
"""

from __future__ import annotations

import argparse
import json
import sys
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from isaac_train.data.packing import simulate_packing

from .validate import CommandError, SampleRecord, add_scan_arguments, prepare, scan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`isaac-data stats` options."""
    add_scan_arguments(parser)
    parser.add_argument("--seq-len", type=int, default=4096, help="packed row length in tokens (default 4096)")
    parser.add_argument("--max-patches", type=int, default=None, help="vision patches per packed row (default: any)")
    parser.add_argument("--buffer", type=int, default=64, help="samples the packer chooses among (default 64)")
    parser.add_argument("--pad-batch", type=int, default=None,
                        help="samples per padded batch for the baseline (default: the packed samples per row)")
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N samples of DATA")
    parser.add_argument("--png", metavar="HIST.png", type=Path, default=None, help="write the length histogram")
    parser.add_argument("--png-size", default="800x500", help="histogram size WIDTHxHEIGHT (default 800x500)")
    parser.add_argument("--bins", type=int, default=40, help="histogram bins (default 40)")
    parser.add_argument("--json", metavar="OUT.json", type=Path, default=None, help="write the numbers as JSON")


# ---- the numbers ----------------------------------------------------------------------------------------


def describe(values: Sequence[int] | array) -> dict[str, float]:
    """total, mean, median, p95 (numpy's linear interpolation), min and max of a list of counts."""
    if not len(values):
        return {"total": 0, "mean": 0.0, "median": 0.0, "p95": 0.0, "min": 0, "max": 0}
    arr = np.asarray(values, dtype=np.int64)
    return {"total": int(arr.sum()), "mean": float(arr.mean()), "median": float(np.median(arr)),
            "p95": float(np.percentile(arr, 95)), "min": int(arr.min()), "max": int(arr.max())}


def padded_fill(lengths: Sequence[int], batch: int) -> dict[str, float]:
    """Fill ratio of batches of `batch` consecutive samples, each padded to its longest sample."""
    batch = max(1, batch)
    real = padded = 0
    for start in range(0, len(lengths), batch):
        chunk = lengths[start : start + batch]
        real += sum(chunk)
        padded += len(chunk) * max(chunk)
    return {"batch": batch, "batches": -(-len(lengths) // batch), "tokens": real, "padded_tokens": padded,
            "fill": real / padded if padded else 0.0}


def packing_report(lengths: Sequence[int], patches: Sequence[int], seq_len: int, max_patches: int | None,
                   buffer: int, pad_batch: int | None) -> dict[str, Any]:
    """Packed fill (simulate_packing) against padding batches of the same number of samples."""
    packed = simulate_packing(lengths, patches, seq_len, max_patches, buffer)
    fits = [n for n, p in zip(lengths, patches, strict=True)
            if n <= seq_len and (max_patches is None or p <= max_patches)]
    per_row = len(fits) / packed["rows"] if packed["rows"] else 0.0
    padded = padded_fill(fits, pad_batch or max(1, round(per_row)))
    ratio = packed["fill"] / padded["fill"] if padded["fill"] else 0.0
    return {"seq_len": seq_len, "max_patches": max_patches, "buffer": buffer,
            "packed": {**packed, "samples": len(fits), "samples_per_row": per_row},
            "padded": padded, "packed_over_padded": ratio}


COLUMNS = ("tokens", "label_tokens", "images", "patches", "image_tokens")


class Tally:
    """Per-sample counts of the usable samples in data order (compact int64 arrays, not records, so a full
    dataset fits in memory), skips by reason and per-source totals."""

    def __init__(self) -> None:
        self.columns: dict[str, array] = {name: array("q") for name in COLUMNS}
        self.scanned = 0
        self.skipped: Counter[str] = Counter()
        self.sources: dict[str, dict[str, int]] = {}

    def add(self, record: SampleRecord) -> None:
        """Count one scanned sample."""
        self.scanned += 1
        if not record.ok:
            self.skipped[record.reason or "?"] += 1
            return
        for name in COLUMNS:
            self.columns[name].append(getattr(record, name))
        s = self.sources.setdefault(record.source or "-", {"samples": 0, "tokens": 0, "label_tokens": 0, "images": 0})
        s["samples"] += 1
        s["tokens"] += record.tokens
        s["label_tokens"] += record.label_tokens
        s["images"] += record.images


def compute_stats(tally: Tally, args: argparse.Namespace, max_length: int) -> dict[str, Any]:
    """Every number `stats` prints."""
    cols = tally.columns
    ok = len(cols["tokens"])
    lengths, patches = cols["tokens"].tolist(), cols["patches"].tolist()
    return {
        "samples": {"scanned": tally.scanned, "ok": ok, "skipped": tally.scanned - ok},
        "skipped_by_reason": dict(sorted(tally.skipped.items())),
        "max_length": max_length, "length_policy": args.length_policy,
        **{name: describe(cols[name]) for name in COLUMNS},
        "samples_with_images": int((np.frombuffer(cols["images"], dtype=np.int64) > 0).sum()) if ok else 0,
        "by_source": dict(sorted(tally.sources.items())),
        "packing": packing_report(lengths, patches, args.seq_len, args.max_patches, args.buffer, args.pad_batch),
    }


def print_stats(stats: dict[str, Any]) -> None:
    """The numbers as a few small tables."""
    s = stats["samples"]
    print(f"samples: {s['scanned']} scanned, {s['ok']} ok, {s['skipped']} skipped "
          f"(max_length {stats['max_length']}, length policy {stats['length_policy']})")
    for reason, n in stats["skipped_by_reason"].items():
        print(f"  skipped {reason:<20} {n:>8}")
    print(f"\n{'per sample':<14} {'total':>12} {'mean':>9} {'median':>9} {'p95':>9} {'max':>8}")
    for name in COLUMNS:
        d = stats[name]
        print(f"{name:<14} {d['total']:>12,} {d['mean']:>9.1f} {d['median']:>9.1f} {d['p95']:>9.1f} {d['max']:>8,}")
    print(f"samples with images: {stats['samples_with_images']}")
    if len(stats["by_source"]) > 1 or "-" not in stats["by_source"]:
        print(f"\n{'source':<24} {'samples':>9} {'tokens':>12} {'label tok':>12} {'images':>8}")
        for name, d in stats["by_source"].items():
            print(f"{name[:24]:<24} {d['samples']:>9,} {d['tokens']:>12,} {d['label_tokens']:>12,} {d['images']:>8,}")
    p = stats["packing"]
    packed, padded = p["packed"], p["padded"]
    limit = f", max_patches {p['max_patches']}" if p["max_patches"] is not None else ""
    print(f"\npacking at seq_len {p['seq_len']}{limit} (buffer {p['buffer']}): {packed['samples']} samples fit, "
          f"{packed['too_long']} too long for a row")
    print(f"  packed:  {packed['rows']} rows, {packed['samples_per_row']:.2f} samples/row, fill {packed['fill']:.3f}")
    print(f"  padded:  {padded['batches']} batches of {padded['batch']} sample(s) padded to their longest, "
          f"fill {padded['fill']:.3f}")
    print(f"  packed / padded fill: {p['packed_over_padded']:.2f}x")


# ---- the histogram --------------------------------------------------------------------------------------


def nice_step(span: float, target: int) -> float:
    """A 1/2/5 x 10^k step giving about `target` ticks over `span`."""
    raw = max(span, 1e-9) / max(target, 1)
    magnitude = 10 ** np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if m * magnitude >= raw:
            return float(m * magnitude)
    return float(10 * magnitude)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` pixels (no system fonts needed)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_histogram(lengths: Sequence[int], path: Path, size: tuple[int, int], bins: int, title: str,
                   marker: int | None = None) -> Path:
    """A bar chart of `lengths` (tokens per sample) with labelled axes, a title and a dashed line at `marker`."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 55
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, title_font = _font(12), _font(15)
    draw.text((width / 2, 12), title, fill="black", font=title_font, anchor="mt")
    x0, x1, y0, y1 = left, width - right, height - bottom, top  # plot box; y0 is the baseline
    hi = max(max(lengths, default=1), marker or 0, 1)
    counts, edges = np.histogram(np.asarray(lengths, dtype=np.int64), bins=max(bins, 1), range=(0, hi))
    top_count = max(int(counts.max()) if counts.size else 0, 1)
    ystep = max(1.0, nice_step(top_count, 5))
    ymax = ystep * np.ceil(top_count / ystep)

    def sx(v: float) -> float:
        return x0 + (x1 - x0) * v / hi

    def sy(v: float) -> float:
        return y0 - (y0 - y1) * v / ymax

    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c:
            draw.rectangle([sx(a) + 1, sy(c), max(sx(b) - 1, sx(a) + 1), y0], fill=(70, 120, 190))
    draw.line([(x0, y0), (x1, y0)], fill="black")
    draw.line([(x0, y0), (x0, y1)], fill="black")
    for v in np.arange(0, ymax + ystep / 2, ystep):
        draw.line([(x0 - 4, sy(v)), (x0, sy(v))], fill="black")
        draw.text((x0 - 7, sy(v)), f"{int(v):,}", fill="black", font=font, anchor="rm")
    xstep = nice_step(hi, 6)
    for v in np.arange(0, hi + xstep / 2, xstep):
        if v <= hi:
            draw.line([(sx(v), y0), (sx(v), y0 + 4)], fill="black")
            draw.text((sx(v), y0 + 7), f"{int(v):,}", fill="black", font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, height - 8), "tokens per sample", fill="black", font=font, anchor="mb")
    draw.text((8, y1 - 14), "samples", fill="black", font=font, anchor="lm")
    if marker is not None:
        x = sx(marker)
        for y in range(int(y1), int(y0), 8):
            draw.line([(x, y), (x, min(y + 4, y0))], fill=(200, 30, 30), width=2)
        draw.text((x - 4, y1 + 2), f"seq_len {marker:,}", fill=(200, 30, 30), font=font, anchor="rt")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def parse_size(text: str) -> tuple[int, int]:
    """'800x500' -> (800, 500)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise CommandError(f"--png-size {text!r}: write it as WIDTHxHEIGHT, e.g. 800x500") from err
    if w < 200 or h < 150:
        raise CommandError(f"--png-size {text!r}: at least 200x150 so the axes and labels fit")
    return w, h


def run(args: argparse.Namespace) -> int:
    """Exit code 0, or 2 when the inputs are unusable."""
    try:
        if args.seq_len < 1 or args.buffer < 1:
            raise CommandError("--seq-len and --buffer must be positive")
        size = parse_size(args.png_size)
        shards, config = prepare(args)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tally = Tally()
    for record in scan(shards, config, args.workers, limit=args.max_samples, desc="stats"):
        tally.add(record)
    stats = compute_stats(tally, args, config.max_length)
    print_stats(stats)
    if args.png is not None:
        t = stats["tokens"]
        title = f"sample lengths: {stats['samples']['ok']:,} samples, mean {t['mean']:.0f}, p95 {t['p95']:.0f} tokens"
        marker = args.seq_len if args.seq_len <= 2 * max(t["max"], 1) else None
        draw_histogram(tally.columns["tokens"].tolist(), args.png, size, args.bins, title, marker)
        print(f"wrote the length histogram to {args.png}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stats, indent=1) + "\n")
        print(f"wrote the numbers to {args.json}")
    return 0
