"""Registering Isaac with transformers' Auto classes without importing transformers (or torch) up front.

`import isaac_train` must register IsaacConfig & co. with `AutoConfig`, `AutoModel*` and `AutoProcessor` (the
public contract), yet every console script lives in this package and `--help` must not pay for torch. So the
registration runs as soon as both sides can meet:

- at once, when transformers is already imported (`register_when_transformers_loads`);
- otherwise right after transformers' `__init__` finishes, from a `sys.meta_path` finder that wraps the
  `exec_module` of the `transformers` package (and, while registration is pending, of `isaac_train.*` modules);
- never in the middle of one of our own modules' imports: `from isaac_train.model.config import IsaacConfig` is
  what imports transformers in the first place, and registering then would import that half-run module. The
  finder counts the wrapped imports under way in each thread and registers when the outermost one ends.

Once registered, the finder leaves `sys.meta_path`; nothing is wrapped afterwards.
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import warnings
from types import ModuleType
from typing import Any

_lock = threading.RLock()
_local = threading.local()  # depth: wrapped imports under way in this thread; finding, registering: re-entry guards
_done = False
_FILE_LOADERS = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader,
                 importlib.machinery.ExtensionFileLoader)


def is_registered() -> bool:
    """True once the Auto classes know model_type `isaac`."""
    return _done


def ensure_registered() -> None:
    """Register Isaac with the Auto classes now (imports transformers, torch and the model code). Idempotent."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        _local.registering = True
        try:
            from .model.registration import register_auto_classes

            register_auto_classes()
        finally:
            _local.registering = False
        _done = True
        _uninstall()


def registered_on_access() -> None:
    """For `isaac_train.<Class>`: register now, unless one of our imports is under way in this thread (then the
    finder registers when it ends, as registering from inside it would import half-run modules)."""
    if not _done and not getattr(_local, "depth", 0):
        ensure_registered()


def register_when_transformers_loads() -> None:
    """Register now if transformers is imported, else as soon as it is (see the module docstring)."""
    if _done:
        return
    if _fully_imported("transformers"):
        ensure_registered()
        return
    with _lock:
        if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport())


def _fully_imported(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _ours_initializing(just_run: str) -> bool:
    """An isaac_train module other than `just_run` is still being imported, by another thread since this one is at
    depth 0: registering now would wait for its module lock while holding ours (a deadlock importlib breaks by
    handing one side a half-run module), so that thread registers when its own import ends."""
    return any(name.startswith("isaac_train.") and name != just_run and not _fully_imported(name)
               for name in list(sys.modules))


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterImport)]


def _after_import(name: str) -> None:
    """Called when the wrapped import of `name` ends (importlib still marks it initializing): register if no
    wrapped import is still under way in this thread."""
    if _done or getattr(_local, "depth", 0) or getattr(_local, "registering", False):
        return
    if not (name == "transformers" or _fully_imported("transformers")) or _ours_initializing(name):
        return
    if not _lock.acquire(blocking=False):
        return  # another thread is registering (blocking here could deadlock on its module locks)
    try:
        ensure_registered()
    except ImportError as err:  # a module of the chain half-imported by another thread: the next import retries
        if "partially initialized" not in str(err):
            warnings.warn(f"isaac_train could not register Isaac with transformers' Auto classes: {err}",
                          stacklevel=2)
    finally:
        _lock.release()


def _wrapped_exec(exec_module: Any) -> Any:
    def exec_then_register(module: ModuleType) -> None:
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            exec_module(module)
        finally:
            _local.depth -= 1
        _after_import(module.__name__)

    exec_then_register.isaac_wrapped = True
    return exec_then_register


class _DelegatingLoader:
    """For loaders that serve many modules (zipimport): wrap per module instead of patching the shared object."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self.exec_module = _wrapped_exec(loader.exec_module)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _AfterImport:  # a meta path finder (importlib.abc.MetaPathFinder would cost ~20 ms to import)
    """Finds `transformers` and `isaac_train.*` through the rest of sys.meta_path, with exec_module wrapped."""

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None):
        if _done or not (name == "transformers" or name.startswith("isaac_train.")):
            return None
        if getattr(_local, "finding", False):
            return None
        _local.finding = True
        try:
            spec = next((s for f in list(sys.meta_path) if f is not self and hasattr(f, "find_spec")
                         for s in [f.find_spec(name, path, target)] if s is not None), None)
        finally:
            _local.finding = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module") or getattr(loader.exec_module, "isaac_wrapped", 0):
            return spec
        if isinstance(loader, _FILE_LOADERS):
            loader.exec_module = _wrapped_exec(loader.exec_module)  # one loader object per module: patch it
        else:
            spec.loader = _DelegatingLoader(loader)
        return spec
