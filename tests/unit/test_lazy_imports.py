"""`import isaac_train` and the command-line modules load no torch or transformers, and the public contract
holds anyway: the Auto classes know Isaac whichever side is imported first. Each check needs a fresh interpreter
(this one has torch and transformers already), so each is one subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "transformers", "deepspeed", "wandb", "matplotlib", "scipy", "datasets", "peft", "webdataset")
CLI_MODULES = ("isaac_train.train.cli", "isaac_train.train.help", "isaac_train.eval.cli", "isaac_train.export.cli",
               "data_tools.cli", "data_tools.make_shards", "data_tools.index", "data_tools.validate",
               "data_tools.inspect_cmd", "data_tools.stats", "data_tools.demo", "isaac_train.config.checks",
               "isaac_train.config.hydra_errors", "isaac_train.eval", "isaac_train.export")


def fresh(code: str) -> dict:
    """Run `code` in a new interpreter; it prints one JSON object last."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_package_and_command_line_modules_import_nothing_heavy():
    seen = fresh(f"""
        import importlib, json, sys
        heavy = {HEAVY!r}
        import isaac_train
        after_package = [m for m in heavy if m in sys.modules]
        for name in {CLI_MODULES!r}:
            importlib.import_module(name)
        print(json.dumps({{"package": after_package, "cli": [m for m in heavy if m in sys.modules],
                          "all": sorted(isaac_train.__all__), "dir": sorted(dir(isaac_train))}}))
    """)
    assert seen["package"] == []
    assert seen["cli"] == []
    assert set(seen["all"]) <= set(seen["dir"])  # the lazy names are listed, though not imported yet


CONTRACT = """
    import json, sys
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                              AutoModelForImageTextToText, AutoProcessor)
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    config = AutoConfig.for_model("isaac")  # before any Isaac class is touched through isaac_train
    import isaac_train
    cls = type(config)
    print(json.dumps({
        "config": cls is isaac_train.IsaacConfig,
        "causal_lm": AutoModelForCausalLM._model_mapping[cls] is isaac_train.IsaacForConditionalGeneration,
        "image_text": AutoModelForImageTextToText._model_mapping[cls] is isaac_train.IsaacForConditionalGeneration,
        "model": AutoModel._model_mapping[cls] is isaac_train.IsaacModel,
        "processor": PROCESSOR_MAPPING[cls] is isaac_train.IsaacProcessor,
        "image_processor": isaac_train.IsaacImageProcessorFast in dict(IMAGE_PROCESSOR_MAPPING[cls]).values(),
        "finder_left": [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_AfterImport"],
    }))
"""


@pytest.mark.parametrize("first", [
    "import isaac_train",  # the hook: registration right after transformers' __init__
    "from transformers import AutoConfig\nimport isaac_train",  # transformers first: registered at once
    "import isaac_train.model.config",  # transformers imported half-way through one of our own modules
], ids=["isaac_train-first", "transformers-first", "nested"])
def test_auto_classes_know_isaac_in_any_import_order(first):
    result = fresh(first + "\n" + textwrap.dedent(CONTRACT))
    assert result == {"config": True, "causal_lm": True, "image_text": True, "model": True, "processor": True,
                      "image_processor": True, "finder_left": []}


def test_exporting_a_model_without_lora_never_imports_peft(tmp_path):
    """Export asks whether the model is a peft model; peft itself (0.2-1 s) comes only with LoRA. (transformers'
    save_pretrained still imports deepspeed, when installed, through accelerate's unwrap_model: not ours.)"""
    seen = fresh(f"""
        import json, sys
        from isaac_train.export.writer import export_model, is_peft_model
        from isaac_train.model import IsaacForConditionalGeneration
        from isaac_train.model.tiny import tiny_config
        from isaac_train.processing.processor import IsaacProcessor
        from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

        model = IsaacForConditionalGeneration(tiny_config(attn_backend="sdpa"))
        processor = IsaacProcessor.from_settings(build_tiny_tokenizer(), tiny_config())
        export_model(model, processor, {str(tmp_path / "hf")!r}, verify=False, log=lambda *_: None)
        plain = [is_peft_model(model), "peft" in sys.modules]
        from peft import LoraConfig, get_peft_model

        lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
        print(json.dumps({{"plain": plain, "lora": is_peft_model(lora)}}))
    """)
    assert seen == {"plain": [False, False], "lora": True}
