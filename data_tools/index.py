"""`isaac-data index DIR_OR_TARS...`: write NAME.manifest.json beside existing WebDataset tars, then index.json.

Members are grouped into samples as WebDataset groups them: consecutive members sharing a key, the member's
name up to its first dot. A sample's byte range runs from its first member's header (long-name and pax headers
included) to the end of its last member's padded data, so `shards.read_sample` can read it alone. Each sample is
then re-read through `read_sample` to prove the manifest right (skip with --no-verify).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from isaac_train.data.shards import FORMAT, SampleReadError, SampleRef, manifest_path, read_sample, write_index

BLOCK = tarfile.BLOCKSIZE
EXAMPLES = 5


class TarIndexError(Exception):
    """A tar that cannot be indexed; the message says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of `isaac-data index`."""
    parser.add_argument("paths", nargs="+", metavar="DIR_OR_TARS",
                        help="dataset directories (every *.tar under them) and/or tar files")
    parser.add_argument("--root", type=Path, default=None,
                        help="write index.json here (default: each DIR, or the folder of each tar)")
    parser.add_argument("--no-verify", action="store_true", help="do not re-read every sample by its range")


def run(args: argparse.Namespace) -> int:
    """Index the tars; 0 when every tar is indexed and every sample re-reads, else 1 (2: nothing to index)."""
    try:
        groups = collect_tars(args.paths, args.root)
    except TarIndexError as err:
        print(f"index: error: {err}", file=sys.stderr)
        return 2
    failed_tars, bad_samples, total = 0, Counter(), 0
    examples: list[str] = []
    tars = [tar for group in groups.values() for tar in group]
    for tar in tqdm(tars, unit="shard", desc="index", disable=None):
        try:
            manifest = build_manifest(tar)
        except TarIndexError as err:
            failed_tars += 1
            print(f"index: error: {err}", file=sys.stderr)
            continue
        manifest_path(tar).write_text(json.dumps(manifest))
        total += manifest["count"]
        if not args.no_verify:
            for reason, message in verify(tar, manifest):
                bad_samples[reason] += 1
                if len(examples) < EXAMPLES:
                    examples.append(message)
    for root in groups:
        write_index(root)
    print(f"index: {len(tars) - failed_tars} of {len(tars)} shard(s) indexed, {total:,} samples; "
          f"index.json in {', '.join(str(r) for r in groups)}")
    if bad_samples:
        print(f"index: {sum(bad_samples.values())} sample(s) do not re-read: {dict(bad_samples)}; e.g.",
              file=sys.stderr)
        for message in examples:
            print(f"  {message}", file=sys.stderr)
        print("  (their ranges are in the manifest; the loader will skip and count them; see `isaac-data "
              "validate`)", file=sys.stderr)
    return 1 if failed_tars or bad_samples else 0


def collect_tars(paths: list[str | Path], root: Path | None = None) -> dict[Path, list[Path]]:
    """{index root: its tars}: each DIR with every *.tar under it, each tar file under its folder, or all
    under `root` (which must contain them)."""
    groups: dict[Path, list[Path]] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            tars = sorted(path.rglob("*.tar"))
            if not tars:
                raise TarIndexError(f"{path} holds no .tar files; point at a dataset directory or at tar files")
            groups.setdefault(path, []).extend(tars)
        elif path.is_file() and path.suffix == ".tar":
            groups.setdefault(path.parent, []).append(path)
        elif path.is_file():
            raise TarIndexError(f"{path} is not a .tar file; Isaac shards are uncompressed tars (decompress "
                              ".tar.gz first)")
        else:
            raise TarIndexError(f"{path} does not exist")
    if root is not None:
        tars = sorted({t for group in groups.values() for t in group})
        outside = [t for t in tars if not t.resolve().is_relative_to(root.resolve())]
        if outside:
            raise TarIndexError(f"--root {root} does not contain {outside[0]}; index.json paths must be inside it")
        return {root: tars}
    return {r: sorted(set(ts)) for r, ts in groups.items()}


def build_manifest(tar_path: Path) -> dict[str, Any]:
    """The manifest of one tar, in the same form ShardWriter writes."""
    size, digest = file_digest(tar_path)
    samples: list[dict[str, Any]] = []
    seen: set[str] = set()
    last_end = 0
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for info in tar:
                last_end = data_end(info)
                if not info.isfile():
                    continue
                if "/" in info.name:
                    raise TarIndexError(f"{tar_path}: member {info.name!r} is in a folder; Isaac shards need flat "
                                        "member names KEY.SUFFIX (repack the files without folders, or convert "
                                        "them with `isaac-data make-shards`)")
                key, dot, suffix = info.name.partition(".")
                if not dot or not key:
                    continue  # WebDataset ignores members without a KEY.SUFFIX name
                if samples and samples[-1]["key"] == key:
                    samples[-1]["length"] = last_end - samples[-1]["offset"]
                    samples[-1]["members"].append(suffix)
                    continue
                if key in seen:
                    raise TarIndexError(f"{tar_path}: the members of sample {key!r} are not next to each other; "
                                        "WebDataset needs each sample's members together (rewrite the tar with "
                                        "members sorted by key)")
                seen.add(key)
                samples.append({"key": key, "offset": info.offset, "length": last_end - info.offset,
                                "members": [suffix]})
    except tarfile.ReadError as err:
        if "unexpected end of data" in str(err):
            raise TarIndexError(f"{tar_path} is truncated ({err}) after {len(samples)} sample(s); rewrite or "
                                "re-download it") from err
        raise TarIndexError(f"{tar_path} is not a readable uncompressed tar ({err}); Isaac reads samples by byte "
                            "range, so shards must be plain .tar (decompress .tar.gz first)") from err
    check_end(tar_path, last_end, size, samples[-1]["key"] if samples else None)
    for s in samples:
        s["members"].sort()
    return {"format": FORMAT, "shard": tar_path.name, "count": len(samples), "bytes": size, "sha256": digest,
            "samples": samples}


def data_end(info: tarfile.TarInfo) -> int:
    """Where a member ends in the tar: after its data, padded to the 512-byte block."""
    return info.offset_data + (-(-info.size // BLOCK) * BLOCK if info.isreg() else 0)


def check_end(tar_path: Path, last_end: int, size: int, last_key: str | None) -> None:
    """A complete tar ends with zero blocks after its last member; anything else means it was cut off (or has
    a corrupt header, where tarfile silently stops reading)."""
    where = f"after sample {last_key!r}" if last_key else "before its first sample"
    if last_end > size:
        raise TarIndexError(f"{tar_path} is truncated: its last member ends at byte {last_end:,} but the file has "
                            f"{size:,} bytes; rewrite or re-download it")
    with open(tar_path, "rb") as f:
        f.seek(last_end)
        tail = f.read(1 << 20)
    if tail.strip(b"\0"):
        problem = "an unreadable header or data that is not a tar member"
    elif len(tail) < 2 * BLOCK:
        problem = "no end-of-archive blocks"
    else:
        return
    raise TarIndexError(f"{tar_path} is truncated or corrupt {where} (at byte {last_end:,} of {size:,}: "
                        f"{problem}); rewrite or re-download it")


def file_digest(path: Path, chunk: int = 8 << 20) -> tuple[int, str]:
    """(size, sha256 hex) of a file."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def verify(tar_path: Path, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Re-read every sample by its range: [(reason, message)] for those that fail."""
    problems = []
    for position, s in enumerate(manifest["samples"]):
        ref = SampleRef(str(tar_path), position, s["key"], s["offset"], s["length"])
        try:
            members = read_sample(ref)
        except SampleReadError as err:
            problems.append((err.reason, f"{tar_path.name} sample {s['key']}: {err}"))
            continue
        if sorted(members) != s["members"]:
            problems.append(("bad_member", f"{tar_path.name} sample {s['key']}: re-read members {sorted(members)} "
                                           f"differ from {s['members']}"))
    return problems
