"""`isaac-data COMMAND ...`: make-shards, index, validate, inspect, stats, demo.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`. Only the module of
the command named on the command line is imported: `isaac-data --help` lists the commands from COMMANDS below
without importing any of them (some import torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "make-shards": ("data_tools.make_shards",
                    "convert chat JSONL / LLaVA JSON / HF datasets / image folders / COCO / interleaved documents "
                    "(segments JSONL, OBELICS, MMC4) to shards; --format is inferred when not given"),
    "index": ("data_tools.index", "write manifests and index.json for existing WebDataset tars"),
    "validate": ("data_tools.validate", "decode and process every sample; report each problem by key and reason"),
    "inspect": ("data_tools.inspect_cmd", "print or render a few samples, images included"),
    "stats": ("data_tools.stats", "token/image counts, length histogram PNG, packing efficiency for a seq_len"),
    "demo": ("data_tools.demo", "make the synthetic shapes dataset the CPU demo trains on"),
}


def main(argv: list[str] | None = None) -> int:
    """Run `isaac-data COMMAND ...` (`argv` without the program name; None: sys.argv) and return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    named = next((a for a in argv if not a.startswith("-")), None)  # the command: its arguments come after it
    parser = argparse.ArgumentParser(prog="isaac-data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == named:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
