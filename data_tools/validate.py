"""`isaac-data validate DATA`: read, decode and process every sample; report each problem by shard, key and reason.

DATA is anything ShardSet accepts: a dataset directory holding index.json, an index.json, a brace pattern
(`/data/sft-{000000..000127}.tar`) or a glob. Each sample is read by its byte range (`shards.read_sample`) and
decoded and processed as the loader does (`decode.encode_members`), so every sample the loader would skip shows
up here under the loader's reason (`decode.SKIP_REASONS`). A preference pair (`chosen` + `rejected`) is processed
as objective=dpo does (`decode.encode_pair`): both answers after the prompt, never truncated, too_long when the
two together exceed --max-length. `--check-sha` also checks each tar's size and sha256
against its manifest. Work is spread over a process pool (`--workers`); the output order is the data's order
whatever the worker count.

    isaac-data validate /data/sft --workers 8 --report problems.jsonl --check-sha

The scanning machinery (processor options, SampleRecord, the worker pool) is shared with `isaac-data stats` and
`isaac-data inspect`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from isaac_train.data import decode
from isaac_train.data.decode import SkipSample, encode_members, parse_sample
from isaac_train.data.records import DEFAULT_MAX_IMAGE_PIXELS, set_max_image_pixels
from isaac_train.data.shards import SampleReadError, ShardSet, read_sample
from isaac_train.processing.limits import MAX_PIXELS

if TYPE_CHECKING:  # torch and transformers come with the processor, when a scan starts (not for --help)
    from isaac_train.processing.processor import IsaacProcessor

SHARD_REASONS = ("missing_shard", "shard_size_mismatch", "shard_sha256_mismatch")
UNHANDLED = "unhandled_error"  # an exception encode_members lets through: the loader would stop, not skip
CHUNK = 256  # samples per pool task
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class CommandError(Exception):
    """A problem with the command's inputs; the message names the cause and the fix."""


# ---- options shared by validate / stats / inspect --------------------------------------------------------


def add_processor_arguments(parser: argparse.ArgumentParser) -> None:
    """--processor, --max-length and --length-policy, as the loader uses them."""
    parser.add_argument("--processor", metavar="DIR", type=Path, default=None,
                        help="directory with tokenizer files + processor_config.json (a checkpoint or a saved "
                             "IsaacProcessor); default: the tiny test tokenizer")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest sample in tokens (default: the processor's max_sequence_length)")
    parser.add_argument("--length-policy", choices=("truncate", "drop"), default="truncate",
                        help="samples over --max-length: keep their first tokens, or skip them as too_long")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                        help="images over N pixels (width x height, from the header) are skipped as image_too_large, "
                             f"never decoded, as the loader does with data.max_image_pixels ({MAX_PIXELS:,})")


def load_processor(directory: Path | None) -> IsaacProcessor:
    """The processor in `directory`, or (None) the tiny test processor, with a note saying so."""
    from isaac_train.processing.processor import IsaacProcessor

    if directory is None:
        from isaac_train.model.tiny import tiny_config
        from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

        print("note: no --processor given; using the tiny test tokenizer (token counts differ from a real Isaac "
              "checkpoint's: pass --processor DIR for those)", file=sys.stderr)
        return IsaacProcessor.from_settings(build_tiny_tokenizer(), tiny_config())
    if not Path(directory).is_dir():
        raise CommandError(f"--processor {directory}: no such directory; pass a directory holding tokenizer files "
                           "and processor_config.json (a checkpoint, or IsaacProcessor.save_pretrained output)")
    try:
        return IsaacProcessor.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise CommandError(f"--processor {directory}: cannot load a processor ({err}); the directory needs "
                           "tokenizer files and processor_config.json (or config.json with Isaac's vision fields)"
                           ) from err


def apply_image_limit(max_image_pixels: int) -> int:
    """--max-image-pixels made this process's limit (records.set_max_image_pixels); CommandError out of range."""
    if not 1 <= max_image_pixels <= MAX_PIXELS:
        raise CommandError(f"--max-image-pixels {max_image_pixels}: must be within [1, {MAX_PIXELS:,}] (Isaac's "
                           "processor refuses larger images)")
    set_max_image_pixels(max_image_pixels)
    return max_image_pixels


def resolve_max_length(processor: IsaacProcessor, max_length: int | None) -> int:
    """--max-length, or the processor's max_sequence_length when it is not given."""
    if max_length is not None and max_length < 1:
        raise CommandError(f"--max-length {max_length}: must be a positive number of tokens")
    return int(max_length or processor.max_sequence_length)


