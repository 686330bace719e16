"""`isaac-data index`: manifests for existing tars, equal to ShardWriter's for the same tars, and samples that
re-read by their byte ranges; tars it cannot index are refused with the reason."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import tarfile
from pathlib import Path

import PIL.Image
import pytest

from data_tools import index
from isaac_train.data.shards import ShardSet, ShardWriter, manifest_path, read_sample


def png(seed: int, size: tuple[int, int] = (20, 12)) -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", size, (seed * 40 % 256, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    index.add_arguments(parser)
    return index.run(parser.parse_args(argv))


def chat(i: int, n_images: int) -> dict:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": f"question {i}"}]
    return {"source": "t", "messages": [{"role": "user", "content": content},
                                        {"role": "assistant", "content": "x" * (i * 37 % 700)}]}


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> None:
    """A tar written by plain tarfile (as other tools write them), with a folder entry first."""
    with tarfile.open(path, "w", format=fmt) as tar:
        info = tarfile.TarInfo("extras")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_manifests_equal_shardwriters(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, prefix="data", max_count=4)
    for i in range(11):
        key = f"{i:09d}" if i != 5 else "k" * 130  # a name over 100 characters needs an extra tar header
        writer.write(key, chat(i, i % 3), [(f"{k}.png", png(i + k)) for k in range(i % 3)])
    writer.close()
    originals = {p.name: p.read_text() for p in sorted(tmp_path.glob("*.json"))}
    assert len(originals) == 4  # 3 manifests + index.json
    for name in originals:
        (tmp_path / name).unlink()
    assert run_cli([str(tmp_path)]) == 0
    for name, text in originals.items():
        assert json.loads((tmp_path / name).read_text()) == json.loads(text), name


def test_foreign_tar_rereads(tmp_path: Path, capsys) -> None:
    long_key = "sample_" + "y" * 150
    members = [
        ("a1.json", json.dumps(chat(1, 1)).encode()), ("a1.0.png", png(1)),
        ("README", b"not a sample member"),
        ("b2.json", json.dumps(chat(2, 0)).encode()),
        (f"{long_key}.json", json.dumps(chat(3, 2)).encode()), (f"{long_key}.1.png", png(3)),
        (f"{long_key}.0.png", png(4, (30, 30))),
    ]
    for fmt, name in ((tarfile.GNU_FORMAT, "gnu.tar"), (tarfile.PAX_FORMAT, "pax.tar")):
        write_tar(tmp_path / name, members, fmt)
    assert run_cli([str(tmp_path / "gnu.tar"), str(tmp_path / "pax.tar")]) == 0
    assert "2 of 2 shard(s) indexed, 6 samples" in capsys.readouterr().out
    shards = ShardSet(tmp_path)
    assert shards.counts == [3, 3]
    for shard in range(2):
        got = {}
        for position in range(3):
            ref = shards.ref(shard, position)
            got[ref.key] = read_sample(ref)
        assert sorted(got) == sorted(["a1", "b2", long_key])
        assert got[long_key] == {"json": members[4][1], "1.png": png(3), "0.png": png(4, (30, 30))}
        assert got["a1"] == {"json": members[0][1], "0.png": png(1)}
    manifest = json.loads(manifest_path(tmp_path / "gnu.tar").read_text())
    assert manifest["samples"][2]["members"] == ["0.png", "1.png", "json"]
    assert manifest["bytes"] == (tmp_path / "gnu.tar").stat().st_size


def test_refuses_what_it_cannot_index(tmp_path: Path, capsys) -> None:
    sample = [("k.json", json.dumps(chat(0, 0)).encode())]
    write_tar(tmp_path / "folders.tar", [("sub/k.json", sample[0][1])])
    write_tar(tmp_path / "split.tar", [("k.json", b"{}"), ("m.json", b"{}"), ("k.0.png", png(0))])
    write_tar(tmp_path / "good.tar", sample + [("z.json", b"{}"), ("z.0.png", png(1) * 20)])
    data = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:3000])  # inside the header of z.0.png
    (tmp_path / "boundary.tar").write_bytes(data[:2560])  # right after z.json: no end-of-archive blocks
    (tmp_path / "short.tar").write_bytes(data[:4000])  # inside the data of z.0.png
    (tmp_path / "zipped.tar").write_bytes(gzip.compress(data))
    write_tar(tmp_path / "nojson.tar", [("q.0.png", png(2))])

    cases = {"folders.tar": "is in a folder", "split.tar": "not next to each other", "cut.tar": "unreadable header",
             "boundary.tar": "no end-of-archive blocks", "short.tar": "truncated",
             "zipped.tar": "not a readable uncompressed tar"}
    for name, message in cases.items():
        assert run_cli([str(tmp_path / name)]) == 1, name
        assert message in capsys.readouterr().err, name
        assert not manifest_path(tmp_path / name).exists()
    assert run_cli([str(tmp_path / "nojson.tar")]) == 1  # indexed, but the sample has no json member
    assert "missing_member" in capsys.readouterr().err
    assert manifest_path(tmp_path / "nojson.tar").exists()
    assert run_cli([str(tmp_path / "nojson.tar"), "--no-verify"]) == 0

    (tmp_path / "x.tar.gz").write_bytes(gzip.compress(data))
    assert run_cli([str(tmp_path / "x.tar.gz")]) == 2
    assert "decompress" in capsys.readouterr().err
    assert run_cli([str(tmp_path / "absent")]) == 2
    (tmp_path / "empty").mkdir()
    assert run_cli([str(tmp_path / "empty")]) == 2
    with pytest.raises(SystemExit):
        run_cli([])


def test_root_option(tmp_path: Path) -> None:
    for part in ("a", "b"):
        (tmp_path / part).mkdir()
        write_tar(tmp_path / part / f"{part}.tar", [(f"{part}.json", json.dumps(chat(0, 0)).encode())])
    assert run_cli([str(tmp_path / "a" / "a.tar"), str(tmp_path / "b" / "b.tar"), "--root", str(tmp_path)]) == 0
    listed = [s["path"] for s in json.loads((tmp_path / "index.json").read_text())["shards"]]
    assert listed == ["a/a.tar", "b/b.tar"]
    assert run_cli([str(tmp_path / "a" / "a.tar"), "--root", str(tmp_path / "b")]) == 2
