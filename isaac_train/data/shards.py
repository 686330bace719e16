"""Isaac's shard format: WebDataset tars, each with a manifest, and a dataset index.

A sample is a group of tar members sharing a key: `<key>.json` (the conversation or document, see
docs/data_format.md) and its images `<key>.0.jpg`, `<key>.1.png`, ... Beside every `NAME.tar` lies
`NAME.manifest.json`: the sample keys in order with the byte range each occupies in the tar, the member
suffixes, the tar's size and sha256. `index.json` at the dataset root lists the shards and their counts.

Readers address a sample by (shard, position) and read only its byte range: that gives exact resume (a
pending sample is re-read by address), sample-level splitting across ranks and workers, and exact accounting
of a truncated tar (every sample whose range is cut off is known by key).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_NAME = "index.json"
FORMAT = "isaac-shards/1"


def manifest_path(tar_path: str | Path) -> Path:
    tar_path = Path(tar_path)
    return tar_path.with_name(tar_path.name.removesuffix(".tar") + ".manifest.json")


class ShardWriter:
    """Write samples into `prefix-000000.tar`, ... of at most `max_bytes` / `max_count`, with manifests.

    `write(key, sample_json, images)` takes the sample's JSON object and its encoded image files as
    (suffix, bytes) pairs, e.g. [("0.jpg", b"...")]. `close()` writes index.json (or call `index()` later).
    """

    def __init__(self, out_dir: str | Path, prefix: str = "shard", max_bytes: int = 256 << 20,
                 max_count: int = 100_000, start_index: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_bytes, self.max_count = prefix, max_bytes, max_count
        self.shard_index = start_index
        self.written: list[Path] = []
        self._file = self._tar = None
        self._samples: list[dict[str, Any]] = []
        self._hash = None

    def _open(self) -> None:
        path = self.out_dir / f"{self.prefix}-{self.shard_index:06d}.tar"
        self._path = path
        import webdataset  # imports torch: only when a shard is written, not for reading or --help

        self._file = _HashingFile(open(path, "wb"))
        self._tar = webdataset.TarWriter(self._file, encoder=False, mtime=0.0)
        self._samples = []

    def write(self, key: str, sample: dict[str, Any] | bytes, images: list[tuple[str, bytes]] = ()) -> None:
        """Add one sample: its JSON object (or JSON bytes, written as they are) and its image members."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        if self._tar is None:
            self._open()
        body = sample if isinstance(sample, bytes) else json.dumps(sample, ensure_ascii=False).encode("utf-8")
        members = {"__key__": key, "json": body}
        for suffix, data in images:
            members[suffix] = bytes(data)
        start = self._tar.tarstream.offset
        self._tar.write(members)
        end = self._tar.tarstream.offset
        self._samples.append({"key": key, "offset": start, "length": end - start,
                              "members": sorted(k for k in members if k != "__key__")})
        if end >= self.max_bytes or len(self._samples) >= self.max_count:
            self._finish()

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()  # writes the end-of-archive blocks
        size, digest = self._file.size, self._file.hexdigest()
        self._file.close()
        manifest = {"format": FORMAT, "shard": self._path.name, "count": len(self._samples), "bytes": size,
                    "sha256": digest, "samples": self._samples}
        manifest_path(self._path).write_text(json.dumps(manifest))
        self.written.append(self._path)
        self._tar = self._file = None
        self.shard_index += 1

    def close(self) -> Path:
        self._finish()
        return write_index(self.out_dir)


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.size += len(b)
        return self.f.write(b)

    def hexdigest(self) -> str:
        return self.h.hexdigest()

    def close(self) -> None:
        self.f.close()
        super().close()


