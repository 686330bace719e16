"""A base checkpoint shaped like Perceptron's: Isaac-0.2 nested layout, bf16 weights, remote code with auto_map,
README and LICENSE, tokenizer and processor files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from isaac_train.model import IsaacForConditionalGeneration
from isaac_train.model.tiny import tiny_config
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

REMOTE_CODE = "# Perceptron's remote code (never imported by isaac-train)\nraise RuntimeError('remote code')\n"


def make_base(out: Path) -> Path:
    config = tiny_config(checkpoint_layout="0.2")
    torch.manual_seed(11)
    IsaacForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(out)
    IsaacProcessor.from_settings(build_tiny_tokenizer(), config).save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modular_isaac.IsaacConfig",
                       "AutoModelForCausalLM": "modular_isaac.IsaacForConditionalGeneration"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    proc = json.loads((out / "processor_config.json").read_text())
    proc["auto_map"] = {"AutoProcessor": "modular_isaac.IsaacProcessor"}
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2))
    (out / "modular_isaac.py").write_text(REMOTE_CODE)
    (out / "README.md").write_text("# Isaac tiny\nA test checkpoint.\n")
    (out / "LICENSE").write_text("CC-BY-NC 4.0 (test)\n")
    return out


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base") / "Isaac-tiny")
