"""The packages of isaac_train import downwards only: no room imports a room above it, nor a sibling on its floor.

A room is a top-level package or module of isaac_train (`isaac_train/data/`, `isaac_train/factory.py`), and
`isaac_train` itself for the package's `__init__.py` (the public names). Every import counts, wherever it is
written: at the top, inside a function (the lazy imports that keep `--help` fast), under TYPE_CHECKING, and
`importlib.import_module("isaac_train....")` with a literal name. A lazy import is still a dependency: it only
moves the moment the room above is loaded.

FLOORS lists the rooms from the bottom up. A room may import its own modules and any room on a lower floor; rooms
on one floor know nothing of each other. The floors are what the code needs, lowest first:

 0. lazy (PEP 562 helper), precision (frozen weights in bf16), dist_env (DistEnv: rank, world size, collectives),
    metrics (metrics.jsonl, W&B, FLOPs, plots), processing (TensorStream, image processor, IsaacProcessor):
    nothing of ours.
 1. model (processing); checkpoint (dist_env: the manager's collectives take a DistEnv).
 2. registration_hook (model: Auto-class registration); distributed (process group, lifecycle, strategies:
    checkpoint, model, precision, dist_env; strategies take model factories, never a Config or data).
 3. isaac_train (the package: lazy, registration_hook, model, processing); data (model, processing, distributed:
    loader workers die with their rank, distributed.lifecycle).
 4. config (schema and checks: data for shard paths, checkpoint for writable run directories).
 5. factory (a model and a processor from a Config: config, model, processing, precision), the one factory the
    trainer, the objectives, the exporter and isaac-eval share.
 6. trained (a trained run's checkpoint read back into one process: factory, checkpoint, config).
 7. export, eval: what uses models (isaac-export, isaac-eval); neither imports the other (isaac-eval reads
    checkpoints through trained, not through export).
 8. objectives (the loss the loop optimises: GRPO samples with eval's batched generation and scores with
    eval's scorers).
 9. train (the loop and isaac-train: everything below).
10. demo (trains and evaluates the CPU demo: train, eval).
"""

from __future__ import annotations

import ast
from pathlib import Path

import isaac_train

PACKAGE = Path(isaac_train.__file__).parent
FLOORS: list[tuple[str, ...]] = [
    ("lazy", "precision", "dist_env", "metrics", "processing"),
    ("model", "checkpoint"),
    ("registration_hook", "distributed"),
    ("isaac_train", "data"),
    ("config",),
    ("factory",),
    ("trained",),
    ("export", "eval"),
    ("objectives",),
    ("train",),
    ("demo",),
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether the dotted name `isaac_train....` is a module or package of ours (not a name inside one)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "isaac_train"


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module of ours) for every import in the file at `path`, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from . import build`: the module build; `from .schema import Config`: the module schema
            out += [(node.lineno, f"{source}.{a.name}" if is_module(f"{source}.{a.name}") else source)
                    for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return [(line, target) for line, target in sorted(set(out))
            if target == "isaac_train" or target.startswith("isaac_train.")]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_listed_room_and_every_listed_room_exists():
    rooms = {room(module_name(p)) for p in modules()}
    assert sorted(rooms - set(FLOOR)) == [], "new rooms: give each a floor in FLOORS (and say why in the docstring)"
    assert sorted(set(FLOOR) - rooms) == [], "rooms listed in FLOORS that no longer exist"


def test_no_room_imports_a_room_above_it_or_beside_it():
    upward = []
    for path in modules():
        here = room(module_name(path))
        for line, target in imported(path):
            there = room(target)
            if there != here and FLOOR.get(there, -1) >= FLOOR.get(here, -1):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                              f"({here}, floor {FLOOR.get(here)} -> {there}, floor {FLOOR.get(there)})")
    assert upward == [], "imports up or sideways:\n" + "\n".join(upward)


def test_the_checker_sees_imports_inside_functions_and_resolves_relative_ones():
    """The parser itself: `from ..distributed.setup import ...` inside eval/cli.py's main() and `from . import
    build` in train/loop.py are found, named by their absolute modules."""
    assert "isaac_train.distributed.setup" in {target for _, target in imported(PACKAGE / "eval" / "cli.py")}
    assert "isaac_train.train.build" in {target for _, target in imported(PACKAGE / "train" / "loop.py")}