def write_index(root: str | Path) -> Path:
    """(Re)write root/index.json from the manifests found under root."""
    root = Path(root)
    shards = []
    for mpath in sorted(root.rglob("*.manifest.json")):
        m = json.loads(mpath.read_text())
        tar = mpath.with_name(m["shard"])
        shards.append({"path": os.path.relpath(tar, root), "count": m["count"], "bytes": m["bytes"],
                       "sha256": m["sha256"]})
    index = {"format": FORMAT, "shards": shards, "total": sum(s["count"] for s in shards)}
    path = root / INDEX_NAME
    path.write_text(json.dumps(index, indent=1) + "\n")
    return path


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives: shard file, its position in the shard, key and byte range."""

    shard: str
    position: int
    key: str
    offset: int
    length: int


class ShardSet:
    """The shards of one dataset, from an index.json, a directory holding one, or a list/glob of tar paths
    (each with its manifest). Only manifests are read up front; sample bytes are read on demand."""

    def __init__(self, spec: str | Path | list[str]) -> None:
        self.spec = spec
        self.tars = _resolve(spec)
        if not self.tars:
            raise FileNotFoundError(f"no shards found for {spec!r} (expected index.json, a directory or tar paths)")
        self.manifests = []
        for tar in self.tars:
            mpath = manifest_path(tar)
            if not mpath.is_file():
                raise FileNotFoundError(
                    f"{tar} has no manifest ({mpath.name}); write one with `isaac-data index {Path(tar).parent}`"
                )
            self.manifests.append(json.loads(mpath.read_text()))
        self.counts = [m["count"] for m in self.manifests]

    def __len__(self) -> int:
        return sum(self.counts)

    def ref(self, shard: int, position: int) -> SampleRef:
        s = self.manifests[shard]["samples"][position]
        return SampleRef(str(self.tars[shard]), position, s["key"], s["offset"], s["length"])

    def describe(self, listed: int = 3) -> str:
        """The spec as the user gave it, the shard count and the first shard paths, for error messages."""
        paths = ", ".join(str(t) for t in self.tars[:listed]) + (", ..." if len(self.tars) > listed else "")
        spec = self.spec if isinstance(self.spec, (str, Path)) else "a list of shards"
        return f"{spec} ({len(self.tars)} shard{'s' if len(self.tars) != 1 else ''}: {paths})"

    def fingerprint(self) -> str:
        """Identity of the data (shard names, counts, checksums), for refusing a resume on other data."""
        h = hashlib.sha256()
        for tar, m in zip(self.tars, self.manifests, strict=True):
            h.update(f"{Path(tar).name}:{m['count']}:{m['sha256']};".encode())
        return h.hexdigest()[:16]


def _resolve(spec: str | Path | list[str]) -> list[Path]:
    if isinstance(spec, (list, tuple)):
        out: list[Path] = []
        for item in spec:
            out.extend(_resolve(item))
        return out
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        path = path / INDEX_NAME
    if path.name == INDEX_NAME and path.is_file():
        index = json.loads(path.read_text())
        return [path.parent / s["path"] for s in index["shards"]]
    if "{" in text:  # brace expansion, as WebDataset users write it: data-{000000..000127}.tar
        import braceexpand

        return [Path(p) for p in braceexpand.braceexpand(text)]
    if any(ch in text for ch in "*?["):
        import glob

        return sorted(Path(p) for p in glob.glob(text))
    return [path] if path.suffix == ".tar" else []


class SampleReadError(Exception):
    """A sample that cannot be read; `reason` is a short counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_sample(ref: SampleRef) -> dict[str, bytes]:
    """The members of one sample by suffix ({"json": b"...", "0.jpg": b"..."}), read from its byte range."""
    try:
        with open(ref.shard, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.length)
    except OSError as err:
        raise SampleReadError("unreadable_shard", f"{ref.shard}: {err}") from err
    if len(data) < ref.length:
        raise SampleReadError("truncated_shard", f"{ref.shard} ends before sample {ref.key} (truncated tar)")
    members = _parse_plain_tar(data, ref.key)
    if members is not None:
        return _require_json(members, ref)
    members = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, suffix = info.name.partition(".")
                if key != ref.key:
                    raise SampleReadError("bad_member", f"member {info.name} in the range of sample {ref.key}")
                members[suffix] = tar.extractfile(info).read()
    except tarfile.TarError as err:
        raise SampleReadError("corrupt_tar", f"{ref.shard} sample {ref.key}: {err}") from err
    return _require_json(members, ref)


def _require_json(members: dict[str, bytes], ref: SampleRef) -> dict[str, bytes]:
    if "json" not in members:
        raise SampleReadError("missing_member", f"sample {ref.key} has no json member")
    return members


def _parse_plain_tar(data: bytes, key: str) -> dict[str, bytes] | None:
    """Fast path for plain ustar members (what ShardWriter writes): name, octal size, 512-byte blocks.
    Returns None when a header needs tarfile (PAX/GNU extensions) or does not check out."""
    members, pos = {}, 0
    while pos + 512 <= len(data):
        header = data[pos : pos + 512]
        if header.count(0) == 512:
            break
        if header[156:157] not in (b"0", b"\0") or header[257:262] != b"ustar":
            return None  # directories, PAX/GNU extension headers: let tarfile handle it
        if sum(header[:148]) + sum(header[156:]) + 8 * 32 != int(header[148:156].split(b"\0")[0].strip() or b"0", 8):
            raise SampleReadError("corrupt_tar", f"bad tar header checksum in sample {key}")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        stem, _, suffix = name.partition(".")
        if stem != key:
            raise SampleReadError("bad_member", f"member {name} in the range of sample {key}")
        members[suffix] = data[pos + 512 : pos + 512 + size]
        if len(members[suffix]) < size:
            raise SampleReadError("corrupt_tar", f"member {name} of sample {key} is cut short")
        pos += 512 + -(-size // 512) * 512
    return members
