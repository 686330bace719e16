"""A checkpoint that verifies itself: every file fsynced, listed with its size and sha256 in manifest.json.

    manifest.json   {"format": "isaac-checkpoint/1", "files": {"model.safetensors": {"bytes": N, "sha256": "..."}, ...}}

It lists every file of the checkpoint directory except itself and the COMPLETE marker, which are written after
it. `verify(dir)` says why a checkpoint cannot be trusted (None when it can), naming the file:
- the marker or the manifest missing, or a manifest that lists no files;
- a file on disk that the manifest does not list, or one it lists that is missing, cut short or grown;
- a file its format needs (`required_files`, from trainer_state.json's `format`, `strategy` and `world_size`)
  missing from the manifest: weights, optimizer, trainer state, schedule, one rank state per rank, the DCP shard
  files `.metadata` names, DeepSpeed's files for the ZeRO stage;
- (with checksums) a file changed after it was written.
The checks before the checksums read only the manifest, trainer_state.json and DCP's `.metadata` (`structure`);
the checksums can be split over ranks, each digesting its share (`share`, `check_share`), as a save digests them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
MANIFEST_FORMAT = "isaac-checkpoint/1"
TRAINER_STATE = "trainer_state.json"
_CHUNK = 8 << 20

# What a checkpoint must hold. Every format: the trainer state, the schedule and one rank state per process of
# the run that wrote it (trainer_state.json's world_size). Each format adds (once, per rank; {rank} is the rank):
EVERY_CHECKPOINT = (TRAINER_STATE, "scheduler.pt")
PER_RANK = ("rank_{rank:05d}.pt",)
FORMAT_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "full": (("model.safetensors", "optimizer.pt"), ()),  # single, ddp: rank 0 writes both
    "dcp": (("dcp/.metadata",), ()),  # fsdp: and every data file .metadata names (dcp_data_files)
    # DeepSpeed's save_checkpoint under tag `deepspeed` (data parallel only, so model-parallel rank 00)
    "deepspeed/zero1": (("deepspeed/mp_rank_00_model_states.pt",),
                        ("deepspeed/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",)),
    "deepspeed/zero2": (("deepspeed/mp_rank_00_model_states.pt",),
                        ("deepspeed/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",)),
    "deepspeed/zero3": ((), ("deepspeed/zero_pp_rank_{rank}_mp_rank_00_model_states.pt",
                             "deepspeed/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")),
}


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


def share(sizes: dict[str, int], rank: int, world_size: int) -> list[str]:
    """This rank's share of the files `sizes` lists (name -> bytes), sorted: biggest first, each to the rank with
    the fewest bytes so far (ties to the lower rank), so the ranks read about as much each; every rank computes the
    same split from the same sizes."""
    loads = [0] * world_size
    mine = []
    for rel in sorted(sizes, key=lambda r: (-sizes[r], r)):
        owner = min(range(world_size), key=lambda i: (loads[i], i))
        loads[owner] += sizes[rel]
        if owner == rank:
            mine.append(rel)
    return sorted(mine)


def digest_share(directory: Path, rank: int, world_size: int) -> dict[str, dict[str, int | str]]:
    """This rank's share of the files (`share`), fsynced and digested: ranks split the reading."""
    sizes = {rel: (directory / rel).stat().st_size for rel in listed_files(directory)}
    return {rel: file_digest(directory / rel) for rel in share(sizes, rank, world_size)}


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
    reason, files = structure(directory)
    if reason is None and checksums:
        reason = check_files(directory, files, sorted(files))
    return reason


def structure(directory: Path) -> tuple[str | None, dict[str, dict]]:
    """Everything `verify` checks but the checksums: (the reason the checkpoint cannot be used or None, the
    manifest's files). Reads the manifest, trainer_state.json and (dcp) `.metadata`, and stats every file."""
    if not (directory / COMPLETE).is_file():
        return f"no {COMPLETE} marker (the save did not finish, or the marker was removed since)", {}
    files, reason = read_manifest(directory)
    if reason is not None:
        return reason, {}
    if not files:
        return f"{MANIFEST} lists no files (it must list every file of the checkpoint)", {}
    unlisted = sorted(set(listed_files(directory)) - set(files))
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        return (f"{unlisted[0]}{more} is in the directory but not in {MANIFEST} (added after the save, or the "
                "manifest was rewritten without it)"), {}
    for rel, expected in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing", {}
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{rel} has {size} bytes, the manifest lists {expected['bytes']} (cut short or overwritten)", {}
    if TRAINER_STATE not in files:
        return f"{TRAINER_STATE} is not in {MANIFEST} (every checkpoint has one)", {}
    try:
        state = json.loads((directory / TRAINER_STATE).read_text())
        required, what = required_files(directory, state, limit=len(files) + 1)
    except ValueError as err:  # JSON, an unknown format, an unreadable .metadata: said by the error
        return str(err) if str(err).startswith(("dcp/", TRAINER_STATE)) else \
            f"{TRAINER_STATE} is unreadable: {err}", {}
    absent = [rel for rel in required if rel not in files]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        return f"{absent[0]}{more} is not in {MANIFEST}, but {what} holds it", {}
    return None, files


