"""Export: every tensor accounted for against the base, identical logits after reload, the base's files carried
over, a byte-identical round trip, adapters, and a failing verification that leaves nothing behind."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from isaac_train.export import ExportVerificationError, export_checkpoint, load_trained
from isaac_train.export.cli import main as export_cli
from isaac_train.export.writer import fixed_sample, logits_of, written_tensors
from isaac_train.model import IsaacForConditionalGeneration
from isaac_train.model.layouts import to_layout
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from ..train.conftest import tiny_overrides

MODES = {
    "full": [],
    "lora": ["peft=lora", "model.train_decoder=lora"],
    "vision": ["model.train_vision=all", "model.train_decoder=frozen"],
}


def _train(train_shards, base_dir, out, *extra):
    cfg = compose_config(tiny_overrides(train_shards, out, f"model.pretrained={base_dir}", "train.max_steps=3",
                                        "run.export=true", "run.export_dtype=fp32", *extra))
    return train(cfg)


def _export_key(name: str) -> str:
    """A parameter name of the trained (maybe peft) model -> its key in an Isaac-0.2 export."""
    name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    return next(iter(to_layout({name: None}, "0.2")))


@pytest.mark.parametrize("mode", list(MODES))
def test_export_accounts_for_every_tensor_and_reloads_to_the_same_logits(train_shards, base_dir, tmp_path, mode):
    result = _train(train_shards, base_dir, tmp_path / "run", *MODES[mode])
    hf = result.export_dir
    base = load_file(base_dir / "model.safetensors")
    exported = written_tensors(hf)
    assert exported.keys() == base.keys(), "no tensor missing, none extra, in the base's (0.2) layout"
    assert all(t.dtype == torch.float32 for t in exported.values())

    trained = load_trained(tmp_path / "run")  # the checkpoint, read back in this process
    names = dict(trained.model.named_parameters())
    adapted = {_export_key(n) for n in names if ".base_layer." in n}
    frozen = {_export_key(n) for n, p in names.items() if not p.requires_grad and "lora_" not in n} - adapted
    assert frozen, "each mode leaves something frozen"
    for key in frozen:
        assert torch.equal(exported[key], base[key].float()), f"frozen {key} must be the base's, bit for bit"
    changed = [k for k in exported if k not in frozen and not torch.equal(exported[k], base[k].float())]
    assert changed, "training changed the trained tensors"
    if mode == "lora":
        assert adapted and all(k in changed for k in adapted), "LoRA merged into every adapted module"

    sample = fixed_sample(trained.processor)
    reloaded = AutoModelForImageTextToText.from_pretrained(hf)
    assert isinstance(reloaded, IsaacForConditionalGeneration)
    diff = (logits_of(reloaded, sample) - logits_of(trained.model, sample)).abs().max()
    assert diff <= (1e-4 if mode == "lora" else 0.0), diff


def test_base_files_are_carried_over(train_shards, base_dir, tmp_path):
    hf = _train(train_shards, base_dir, tmp_path / "run").export_dir
    for name in ("modular_isaac.py", "README.md", "LICENSE"):
        assert (hf / name).read_bytes() == (base_dir / name).read_bytes(), name
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "chat_template.jinja"):
        assert (hf / name).is_file(), name
    import json

    assert json.loads((hf / "config.json").read_text())["auto_map"]["AutoConfig"] == "modular_isaac.IsaacConfig"
    assert "AutoProcessor" in json.loads((hf / "processor_config.json").read_text())["auto_map"]


def test_round_trip_zero_steps_is_byte_identical(train_shards, base_dir, tmp_path):
    """Perceptron-layout directory -> train 0 steps -> export: the same tensors, byte for byte (bf16, 0.2)."""
    cfg = compose_config(tiny_overrides(train_shards, tmp_path / "run", f"model.pretrained={base_dir}",
                                        "train.max_steps=0", "optim.warmup_steps=0", "run.export=true"))
    hf = train(cfg).export_dir
    base, exported = load_file(base_dir / "model.safetensors"), written_tensors(hf)
    assert base.keys() == exported.keys()
    for key, tensor in base.items():
        assert exported[key].dtype == tensor.dtype == torch.bfloat16
        assert exported[key].view(torch.uint8).equal(tensor.view(torch.uint8)), key


def test_cli_layout_dtype_and_shards(train_shards, base_dir, tmp_path):
    _train(train_shards, base_dir, tmp_path / "run")
    out = tmp_path / "flat"
    assert export_cli([str(tmp_path / "run"), str(out), "--layout", "0.1", "--dtype", "bf16",
                       "--max-shard-size", "200KB"]) == 0
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    tensors = written_tensors(out)
    assert "model.layers.0.mlp.up_proj.weight" in tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert AutoModelForImageTextToText.from_pretrained(out) is not None
    # a non-empty output directory is refused with the flag to use
    assert export_cli([str(tmp_path / "run"), str(out)]) == 1


def test_lora_adapter_loads_on_the_base(train_shards, base_dir, tmp_path):
    _train(train_shards, base_dir, tmp_path / "run", *MODES["lora"], "model.train_vision=last_n",
           "model.vision_last_n=1")
    out = tmp_path / "adapter"
    summary = export_checkpoint(tmp_path / "run", out, lora="adapter", dtype="fp32", log=lambda *_: None)
    assert summary.lora == "adapter" and (out / "adapter_config.json").is_file()
    trained = load_trained(tmp_path / "run")
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_dir, dtype=torch.float32),
                                      str(out))
    sample = fixed_sample(trained.processor)
    assert (logits_of(model, sample) - logits_of(trained.model, sample)).abs().max() < 1e-5
    # the projector and the last vision block trained in full: they travel as modules_to_save
    saved = load_file(out / "adapter_model.safetensors")
    assert any("vision_embedding.1" in k for k in saved) and any("encoder.layers.1" in k and "lora_" not in k
                                                                 for k in saved)


def test_adapter_needs_lora_and_a_base(train_shards, base_dir, tmp_path):
    _train(train_shards, base_dir, tmp_path / "run")
    with pytest.raises(ValueError, match="no LoRA adapter"):
        export_checkpoint(tmp_path / "run", tmp_path / "x", lora="adapter", log=lambda *_: None)


def test_failed_verification_leaves_nothing(train_shards, base_dir, tmp_path, monkeypatch):
    _train(train_shards, base_dir, tmp_path / "run")
    original = IsaacForConditionalGeneration.save_pretrained

    def lossy(self, directory, *args, **kwargs):  # a writer that drops a tensor
        state = {k: v for k, v in self.state_dict().items() if "vision_embedding.3" not in k}
        return original(self, directory, *args, state_dict=state, **kwargs)

    monkeypatch.setattr(IsaacForConditionalGeneration, "save_pretrained", lossy)
    with pytest.raises(ExportVerificationError, match="misses"):
        export_checkpoint(tmp_path / "run", tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_checkpoint(tmp_path / "nothing", tmp_path / "out")
