"""Reading a pickle of plain data (refer's `refs(unc).p`, `refs(google).p`, `refs(umd).p`) without running code.

A pickle can name any importable callable and have it called while loading (`__reduce__`, `copy_reg`'s
`_reconstructor`, `INST`/`OBJ`): every such reference goes through `Unpickler.find_class`, and ours refuses them
all. What is left are the opcodes that build lists, dicts, tuples, strings, numbers, booleans and None, which is
all refer's pickles hold (a list of dicts of ids, strings and lists of sentence dicts, written by Python 2's
cPickle), so they load unchanged and anything else is refused before any of it has run. (The checkpoint loader's
unpickler, isaac_train/checkpoint/safe_load.py, admits named classes and speaks of checkpoints; this one admits
none and needs no torch.)
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
_PROTO = 0x80  # the first byte of a protocol 2+ pickle


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a callable or class; it was refused before anything from it ran."""


class _PlainUnpickler(pickle.Unpickler):
    """Admits no global at all: plain containers, strings and numbers need none."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"it names {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("it holds a persistent reference")


def looks_like_pickle(path: Path) -> bool:
    """Whether `path` is a pickle by its name (.p, .pkl, .pickle) or its first byte (protocol 2 and later)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(1)
    return head == bytes([_PROTO])


def load_plain_pickle(path: Path | str, what: str) -> Any:
    """The plain data in the pickle at `path`. ValueError with one line naming `what` and the file when it names
    any callable or class (nothing from it has run), is cut short or is not a pickle."""
    path = Path(path)
    data = path.read_bytes()
    try:
        # Python 2 byte strings are read as UTF-8 (refer's are ASCII; its unicode strings carry their own encoding).
        return _PlainUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except UnsafePickleError as err:
        raise ValueError(f"{what} {path}: refused to unpickle it, {err}; a pickle of refer's referring expressions "
                         "holds only lists, dicts, strings and numbers, so this file is something else (nothing from "
                         "it was run)") from None
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, IndexError, KeyError,
            TypeError, AttributeError, ImportError, MemoryError) as err:
        # ImportError/AttributeError cannot come from find_class (it refuses first); the rest are damaged files.
        raise ValueError(f"{what} {path} is not a readable pickle of plain data ({type(err).__name__}: "
                         f"{str(err).strip()[:120]}); pass refer's refs(*.p) as distributed, or a JSON list "
                         "of refs") from None