def read_manifest(directory: Path) -> tuple[dict[str, dict], str | None]:
    """The manifest's files (name -> {"bytes", "sha256"}), or the reason it cannot be read."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
                for e in files.values()):
            raise ValueError("not a checkpoint manifest")
    except FileNotFoundError:
        return {}, f"{MANIFEST} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, f"{MANIFEST} is unreadable or not a checkpoint manifest"
    return files, None


def check_files(directory: Path, files: dict[str, dict], names: list[str]) -> str | None:
    """The reason the first of `names` whose sha256 differs from the manifest's `files` fails (with how many more
    do), else None. Every file is read, a damaged one or not: the time is the same and the count is told."""
    bad = []
    for rel in names:
        try:
            if file_digest(directory / rel)["sha256"] != files[rel]["sha256"]:
                bad.append(f"{rel} does not match its sha256 in the manifest (changed after it was written)")
        except OSError as err:
            bad.append(f"{rel} cannot be read: {err.strerror or err}")
    if not bad:
        return None
    return bad[0] + (f" (and {len(bad) - 1} more file{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else "")


def check_share(directory: Path, rank: int, world_size: int) -> tuple[list[str], str | None]:
    """This rank's share of the checksums (`share` of the manifest's files by size): (the files digested, the
    reason the first one that does not match fails, or None)."""
    files, reason = read_manifest(directory)
    if reason is not None:
        return [], reason
    names = share({rel: e["bytes"] for rel, e in files.items()}, rank, world_size)
    return names, check_files(directory, files, names)


def required_files(directory: Path, state: dict, limit: int | None = None) -> tuple[list[str], str]:
    """The files a checkpoint must hold, from its trainer_state.json `state` (format, strategy, world_size), and
    what kind of checkpoint that is, in words. Raises ValueError saying why when the state names none we know.
    `limit`: name the per-rank files of at most this many ranks (a world_size past the manifest's length cannot
    be met anyway, and a damaged one must not make a list of a billion names)."""
    fmt = state.get("format", "full")
    world = state.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise ValueError(f"{TRAINER_STATE} has world_size {world!r} (a number of processes)")
    key = fmt
    if fmt == "deepspeed":
        stage = re.fullmatch(r"zero([123])", str(state.get("strategy")))
        if stage is None:
            raise ValueError(f"{TRAINER_STATE}: a deepspeed checkpoint of strategy {state.get('strategy')!r} "
                             "(expected zero1, zero2 or zero3)")
        key = f"deepspeed/zero{stage[1]}"
    if key not in FORMAT_FILES:
        raise ValueError(f"{TRAINER_STATE} names an unknown format {fmt!r} (expected full, dcp or deepspeed)")
    once, per_rank = FORMAT_FILES[key]
    ranks = range(world if limit is None else min(world, limit))
    names = [*EVERY_CHECKPOINT, *once] + [t.format(rank=r) for t in (*PER_RANK, *per_rank) for r in ranks]
    if fmt == "dcp":
        names += [f"dcp/{rel}" for rel in dcp_data_files(directory / "dcp")]
    return names, f"a {key.replace('/', ' ')} checkpoint of {world} rank{'s' if world > 1 else ''}"


def dcp_data_files(directory: Path) -> list[str]:
    """The data files a DCP checkpoint's `.metadata` names (read without running code; ValueError when it cannot
    be read; none when it names code, which the load refuses)."""
    from .safe_load import UnsafeCheckpointError, _dcp_globals, restricted_unpickle

    path = directory / ".metadata"
    try:
        with open(path, "rb") as f:
            metadata = restricted_unpickle(f, _dcp_globals(), str(path))
        return sorted({info.relative_path for info in metadata.storage_data.values()})
    except FileNotFoundError:
        return []  # the required dcp/.metadata is reported missing from the manifest
    except UnsafeCheckpointError:
        # planted code, not damage: the load refuses it by name and stops the run, as for every other file
        return []
    except Exception as err:  # noqa: BLE001  (any unpickling error of a damaged file)
        raise ValueError(f"dcp/.metadata is unreadable ({type(err).__name__}: {str(err)[:200]})") from err


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


# errno values that mean "this place cannot be written" (a full disk is is_disk_full's)
_UNWRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted (an immutable file or "
               "folder?)", errno.EROFS: "a read-only filesystem"}


def unwritable(err: BaseException | None) -> OSError | None:
    """The OSError in `err`'s chain that says a place cannot be written (permission, read-only, immutable) or is
    gone (ENOENT: a directory that vanished); None when there is none."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and (err.errno in _UNWRITABLE or err.errno == errno.ENOENT):
            return err
        err = err.__cause__ or err.__context__
    return None


def describe_unwritable(err: OSError, where: Path | str | None = None, setting: str = "run.output_dir") -> str:
    """One line for an OSError met writing `where` (else the error's own path): the path, the cause, the fix."""
    where = where or err.filename or "?"
    if err.errno == errno.ENOENT:
        return (f"{where} does not exist any more (deleted, moved or unmounted while the run went on). Restore "
                f"it, or set {setting} to another directory, and run the same command again")
    cause = _UNWRITABLE.get(err.errno, "the write failed")
    return (f"cannot write in {where}: {cause} ([Errno {err.errno}] {err.strerror}). Make it writable for this "
            f"user (owner, mode, mount options, chattr -i) or set {setting} to a writable directory")


def write_problem(directory: Path) -> OSError | None:
    """Create, write and remove a file in `directory` (in its nearest existing parent when it does not exist yet):
    the OSError that stops it, else None. Root ignores file modes, so this writes instead of reading them; a
    read-only mount and an immutable (chattr +i) directory stop root as well."""
    target = next((p for p in (directory, *directory.parents) if p.is_dir()), None)
    if target is None:
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(directory))
    probe = target / f".isaac_write_probe_{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        return err
    return None


def free_bytes(path: Path) -> int:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return 0


def tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0
