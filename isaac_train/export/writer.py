"""Write a trained model as a Hugging Face directory, and prove it before saying done.

What a directory holds: config.json and generation_config.json; the weights as (sharded, with an index)
safetensors named in the base checkpoint's layout (Isaac-0.1 flat or Isaac-0.2 nested, or `layout=`); the
tokenizer files, chat template and processor_config.json; and, copied as they are, the remote-code `*.py`
files and README / LICENSE / NOTICE files the base checkpoint directory (`model.pretrained`) carried.

LoRA is merged into every adapted module (decoder and, with peft.vision, the vision tower), or written as a
PEFT adapter directory (`lora="adapter"`) that loads with `PeftModel.from_pretrained` on the base; modules that
trained in full beside LoRA (projector, vision blocks) go into the adapter as `modules_to_save`.

Verification: the directory is written to `OUT.tmp`, reloaded with the Auto classes (or base + adapter), its
tensors checked against the exported model by name (none missing, none extra, equal) and its logits on a fixed
multimodal sample compared with the model as trained; only then is it renamed to OUT.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
COPIED = ("*.py", "README*", "readme*", "LICENSE*", "License*", "license*", "NOTICE*", "USE_POLICY*")
# logits of the export against the model as trained: exact for the same weights, merge rounding for LoRA
MERGE_TOLERANCE = 1e-4


class ExportVerificationError(RuntimeError):
    """The written directory does not reproduce the trained model; nothing was put at the output path."""


@dataclass
class ExportSummary:
    out_dir: Path
    layout: str
    dtype: str
    lora: str | None
    parameters: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    copied: list[str] = field(default_factory=list)
    max_logit_diff: float = 0.0
    max_merge_diff: float | None = None

    def __str__(self) -> str:
        total = sum(self.parameters.values())
        parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.parameters.items())
        lines = [
            f"exported to {self.out_dir}",
            f"  parameters {total / 1e6:.2f}M ({parts}); {self.dtype}; layout Isaac-{self.layout}"
            + (f"; LoRA {self.lora}" if self.lora else ""),
            f"  {len(self.files)} files, {self.bytes / 2**20:.1f} MiB"
            + (f"; copied from the base: {', '.join(self.copied)}" if self.copied else ""),
            f"  verified: reloaded logits max |diff| {self.max_logit_diff:.2e} vs the exported weights"
            + (f", {self.max_merge_diff:.2e} merged vs LoRA as trained" if self.max_merge_diff is not None else ""),
        ]
        return "\n".join(lines)


def fixed_sample(processor) -> dict[str, torch.Tensor]:
    """A multimodal prompt that exercises vision, projector and decoder: two images of different shapes."""
    yy, xx = np.mgrid[0:48, 0:80]
    first = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)
    second = np.stack([yy * 7 % 256, xx % 256, np.full_like(xx, 128)], -1).astype(np.uint8)[:40, :32]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare"},
                                             {"type": "image"}, {"type": "text", "text": "the two shapes."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=prompt, images=[PIL.Image.fromarray(first), PIL.Image.fromarray(second)])
    return {k: v for k, v in batch.items() if torch.is_tensor(v)}


@torch.no_grad()
def logits_of(model: nn.Module, sample: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(**sample).logits.float()


def merged_copy(model: nn.Module, in_place: bool = False) -> nn.Module:
    """A plain IsaacForConditionalGeneration: LoRA merged into a copy when the model is a peft model (into `model`
    itself with `in_place`, for a copy the caller made already)."""
    from ..model import IsaacForConditionalGeneration

    if isinstance(model, IsaacForConditionalGeneration):
        return model if in_place else sharing_copy(model, {})
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if in_place:
            return model.merge_and_unload()
        merged = lora_merged_weights(model)
        if merged is None:  # LoRA variants merged_weights does not handle: peft's own merge, on a full copy
            return copy.deepcopy(model).merge_and_unload()
        return sharing_copy(model.get_base_model(), merged)
    raise TypeError(f"cannot export a {type(model).__name__}: expected an Isaac model or a peft model around one")


def lora_merged_weights(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """{plain Isaac weight name: base weight + LoRA delta} for every LoRA Linear of a peft `model`, computed as
    peft's merge does (the same `get_delta_weight`, added to the base weight; in fp32 when the base is held in a
    lower precision). None when a module is not a plain LoRA Linear (DoRA, merged already, several adapters)."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        adapters = list(module.active_adapters)
        if (not isinstance(module, LoraLinear) or module.merged or len(adapters) != 1
                or module.use_dora.get(adapters[0], False)):
            return None
        weight = module.get_base_layer().weight
        base = weight.detach() if weight.dtype == torch.float32 else weight.detach().float()
        merged[f"{name}.weight"] = base + module.get_delta_weight(adapters[0]).float()
    return merged


