"""A checkpoint that verifies itself: every file fsynced, listed with its size and sha256 in manifest.json.

    manifest.json   {"format": "isaac-checkpoint/1", "files": {"model.safetensors": {"bytes": N, "sha256": "..."}, ...}}

It lists every file of the checkpoint directory except itself and the COMPLETE marker, which are written after
it. `verify(dir)` says why a checkpoint cannot be trusted (None when it can): the marker or the manifest missing,
a file missing, cut short or grown, or (with checksums) changed after it was written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
MANIFEST_FORMAT = "isaac-checkpoint/1"
_CHUNK = 8 << 20


def file_digest(path: Path) -> dict[str, int | str]:
    """Size and sha256 of a file, read in 8 MiB chunks; the file is fsynced first (it is about to be listed)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def listed_files(directory: Path) -> list[str]:
    """Every regular file under `directory` (relative POSIX paths, sorted), the manifest and marker excluded."""
    out = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and not path.is_symlink() and rel not in (MANIFEST, COMPLETE):
            out.append(rel)
    return sorted(out)


def digest_share(directory: Path, rank: int, world_size: int) -> dict[str, dict[str, int | str]]:
    """This rank's share of the files (every world_size-th), fsynced and digested: ranks split the reading."""
    return {rel: file_digest(directory / rel) for rel in listed_files(directory)[rank::world_size]}


def write_manifest(directory: Path, files: dict[str, dict[str, int | str]]) -> None:
    """manifest.json for `files` (checked to be every file present), fsynced, then the directories fsynced."""
    present = listed_files(directory)
    if sorted(files) != present:
        unlisted = sorted(set(present) - set(files))
        raise RuntimeError(f"checkpoint {directory}: files appeared while it was being listed: {unlisted[:5]}")
    write_synced(directory / MANIFEST, json.dumps({"format": MANIFEST_FORMAT, "files": dict(sorted(files.items()))},
                                                  indent=1))
    for sub in sorted({(directory / rel).parent for rel in files} | {directory}):
        fsync_dir(sub)


def write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_bytes(directory: Path) -> int:
    """Total size of a checkpoint as its manifest lists it (0 without a readable manifest)."""
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
        return sum(int(f["bytes"]) for f in files.values())
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def verify(directory: Path, checksums: bool = True) -> str | None:
    """None when the checkpoint is whole and unchanged, else the reason it is not (naming the file)."""
    if not (directory / COMPLETE).is_file():
        return f"no {COMPLETE} marker (the save did not finish)"
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
        assert manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict)
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{MANIFEST} is unreadable or not a checkpoint manifest"
    for rel, expected in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{rel} has {size} bytes, the manifest lists {expected['bytes']} (cut short or overwritten)"
    if checksums:
        for rel, expected in files.items():
            if file_digest(directory / rel)["sha256"] != expected["sha256"]:
                return f"{rel} does not match its sha256 in the manifest (changed after it was written)"
    return None


def is_disk_full(err: BaseException) -> bool:
    """True when a write failed for lack of space (ENOSPC / EDQUOT anywhere in the chain, or the messages torch,
    safetensors and DCP give for it)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if "No space left" in text or "StorageFull" in text or "Disk quota exceeded" in text:
            return True
        inner = getattr(err, "failures", None)  # DCP's CheckpointException: {rank: exception}
        if isinstance(inner, dict) and any(is_disk_full(e) for e in inner.values() if isinstance(e, BaseException)):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(path: Path) -> int:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return 0


def tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0
