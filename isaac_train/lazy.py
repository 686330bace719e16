"""Names a package imports on first use (PEP 562), so that a command's `--help` never waits for torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str], on_load: Callable[[], None] | None = None
                 ) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `names` maps a public name to the (relative) module that defines it;
    the first access imports it, keeps it in the package (later accesses are plain lookups) and calls `on_load`."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        if on_load is not None:
            on_load()
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