def sharing_copy(isaac: nn.Module, replaced: dict[str, torch.Tensor]) -> nn.Module:
    """A plain IsaacForConditionalGeneration holding `isaac`'s tensors themselves (no copy; peft's `base_layer`
    names mapped back, LoRA weights left out) except those in `replaced`: a merged model that costs only the
    merged weights, where a deep copy would cost a second model."""
    from ..model import IsaacForConditionalGeneration

    state = {}
    for key, value in isaac.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = replaced.get(key, value)
    with torch.device("meta"):
        plain = IsaacForConditionalGeneration(copy.deepcopy(isaac.config))
    plain.load_state_dict(state, strict=True, assign=True)
    plain.generation_config = copy.deepcopy(isaac.generation_config)
    return plain


def fp32_copy_if_needed(model: nn.Module) -> tuple[nn.Module, bool]:
    """(`model`, False) when every floating-point weight is fp32, else (an fp32 copy, True): a train.precision=bf16
    run holds its frozen weights in bf16, and merging and verifying run in fp32 (bf16 -> fp32 is exact, so a bf16
    base written in bf16 comes out byte for byte)."""
    if all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point()):
        return model, False
    return copy.deepcopy(model).float(), True


def parameter_parts(model: nn.Module) -> dict[str, int]:
    parts = {"vision": 0, "projector": 0, "decoder": 0}
    for name, p in model.named_parameters():
        part = ("vision" if "vision_embedding.0." in name else
                "projector" if "vision_embedding." in name else "decoder")
        parts[part] += p.numel()
    return parts


def base_dir_of(cfg) -> Path | None:
    base = cfg.model.pretrained if cfg is not None else None
    return Path(base) if base and Path(base).is_dir() else None


def base_dtype(base: Path | None) -> str:
    if base is None:
        return "fp32"
    config = json.loads((base / "config.json").read_text())
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return "bf16" if "bfloat16" in name else "fp32"


def copy_base_files(base: Path | None, out: Path) -> list[str]:
    """Remote code and README / license files of the base directory, byte for byte."""
    if base is None:
        return []
    copied = []
    for pattern in COPIED:
        for file in sorted(base.glob(pattern)):
            if file.is_file() and not (out / file.name).exists():
                shutil.copy2(file, out / file.name)
                copied.append(file.name)
    # keep the base's remote-code entry points next to our processor settings
    base_proc, ours = base / "processor_config.json", out / "processor_config.json"
    if base_proc.is_file() and ours.is_file():
        theirs, mine = json.loads(base_proc.read_text()), json.loads(ours.read_text())
        for key in ("auto_map", "processor_class"):
            if key in theirs and key not in mine:
                mine[key] = theirs[key]
        ours.write_text(json.dumps(mine, indent=2) + "\n")
    return copied


def refuse_non_finite(model: nn.Module) -> None:
    """A model with NaN or inf weights (a run that diverged) is not exported."""
    counts = ((name, int((~torch.isfinite(t)).sum())) for name, t in model.state_dict().items()
              if t.is_floating_point())
    bad = [(name, n) for name, n in counts if n]
    if bad:
        shown = ", ".join(f"{name} ({n} values)" for name, n in bad[:3])
        raise ExportVerificationError(
            f"non-finite weights: {len(bad)} tensors hold NaN or inf, e.g. {shown}. The run diverged before this "
            "checkpoint; export an earlier checkpoint (checkpoints/step_N) instead.")


