"""`isaac-data stats DATA`: token, image and label counts, a length histogram, and packing efficiency.

Samples are processed as the loader does (`decode.encode_members` with --max-length / --length-policy), so the
lengths are what training sees. Packing: `packing.simulate_packing` runs the best-fit packer over the sample
lengths (and patch counts, with --max-patches) in data order for rows of --seq-len tokens; the baseline pads
each batch of the same number of samples (by default as many as a packed row holds on average, --pad-batch to
choose) to its longest sample. Both count only samples that fit a row (<= seq_len tokens and <= max_patches).

Document samples (`segments`) also get their layout: images per document and the text tokens between each two
consecutive images (each text piece tokenized alone, as the processor does), counted on the documents as stored,
before --max-length truncation. A preference pair (`chosen` + `rejected`) counts as the one packing unit that
objective=dpo trains on: its two documents (prompt + chosen, prompt + rejected) together, its images once, never
truncated; its answers get their own numbers (tokens and label tokens of each side). The histogram (--png) is
drawn with matplotlib (`pip install -e '.[plot]'`).

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

from .validate import CommandError, SampleRecord, add_scan_arguments, prepare, scan

PLOT_HINT = "pip install -e '.[plot]'"


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
    from isaac_train.data.packing import simulate_packing  # imports torch: not for --help

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
PAIR_COLUMNS = ("chosen_tokens", "rejected_tokens", "chosen_label_tokens", "rejected_label_tokens")  # SampleRecord.pair


class Tally:
    """Per-sample counts of the usable samples in data order (compact int64 arrays, not records, so a full
    dataset fits in memory), skips by reason, per-source totals and the layout of document samples."""

    def __init__(self) -> None:
        self.columns: dict[str, array] = {name: array("q") for name in COLUMNS}
        self.scanned = 0
        self.skipped: Counter[str] = Counter()
        self.sources: dict[str, dict[str, int]] = {}
        self.document_images = array("q")  # per usable document sample
        self.image_gaps = array("q")  # text tokens between two consecutive images, every gap of every document
        self.pair_columns: dict[str, array] = {name: array("q") for name in PAIR_COLUMNS}  # per usable pair

    def add(self, record: SampleRecord) -> None:
        """Count one scanned sample (and, for a document, its layout)."""
        self.scanned += 1
        if not record.ok:
            self.skipped[record.reason or "?"] += 1
            return
        if record.layout is not None:
            self.document_images.append(record.layout[0])
            self.image_gaps.extend(record.layout[1])
        if record.pair is not None:
            for name, value in zip(PAIR_COLUMNS, record.pair, strict=True):
                self.pair_columns[name].append(value)
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
        "documents": {
            "samples": len(tally.document_images),
            "without_images": int((np.frombuffer(tally.document_images, dtype=np.int64) == 0).sum()),
            "images_per_document": describe(tally.document_images),
            "text_tokens_between_images": {"gaps": len(tally.image_gaps), **describe(tally.image_gaps)},
        },
        "pairs": {"samples": len(tally.pair_columns["chosen_tokens"]),
                  **{name: describe(values) for name, values in tally.pair_columns.items()}},
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
    docs = stats["documents"]
    if docs["samples"]:
        print(f"\ndocuments: {docs['samples']:,} of {s['ok']:,} usable samples, {docs['without_images']:,} without "
              "images (layout as stored, before truncation)")
        print(f"{'per document':<26} {'total':>12} {'mean':>9} {'median':>9} {'p95':>9} {'max':>8}")
        gaps = docs["text_tokens_between_images"]
        for name, d in (("images", docs["images_per_document"]), ("text tokens between images", gaps)):
            print(f"{name:<26} {d['total']:>12,} {d['mean']:>9.1f} {d['median']:>9.1f} {d['p95']:>9.1f} "
                  f"{d['max']:>8,}")
        print(f"  (text tokens between images: per gap between two consecutive images, {gaps['gaps']:,} gap(s))")
    pairs = stats["pairs"]
    if pairs["samples"]:
        print(f"\npreference pairs: {pairs['samples']:,} of {s['ok']:,} usable samples (each counted above as its "
              "two documents, prompt + chosen and prompt + rejected, its images once)")
        print(f"{'per pair':<22} {'total':>12} {'mean':>9} {'median':>9} {'p95':>9} {'max':>8}")
        for name in PAIR_COLUMNS:
            d = pairs[name]
            print(f"{name:<22} {d['total']:>12,} {d['mean']:>9.1f} {d['median']:>9.1f} {d['p95']:>9.1f} "
                  f"{d['max']:>8,}")
        print("  (chosen/rejected tokens: each document, the prompt included; label tokens: the answer's)")
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


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas (no pyplot: no global state, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise CommandError(f"--png draws with matplotlib, which is not installed: {PLOT_HINT}") from err
    return Figure, FigureCanvasAgg


def draw_histogram(lengths: Sequence[int], path: Path, size: tuple[int, int], bins: int, title: str,
                   marker: int | None = None) -> Path:
    """A PNG of exactly `size` pixels: the histogram of `lengths` (tokens per sample) with labelled axes, a title
    and a dashed line at `marker` (the packed row length). CommandError when matplotlib is missing."""
    from matplotlib import rc_context
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    figure_cls, canvas_cls = _matplotlib()
    width, height = size
    dpi = 100
    with rc_context({"font.size": max(5.0, min(10.0, width / 80))}):  # small PNGs get small type, not clipped text
        fig = figure_cls(figsize=(width / dpi, height / dpi), dpi=dpi)
        canvas_cls(fig)
        ax = fig.add_subplot()
        hi = max(max(lengths, default=1), marker or 0, 1)
        ax.hist(np.asarray(lengths, dtype=np.int64), bins=max(bins, 1), range=(0, hi), color=(0.27, 0.47, 0.75))
        if marker is not None:
            ax.axvline(marker, color=(0.78, 0.12, 0.12), linestyle="--", linewidth=1.5, label=f"seq_len {marker:,}")
            ax.legend(loc="upper right", fontsize="small")
        ax.set_xlim(0, hi)
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("tokens per sample")
        ax.set_ylabel("samples")
        ax.set_title(title, fontsize="medium", wrap=True)
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
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
        if args.png is not None:
            _matplotlib()  # before the scan, not after it
        shards, config = prepare(args, layouts=True)
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
        try:
            draw_histogram(tally.columns["tokens"].tolist(), args.png, size, args.bins, title, marker)
        except CommandError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote the length histogram to {args.png}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stats, indent=1) + "\n")
        print(f"wrote the numbers to {args.json}")
    return 0