def open_shards(spec: str) -> ShardSet:
    """ShardSet(spec), with errors that say what DATA may be."""
    try:
        return ShardSet(spec)
    except FileNotFoundError as err:
        raise CommandError(f"{err}. DATA may be a dataset directory with index.json, an index.json, a brace "
                           "pattern (data-{000000..000009}.tar) or a glob (quote it); write missing manifests "
                           "and index.json with `isaac-data index DIR`") from err
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CommandError(f"{spec}: an index.json or manifest does not parse ({type(err).__name__}: {err}); "
                           "rewrite them with `isaac-data index DIR`") from err


# ---- per-sample results ---------------------------------------------------------------------------------


@dataclass
class SampleRecord:
    """What scanning one sample (or, with `position` None, one shard file) found."""

    shard: str
    position: int | None
    key: str | None
    reason: str | None = None  # None: the sample is usable
    message: str = ""
    source: str | None = None
    tokens: int = 0
    label_tokens: int = 0
    images: int = 0
    patches: int = 0
    image_tokens: int = 0
    # with ScanConfig.layouts, a usable document's layout: its images and the text tokens between each two
    # consecutive images (None for a conversation)
    layout: tuple[int, list[int]] | None = None
    # a usable preference pair: (chosen tokens, rejected tokens, chosen label tokens, rejected label tokens), each
    # document holding the prompt and its answer; the record's counts are the pair's (both documents, images once)
    pair: tuple[int, int, int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def problem(self) -> dict[str, Any]:
        """The JSON line written to --report."""
        return {k: v for k, v in asdict(self).items() if k in ("shard", "position", "key", "reason", "message")}


@dataclass(frozen=True)
class ScanConfig:
    """How samples are processed: the processor and the loader's length settings."""

    processor: IsaacProcessor
    max_length: int
    length_policy: str
    layouts: bool = False  # also record each document's layout (isaac-data stats)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # set in every scanning process (records.set_max_image_pixels)


def clean_message(message: str) -> str:
    """An error message without object addresses (`<_io.BytesIO object at 0x7f...>`), so reports are
    reproducible."""
    return _ADDRESS.sub("", message)


def _peek(members: dict[str, bytes]) -> dict[str, Any]:
    """The sample's JSON object, {} when it does not parse to one (parse_sample reports why)."""
    try:
        obj = json.loads(members["json"])
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def is_pair(obj: dict[str, Any]) -> bool:
    """A preference pair's JSON, by parse_sample's rule: `messages` with `chosen` or `rejected`."""
    return "messages" in obj and ("chosen" in obj or "rejected" in obj)


def scan_sample(shards: ShardSet, shard: int, position: int, config: ScanConfig) -> SampleRecord:
    """Read, decode and process one sample as the loader does; record its sizes or its problem."""
    ref = shards.ref(shard, position)
    record = SampleRecord(ref.shard, position, ref.key)
    try:
        members = read_sample(ref)
        obj = _peek(members)
        record.source = obj.get("source") if isinstance(obj.get("source"), str) else None
        if is_pair(obj):
            return _scan_pair(record, members, config)
        sample = encode_members(members, config.processor, config.max_length, config.length_policy)
    except (SampleReadError, SkipSample) as err:
        record.reason, record.message = err.reason, clean_message(str(err))
        return record
    except Exception as err:  # noqa: BLE001 - reported: the loader would crash on it
        record.reason = UNHANDLED
        record.message = (f"{type(err).__name__}: {clean_message(str(err))} (decode.encode_members does not "
                          "turn this into a skip, so the loader would stop on it; fix the sample's JSON)")
        return record
    record.tokens, record.label_tokens = len(sample), sample.num_label_tokens
    record.images = int(sample.image_grid_hw.shape[0])
    record.patches = 0 if sample.pixel_values is None else int(sample.pixel_values.shape[0])
    record.image_tokens = int((sample.input_ids == config.processor.image_token_id).sum())
    if config.layouts:
        record.layout = document_layout(members, config.processor)
    return record


def _scan_pair(record: SampleRecord, members: dict[str, bytes], config: ScanConfig) -> SampleRecord:
    """A preference pair's record: both documents' tokens and labels, the prompt's images once (the pair's two
    documents share them, as objective=dpo packs them)."""
    chosen, rejected = decode.encode_pair(members, config.processor, config.max_length)
    record.tokens = len(chosen) + len(rejected)
    record.label_tokens = chosen.num_label_tokens + rejected.num_label_tokens
    record.images = int(chosen.image_grid_hw.shape[0])
    record.patches = 0 if chosen.pixel_values is None else int(chosen.pixel_values.shape[0])
    record.image_tokens = sum(int((s.input_ids == config.processor.image_token_id).sum()) for s in (chosen, rejected))
    record.pair = (len(chosen), len(rejected), chosen.num_label_tokens, rejected.num_label_tokens)
    return record


def document_layout(members: dict[str, bytes], processor: IsaacProcessor) -> tuple[int, list[int]] | None:
    """(images, text tokens between each two consecutive images) of a document sample as stored; None for a
    conversation. Each text piece between images is tokenized alone, as the processor does."""
    kind, items, _, _ = parse_sample(members)
    if kind != "document":
        return None
    text = processor.flatten_messages([{"role": "document", "content": items}])[0]["content"]
    pieces = text.split(processor.vision_token)
    gaps = [len(processor._encode_text(piece)[0]) if piece else 0 for piece in pieces[1:-1]]
    return len(pieces) - 1, gaps


def check_shard_file(tar: str | Path, manifest: dict[str, Any]) -> list[SampleRecord]:
    """The tar's size and sha256 against its manifest ([] when both match)."""
    path = Path(tar)

    def problem(reason: str, message: str) -> list[SampleRecord]:
        return [SampleRecord(str(tar), None, None, reason, message)]

    if not path.is_file():
        return problem("missing_shard", f"{path} does not exist; copy it again or drop it from index.json")
    size = path.stat().st_size
    if size != manifest["bytes"]:
        return problem("shard_size_mismatch",
                       f"{path.name} is {size:,} bytes but its manifest says {manifest['bytes']:,} (truncated or "
                       "partly copied? copy it again; if the tar was changed on purpose, rerun `isaac-data index`)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != manifest["sha256"]:
        return problem("shard_sha256_mismatch",
                       f"{path.name} has sha256 {digest.hexdigest()[:16]}... but its manifest says "
                       f"{manifest['sha256'][:16]}... (corrupted on disk or in transfer? copy it again)")
    return []


# ---- the pool -------------------------------------------------------------------------------------------

Task = tuple[str, int, int, int]  # ("file" | "samples", shard, start, stop)
_STATE: tuple[ShardSet, ScanConfig] | None = None


def plan_tasks(shards: ShardSet, check_sha: bool, limit: int | None = None, chunk: int = CHUNK) -> list[Task]:
    """Pool tasks in data order: per shard its file check (with check_sha), then chunks of its samples."""
    tasks: list[Task] = []
    remaining = limit
    for shard, count in enumerate(shards.counts):
        if remaining is not None and remaining <= 0:
            break
        if check_sha:
            tasks.append(("file", shard, 0, 0))
        n = count if remaining is None else min(count, remaining)
        tasks.extend(("samples", shard, start, min(n, start + chunk)) for start in range(0, n, chunk))
        if remaining is not None:
            remaining -= n
    return tasks


def _init_worker(shards: ShardSet, config: ScanConfig) -> None:
    """Pool initializer: the data and processor every task of this process uses."""
    global _STATE
    import torch

    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe
    set_max_image_pixels(config.max_image_pixels)  # forked workers inherit it; spawned ones do not
    _STATE = (shards, config)


def _run_task(task: Task) -> list[SampleRecord]:
    """One pool task: a shard's file check, or a chunk of its samples."""
    assert _STATE is not None, "scan state not set (call scan())"
    shards, config = _STATE
    kind, shard, start, stop = task
    if kind == "file":
        return check_shard_file(shards.tars[shard], shards.manifests[shard])
    return [scan_sample(shards, shard, position, config) for position in range(start, stop)]


def scan(shards: ShardSet, config: ScanConfig, workers: int = 1, check_sha: bool = False, limit: int | None = None,
         desc: str = "scan") -> Iterator[SampleRecord]:
    """Every sample's record (the first `limit` samples when given) in data order, computed by `workers`
    processes; with check_sha each shard's file problems come just before its samples."""
    global _STATE
    import torch

    tasks = plan_tasks(shards, check_sha, limit)
    set_max_image_pixels(config.max_image_pixels)
    total = sum(stop - start for kind, _, start, stop in tasks if kind == "samples")
    pool = None
    if workers > 1 and len(tasks) > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(shards, config))
        results: Iterator[list[SampleRecord]] = pool.imap(_run_task, tasks)
    else:
        _STATE = (shards, config)
        results = map(_run_task, tasks)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-sample tensors are small: intra-op threads only add overhead (5x on 2 cores)
    try:
        with tqdm(total=total, unit="sample", desc=desc, dynamic_ncols=True, mininterval=0.5) as bar:
            for records in results:
                yield from records
                bar.update(sum(r.position is not None for r in records))
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.terminate()
            pool.join()


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    """DATA, the processor options and --workers."""
    parser.add_argument("data", metavar="DATA",
                        help="dataset dir with index.json, an index.json, a brace pattern or a (quoted) glob of tars")
    add_processor_arguments(parser)
    parser.add_argument("--workers", type=int, default=min(8, mp.cpu_count()),
                        help="processes reading and processing samples (default: min(8, CPUs))")


def prepare(args: argparse.Namespace, layouts: bool = False) -> tuple[ShardSet, ScanConfig]:
    """The ShardSet and ScanConfig the arguments name (raises CommandError)."""
    shards = open_shards(args.data)
    processor = load_processor(args.processor)
    return shards, ScanConfig(processor, resolve_max_length(processor, args.max_length), args.length_policy, layouts,
                              apply_image_limit(args.max_image_pixels))


# ---- the command ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`isaac-data validate` options."""
    add_scan_arguments(parser)
    parser.add_argument("--report", metavar="OUT.jsonl", type=Path, default=None,
                        help="write every problem as a JSON line {shard, position, key, reason, message}")
    parser.add_argument("--check-sha", action="store_true",
                        help="also check each tar's size and sha256 against its manifest")
    parser.add_argument("--examples", type=int, default=3, help="examples printed per reason (default 3)")


def print_summary(n_samples: int, n_ok: int, problems: list[SampleRecord], n_shards: int, workers: int,
                  elapsed: float, examples: int) -> None:
    """The summary table: samples ok, problems by reason, the first few examples of each."""
    rate = n_samples / elapsed if elapsed > 0 else float("inf")
    bad_samples = sum(p.position is not None for p in problems)
    print(f"validated {n_samples} samples in {n_shards} shards with {workers} worker(s) in {elapsed:.2f} s "
          f"({rate:,.1f} samples/s)")
    print(f"  samples ok            {n_ok:>8}")
    print(f"  samples with problems {bad_samples:>8}")
    if len(problems) > bad_samples:
        print(f"  shard file problems   {len(problems) - bad_samples:>8}")
    if not problems:
        return
    by_reason: dict[str, list[SampleRecord]] = defaultdict(list)
    for p in problems:
        by_reason[p.reason or ""].append(p)
    print(f"\n{'reason':<22} {'count':>7}  first examples (shard:key  message)")
    for reason, items in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        for i, p in enumerate(items[:max(examples, 1)]):
            where = f"{Path(p.shard).name}:{p.key}" if p.key is not None else Path(p.shard).name
            message = p.message if len(p.message) <= 160 else p.message[:157] + "..."
            head = f"{reason:<22} {len(items):>7}" if i == 0 else " " * 30
            print(f"{head}  {where}  {message}")
    if UNHANDLED in by_reason:
        print(f"\n{UNHANDLED}: the loader does not catch these, so training would stop on them; fix the samples "
              "(or have decode.encode_members skip them)")


def run(args: argparse.Namespace) -> int:
    """Exit code 1 when any problem is found, 0 when none, 2 when the inputs are unusable."""
    try:
        shards, config = prepare(args)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    problems: list[SampleRecord] = []
    n_samples = n_ok = 0
    report = None
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        report = open(args.report, "w", encoding="utf-8")
    try:
        for record in scan(shards, config, args.workers, args.check_sha, desc="validate"):
            n_samples += record.position is not None
            if record.ok:
                n_ok += 1
                continue
            problems.append(record)
            if report is not None:
                report.write(json.dumps(record.problem(), ensure_ascii=False) + "\n")
    finally:
        if report is not None:
            report.close()
    print_summary(n_samples, n_ok, problems, len(shards.tars), max(args.workers, 1), time.perf_counter() - started,
                  args.examples)
    if report is not None:
        print(f"wrote {len(problems)} problem(s) to {args.report}")
    reasons = Counter(p.reason for p in problems)
    if reasons:
        print(f"FAILED: {sum(reasons.values())} problem(s); commonest: {reasons.most_common(1)[0][0]}")
    return 1 if problems else 0
