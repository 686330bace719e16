"""`--help` of every console script, and `isaac-train`'s own page: what the command is, every recipe with its
one-line summary, the config groups; `--help` and config errors never import torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from isaac_train.config.checks import safetensors_keys
from isaac_train.config.schema import ConfigError
from isaac_train.train.cli import CONFIG_DIR, compose_config
from isaac_train.train.help import help_page, recipe_summary

from ..data_helpers import make_chat_shards, make_checkpoint

BIN = Path(sys.executable).parent
RECIPES = sorted((CONFIG_DIR.parent / "recipes").glob("*.yaml"))


def header_text(path: Path) -> str:
    """A recipe's header comment as plain words, parentheses dropped (what a summary may quote)."""
    lines = [ln.lstrip("#").strip() for ln in path.read_text().splitlines()[1:] if ln.startswith("#")]
    text = " ".join(lines)
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\s*\([^()]*\)", "", text)
    return re.sub(r"\s+", " ", text)


def test_console_scripts_help():
    """The installed entry points: exit 0 and a page that says what the command is."""
    import data_tools.cli
    import isaac_train.eval.cli
    import isaac_train.export.cli

    expected = {"isaac-train": "isaac-train: train or fine-tune Isaac"}
    for script, module in (("isaac-data", data_tools.cli), ("isaac-eval", isaac_train.eval.cli),
                           ("isaac-export", isaac_train.export.cli)):
        expected[script] = " ".join(module.__doc__.splitlines()[0].split()[:6])  # argparse's description (wrapped)
    for script, opening in expected.items():
        out = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (script, out.stderr)
        assert opening in out.stdout, (script, out.stdout[:300])
    train = subprocess.run([str(BIN / "isaac-train"), "--help"], capture_output=True, text=True, timeout=120).stdout
    assert train.startswith("isaac-train: ") and "powered by Hydra" not in train
    for path in RECIPES:  # one line each: the name, then a summary quoted from the file's header
        line = next(ln for ln in train.splitlines() if ln.split()[:1] == [path.stem])
        summary = line.split(None, 1)[1].removesuffix(" (default)").removesuffix("...").strip()
        assert len(summary) > 10 and summary.rstrip(".") in header_text(path), (path.stem, summary)
    assert re.search(r"^\s+demo_cpu\s.*\(default\)", train, flags=re.M)  # configs/train.yaml's default recipe
    for group in ("model", "data", "strategy", "optim", "peft", "logging"):
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        assert re.search(rf"^\s+{group}\s+" + r",\s+".join(rf"{o}\*?" for o in options) + "$", train, flags=re.M)
    assert "--hydra-help" in train and "--cfg job" in train and "isaac_train/config/schema.py" in train


def test_help_and_config_errors_import_no_torch():
    """In a fresh interpreter: --help, a bad value and an unknown key end as they should without torch."""
    code = """
        import contextlib, io, json, sys
        from isaac_train.train.cli import main
        results = []
        for argv in (["--help"], ["train.max_steps=-1"], ["+train.nope=1"], ["strategy=nope"]):
            sys.argv = ["isaac-train", *argv]
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main()
                    code = 0
                except SystemExit as exit:
                    code = exit.code
            results.append([code, out.getvalue()[:40], err.getvalue().strip()])
        print(json.dumps({"results": results, "heavy": [m for m in ("torch", "transformers") if m in sys.modules]}))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    (help_code, help_out, _), *errors = seen["results"]
    assert help_code == 0 and help_out.startswith("isaac-train: train or fine-tune")
    assert [e[0] for e in errors] == [2, 2, 2]
    assert errors[0][2].startswith("isaac-train: train.max_steps: must be >= 0")
    assert errors[1][2].startswith("isaac-train: train.nope: unknown key")
    assert errors[2][2].startswith("isaac-train: strategy: no option 'nope'")
    assert seen["heavy"] == []


def test_recipe_summary_is_the_first_clause_of_the_header(tmp_path):
    recipe = tmp_path / "recipe" / "my_run.yaml"
    recipe.parent.mkdir()
    recipe.write_text("# @package _global_\n# my_run (the default recipe): LoRA on the decoder (rank 16, all\n"
                      "# projections), vision frozen; more. Hardware: one GPU.\ndefaults:\n  - _self_\n")
    assert recipe_summary(recipe) == "LoRA on the decoder"
    (tmp_path / "train.yaml").write_text("defaults:\n  - recipe: my_run\n  - _self_\n")
    page = help_page(tmp_path, ["recipe=my_run", "recipe=other"])
    assert re.search(r"^  my_run\s+LoRA on the decoder \(default\)$", page, flags=re.M)
    assert "recipe my_run:\n  my_run (the default recipe): LoRA on the decoder (rank 16, all projections)" in page
    assert "no recipe 'other'" in page


def test_checkpoint_weights_are_read_from_the_safetensors_header(tmp_path):
    """The config check reads tensor names with json alone; a cut or garbled header names the file."""
    ckpt = make_checkpoint(tmp_path / "ckpt")
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert safetensors_keys(ckpt / "model.safetensors") == list(f.keys())
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    shards = make_chat_shards(tmp_path / "shards", n=2)
    for broken in (data[:6], data[:8] + b"{not json" + data[17:], data[: len(data) - 4]):
        weights.write_bytes(broken)
        with pytest.raises(ConfigError, match=r"model\.pretrained: .*model\.safetensors is not a readable "
                                              r"safetensors file"):
            compose_config(["recipe=sft_lora", f"model.pretrained={ckpt}", f"data.train_shards={shards}",
                            f"run.output_dir={tmp_path / 'run'}"])
