"""`--refs` reads refer's pickle (refs(unc).p as distributed: a pickled list of plain dicts, written by Python 2)
through an unpickler that admits no class or callable: the same samples as the JSON refs; a planted payload (an
object whose __reduce__ writes a file) is refused in one line naming the file, and the file is never written."""

from __future__ import annotations

import json
import pathlib
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest

from data_tools import cli
from data_tools.converters import InputError
from data_tools.formats import build_converter
from data_tools.plain_pickle import load_plain_pickle

from .test_coco import REFS, coco, convert, read_samples  # noqa: F401  (coco: the fixture)

REFER_REFS = [  # refer's keys: sent_ids, file_name, ann_id, ref_id, image_id, split, sentences, category_id
    {**ref, "sent_ids": list(range(len(ref["sentences"]))), "file_name": f"COCO_train2014_{ref['ann_id']}_1.jpg",
     "image_id": {10: 1, 20: 2, 999: 1, 40: 4}[ref["ann_id"]], "category_id": 1,
     "sentences": [{"tokens": (s if isinstance(s, str) else s.get("sent", s["raw"])).split(), "sent_id": k,
                    **({"raw": s, "sent": s} if isinstance(s, str) else s)} for k, s in enumerate(ref["sentences"])]}
    for ref in REFS]


def py2_pickle(obj: Any) -> bytes:
    """`obj` as Python 2's cPickle.dump(obj, f, 2) writes it: str as byte strings (SHORT_BINSTRING), ints as
    BININT, lists and dicts by APPENDS / SETITEMS (what `pickle.dumps` of Python 3 does not write: it writes
    unicode)."""
    def put(value: Any) -> bytes:
        if value is None:
            return b"N"
        if isinstance(value, bool):
            return b"\x88" if value else b"\x89"
        if isinstance(value, int):
            return b"J" + struct.pack("<i", value)
        if isinstance(value, float):
            return b"G" + struct.pack(">d", value)
        if isinstance(value, str):
            data = value.encode("utf-8")
            return b"U" + bytes([len(data)]) + data
        if isinstance(value, list):
            return b"](" + b"".join(put(v) for v in value) + b"e"
        if isinstance(value, dict):
            return b"}(" + b"".join(put(k) + put(v) for k, v in value.items()) + b"u"
        raise TypeError(type(value))
    return b"\x80\x02" + put(obj) + b"."


class Payload:
    """What a tampered pickle would carry: loading it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "ran")


def test_refers_pickles_give_the_json_refs_samples(coco: Path, tmp_path: Path) -> None:  # noqa: F811
    want = convert(coco, tmp_path / "json", refs=coco.parent / "refs.json")
    expected = [o for o, _ in read_samples(tmp_path / "json")]
    assert want["samples"] == 3
    written = {"refs(unc).p": py2_pickle(REFER_REFS), "refs(google).p": pickle.dumps(REFER_REFS, protocol=0),
               "refs_umd.pkl": pickle.dumps(REFER_REFS, protocol=2)}
    for name, data in written.items():
        path = coco.parent / name
        path.write_bytes(data)
        assert load_plain_pickle(path, "--refs") == REFER_REFS
        report = convert(coco, tmp_path / name, refs=path)
        assert report["skipped"] == want["skipped"] and report["samples"] == 3, name
        got = [o for o, _ in read_samples(tmp_path / name)]
        assert [o["messages"] for o in got] == [o["messages"] for o in expected]
        assert [o["meta"] for o in got] == [o["meta"] for o in expected]
    assert Path(want["input"]).name == "instances.json"


def test_refs_split_and_cli_on_refers_pickle(coco: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    path = coco.parent / "refs(unc).p"
    path.write_bytes(py2_pickle(REFER_REFS))
    assert cli.main(["make-shards", "--format", "coco", str(coco), str(tmp_path / "val"), "--image-root",
                     str(coco.parent.parent / "images"), "--refs", str(path), "--refs-split", "val"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    assert [o["meta"]["split"] for o, _ in read_samples(tmp_path / "val")] == ["val", "val"]
    assert json.loads((tmp_path / "val" / "make_shards_report.json").read_text())["source"] == "refs(unc)"


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_planted_payload_is_refused_and_never_runs(coco: Path, tmp_path: Path, protocol: int,  # noqa: F811
                                                     capsys) -> None:
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof), protocol=protocol))  # the payload works when unpickled freely
    assert proof.read_text() == "ran"
    marker = tmp_path / "marker"
    path = coco.parent / "refs(unc).p"
    path.write_bytes(pickle.dumps([REFER_REFS[0], Payload(marker)], protocol=protocol))
    with pytest.raises(InputError) as err:
        build_converter("coco", coco, coco.parent.parent / "images", refs=path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "refused to unpickle it, it names " in message
    assert not marker.exists()
    assert cli.main(["make-shards", "--format", "coco", str(coco), str(tmp_path / "out"), "--refs", str(path)]) == 2
    assert str(path) in capsys.readouterr().err and not marker.exists()


def test_python2_reconstructor_and_damaged_pickles_are_refused(coco: Path, tmp_path: Path) -> None:  # noqa: F811
    path = coco.parent / "refs.p"
    # Python 2's protocol 0 of a new-style object: copy_reg._reconstructor(object, object, None)
    path.write_bytes(b"(lp0\nccopy_reg\n_reconstructor\np1\n(c__builtin__\nobject\np2\ng2\nNtp3\nRp4\na.")
    with pytest.raises(InputError, match=r"refused to unpickle it, it names copy_reg\._reconstructor"):
        build_converter("coco", coco, refs=path)
    path.write_bytes(py2_pickle(REFER_REFS)[:-40])  # cut short
    with pytest.raises(InputError, match="is not a readable pickle of plain data"):
        build_converter("coco", coco, refs=path)
    path.write_bytes(py2_pickle({"refs": REFER_REFS}))
    with pytest.raises(InputError, match="pickled dict, not refer's list of refs"):
        build_converter("coco", coco, refs=path)