def written_tensors(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def export_model(model: nn.Module, processor, out_dir: str | Path, cfg=None, layout: str | None = None,
                 dtype: str = "auto", lora: str = "merge", max_shard_size: str | int = "5GB", verify: bool = True,
                 overwrite: bool = False, log=print) -> ExportSummary:
    """Export an in-memory trained model (plain or peft-wrapped). `cfg`: the run's Config (for the base
    checkpoint directory and what trained); `layout` "0.1" / "0.2" (default: the base's); `dtype` auto (the
    base's) / fp32 / bf16; `lora` merge / adapter."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose another output directory or pass "
                              "--overwrite (overwrite=True)")
    if lora not in ("merge", "adapter"):
        raise ValueError(f"lora={lora!r}: choose merge or adapter")
    base = base_dir_of(cfg)
    dtype = base_dtype(base) if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose auto, fp32 or bf16")
    torch_dtype = DTYPES[dtype]
    from peft import PeftModel

    is_lora = isinstance(model, PeftModel)
    if lora == "adapter" and not is_lora:
        raise ValueError("lora=adapter but the model has no LoRA adapter (peft=none): export merged weights")
    if lora == "adapter" and base is None:
        raise ValueError("an adapter export needs the base checkpoint directory it applies to (model.pretrained); "
                         "this run trained from a built-in size: export merged weights instead")
    refuse_non_finite(model)
    model, owned = fp32_copy_if_needed(model)
    if owned:
        log("export: an fp32 copy of the model (its frozen weights are held in bf16)")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.eval()
    sample = fixed_sample(processor) if verify else None

    if lora == "adapter":
        from .adapter import save_adapter, verify_adapter

        exported = save_adapter(model, tmp, base, cfg, torch_dtype)
        layout = layout or "0.1"
    else:
        log(f"export: {'merging LoRA into ' if is_lora else ''}a copy of the model")
        reference = logits_of(model, sample) if is_lora and verify else None  # before a merge in place
        exported = merged_copy(model, in_place=owned)
        merge_diff = _check_merge(reference, exported, sample) if reference is not None else None
        layout = layout or exported.config.checkpoint_layout
        exported.config.checkpoint_layout = layout
        exported.to(torch_dtype)
        log(f"export: writing {dtype} weights (Isaac-{layout} layout) to {tmp}")
        exported.save_pretrained(tmp, max_shard_size=max_shard_size)
    processor.save_pretrained(tmp)
    copied = copy_base_files(base, tmp)
    summary = ExportSummary(out, layout, dtype, ("adapter" if lora == "adapter" else "merged") if is_lora else None,
                            parameter_parts(model if lora == "adapter" else exported), copied=copied)
    if verify:
        log("export: verifying (reload, tensors by name, logits on a fixed multimodal sample)")
        if lora == "adapter":
            summary.max_logit_diff = verify_adapter(model, tmp, base, sample, torch_dtype)
        else:
            summary.max_merge_diff = merge_diff
            _check_written(exported, tmp, layout)
            expected = logits_of(exported, sample)
            del exported, model  # the reload need not sit beside the exported copy (it may be one, `owned`)
            summary.max_logit_diff = _check_reload(tmp, sample, torch_dtype, expected)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    summary.files = sorted(p.name for p in out.iterdir())
    summary.bytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    log(str(summary))
    return summary


def _check_merge(reference: torch.Tensor, merged: nn.Module, sample: dict) -> float:
    """Logits of the merged fp32 copy against the LoRA model's as trained, `reference` (the merge must lose
    nothing)."""
    diff = float((logits_of(merged, sample) - reference).abs().max())
    if diff > MERGE_TOLERANCE * max(1.0, float(reference.abs().max())):
        raise ExportVerificationError(f"the merged weights' logits differ from the trained model's by {diff:.3e}: "
                                      "the LoRA merge lost something")
    return diff


def _verify_merged(exported: nn.Module, tmp: Path, sample: dict, torch_dtype: torch.dtype, layout: str) -> float:
    """Every tensor written equals the exported model's (by name, in the layout), and the directory reloads with
    the Auto classes to the same logits. Returns the max |logit difference| (0.0 when it passes)."""
    _check_written(exported, tmp, layout)
    return _check_reload(tmp, sample, torch_dtype, logits_of(exported, sample))


def _check_written(exported: nn.Module, tmp: Path, layout: str) -> None:
    """The tensors in `tmp` are exactly the exported model's, by name in `layout`; read one tensor at a time (a
    2B model's files would otherwise sit in memory beside the model)."""
    from safetensors import safe_open

    from ..model.layouts import to_layout

    expected = to_layout(exported.state_dict(), layout)
    seen, extra, differ = set(), [], []
    for file in sorted(tmp.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), no iteration)
                if key not in expected:
                    extra.append(key)
                    continue
                seen.add(key)
                if not torch.equal(expected[key], f.get_tensor(key)):
                    differ.append(key)
    missing = sorted(set(expected) - seen)
    if missing or extra:
        raise ExportVerificationError(f"the export in {tmp} misses {missing[:5]} ({len(missing)}) and has extra "
                                      f"{sorted(extra)[:5]} ({len(extra)}) tensors")
    if differ:
        raise ExportVerificationError(f"{len(differ)} tensors in {tmp} differ from the model, e.g. {differ[:5]}")


def _check_reload(tmp: Path, sample: dict, torch_dtype: torch.dtype, expected: torch.Tensor) -> float:
    """`tmp` reloads with the Auto classes to the exported weights' logits `expected`, exactly."""
    from transformers import AutoModelForImageTextToText

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp, dtype=torch_dtype)
    diff = float((logits_of(reloaded, sample) - expected).abs().max())
    if diff != 0.0:
        raise ExportVerificationError(f"the reloaded export's logits differ from the exported weights' by {diff:.3e}: "
                                      f"{tmp} does not load as written")
    return diff
