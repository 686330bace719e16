"""`isaac-train --help`: what the command is, the recipes (one line each, from each file's header comment), the
config groups and where every key is documented. Read from the config directory as it is on disk, with the
standard library only: the page comes up without Hydra, torch or transformers.

A recipe's header is the comment block at the top of its YAML file, after `# @package _global_`, and starts
`NAME: what it is for...` (or `NAME (the default recipe): ...`). The one-line summary is the first clause of that
sentence (up to the first `:`, `;`, `,` or `.` outside parentheses), its parentheses left out.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

COMMON_KEYS = ("model.pretrained", "data.train_shards", "data.eval_shards", "train.max_steps", "train.seq_len",
               "train.seed", "run.output_dir")


def recipe_header(path: Path) -> str:
    """The header comment of a recipe file as one paragraph (its `# @package` line left out)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            lines.append(text)
    return " ".join(lines)


def recipe_summary(path: Path) -> str:
    """The first clause of a recipe's header, without its name and parentheses (see the module docstring)."""
    text = recipe_header(path)
    name = re.escape(path.stem)
    text = re.sub(rf"^{name}\b\s*(\([^)]*\))?\s*:\s*", "", text)
    out, depth = [], 0
    for i, ch in enumerate(text):
        if ch in "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        elif depth == 0 and ch in ":;," or depth == 0 and ch == "." and text[i + 1: i + 2] in ("", " "):
            break
        elif depth == 0:
            out.append(ch)
    return re.sub(r"\s+", " ", "".join(out)).strip() or "(no header comment)"


def defaults(config_dir: Path) -> dict[str, str]:
    """group -> option chosen by train.yaml's defaults list (`  - group: option` lines)."""
    text = (config_dir / "train.yaml").read_text(encoding="utf-8")
    return dict(re.findall(r"^\s*-\s*(\w+)\s*:\s*(\w+)", text, flags=re.M))


def groups(config_dir: Path) -> dict[str, list[str]]:
    """group -> its options (the YAML files of each config directory), sorted."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(config_dir.iterdir()) if d.is_dir() and any(d.glob("*.yaml"))}


def help_page(config_dir: Path, argv: list[str] = ()) -> str:
    """The page `isaac-train --help` prints; with `recipe=NAME` on the command line, that recipe's whole header."""
    width = max(min(shutil.get_terminal_size((120, 24)).columns, 120), 80)  # 120 into a pipe or a file
    chosen = defaults(config_dir)
    options = groups(config_dir)
    recipes = sorted((config_dir / "recipe").glob("*.yaml"))
    name_width = max((len(p.stem) for p in recipes), default=8) + 2
    lines = [
        "isaac-train: train or fine-tune Isaac, Perceptron's vision-language model, from a recipe and Hydra",
        "overrides (KEY=VALUE). One process runs one device; under torchrun, one process per GPU.",
        "",
        "usage:",
        "  isaac-train [recipe=NAME] [GROUP=OPTION] [KEY=VALUE ...]   train (default recipe: "
        f"{chosen.get('recipe', 'none')})",
        "  isaac-train recipe=NAME [KEY=VALUE ...] --cfg job          print the resolved config and exit",
        "  isaac-train recipe=NAME --help                            this page and the recipe's whole header",
        "  isaac-train plot RUN_DIR                                  redraw RUN_DIR/plots/ from metrics.jsonl",
        "  torchrun --nproc-per-node N -m isaac_train.train [...]    one node; many: launch/slurm/train.sbatch",
        "",
        "recipes (recipe=NAME):",
    ]
    for path in recipes:
        mark = " (default)" if path.stem == chosen.get("recipe") else ""
        summary = textwrap.shorten(recipe_summary(path), width=max(width - name_width - 2 - len(mark), 30),
                                   placeholder="...")
        lines.append(f"  {path.stem:<{name_width}}{summary}{mark}")
    lines += ["", "config groups (GROUP=OPTION; * the default):"]
    for group, opts in options.items():
        if group != "recipe":
            shown = ", ".join(o + ("*" if o == chosen.get(group) else "") for o in opts)
            lines.append(f"  {group:<{name_width}}{shown}")
    notes = [
        "keys set most often: " + ", ".join(COMMON_KEYS) + ".",
        "Every key, its default and what it means: isaac_train/config/schema.py (README: Training); the YAML files: "
        f"{config_dir} (recipe/ holds the recipes). A recipe's resolved values: `isaac-train recipe=NAME --cfg job`.",
        "A wrong key or value stops the command with one line naming it (exit 2); HYDRA_FULL_ERROR=1 shows the trace.",
        "Hydra's own flags (--multirun, --config-dir, --info, shell completion): isaac-train --hydra-help",
    ]
    lines.append("")
    for note in notes:
        lines += textwrap.wrap(note, width=width, break_on_hyphens=False)
    asked = [a.split("=", 1)[1] for a in argv if a.startswith("recipe=")]
    for name in asked:
        path = config_dir / "recipe" / f"{name}.yaml"
        text = recipe_header(path) if path.is_file() else f"no recipe {name!r}; choose one of the above"
        lines += ["", f"recipe {name}:", *textwrap.wrap(text, width=width - 2, initial_indent="  ",
                                                           subsequent_indent="  ")]
    return "\n".join(lines)
