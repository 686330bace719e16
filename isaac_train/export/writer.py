"""Write a trained model as a Hugging Face directory, and prove it before saying done.

What a directory holds: config.json and generation_config.json; the weights as (sharded, with an index)
safetensors named in the base checkpoint's layout (Isaac-0.1 flat or Isaac-0.2 nested, or `layout=`); the
tokenizer files, chat template and processor_config.json; and, copied as they are, the remote-code `*.py`
files and README / LICENSE / NOTICE files the base checkpoint directory (`model.pretrained`) carried.
config.json's processing fields (patch budgets, pixel shuffle, ...) are the processor's, and its text fields
sit where vLLM's built-in Isaac reads them (see serving.py and model/config.py).

LoRA is merged into every adapted module (decoder and, with peft.vision, the vision tower), or written as a
PEFT adapter directory (`lora="adapter"`) that loads with `PeftModel.from_pretrained` on the base; modules that
trained in full beside LoRA (projector, vision blocks) go into the adapter as `modules_to_save`.

Verification: the directory is written to `OUT.tmp`, its config.json checked against what vLLM's Isaac reads,
reloaded with the Auto classes (or base + adapter), its tensors checked against the exported model by name (none
missing, none extra, equal) and its logits on a fixed multimodal sample compared with the model as trained; only
then is it renamed to OUT. The summary ends with how to serve the directory (transformers, `vllm serve` with the
`--mm-processor-kwargs` it needs) and what of that was checked here.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .adapter import save_adapter, verify_adapter
from .serving import VLLM_IMAGE_DEFAULTS, processing_fields, vllm_config_problems, vllm_notes, vllm_serve_command
from .verify import MERGE_TOLERANCE, ExportVerificationError, fixed_sample, logits_of

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
COPIED = ("*.py", "README*", "readme*", "LICENSE*", "License*", "license*", "NOTICE*", "USE_POLICY*")
__all__ = ["MERGE_TOLERANCE", "ExportSummary", "ExportVerificationError", "export_model", "fixed_sample", "logits_of",
           "written_tensors"]


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
    verified: bool = True
    vllm_command: str | None = None  # `vllm serve DIR [--mm-processor-kwargs ...]`; None for an adapter
    vllm_notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = sum(self.parameters.values())
        parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.parameters.items())
        lines = [
            f"exported to {self.out_dir}",
            f"  parameters {total / 1e6:.2f}M ({parts}); {self.dtype}; layout Isaac-{self.layout}"
            + (f"; LoRA {self.lora}" if self.lora else ""),
            f"  {len(self.files)} files, {self.bytes / 2**20:.1f} MiB"
            + (f"; copied from the base: {', '.join(self.copied)}" if self.copied else ""),
        ]
        if self.verified:
            lines.append(f"  verified: reloaded logits max |diff| {self.max_logit_diff:.2e} vs the exported weights"
                         + (f", {self.max_merge_diff:.2e} merged vs LoRA as trained"
                            if self.max_merge_diff is not None else ""))
        else:
            lines.append("  not verified (verify=False / --no-verify)")
        lines += self._serving_lines()
        return "\n".join(lines)

    def _serving_lines(self) -> list[str]:
        if self.vllm_command is None:
            return ["  serve: transformers: PeftModel.from_pretrained(base, DIR) on the base checkpoint"
                    + (" (verified above)" if self.verified else ""),
                    "  serve: vLLM: export merged weights for vLLM (isaac-export without --adapter); this adapter "
                    "was not checked against vLLM's LoRA support"]
        defaults = ", ".join(f"{k} {v}" for k, v in VLLM_IMAGE_DEFAULTS.items())
        return [
            "  serve: transformers: AutoModelForImageTextToText.from_pretrained(DIR), "
            "AutoProcessor.from_pretrained(DIR)"
            + (" (the model's reload verified above)" if self.verified else ""),
            f"  serve: vLLM: {self.vllm_command}",
            ("    --mm-processor-kwargs: this processor's settings differ from vLLM's Isaac defaults "
             f"({defaults}) and vLLM does not read processor_config.json"
             if "--mm-processor-kwargs" in self.vllm_command else
             f"    the processor matches vLLM's Isaac image defaults ({defaults}): no processor kwargs needed"),
            ("    config.json checked for the keys vLLM's Isaac reads (listed from vLLM's source in "
             "isaac_train/export/serving.py): the model's dimensions at the top level"
             + (" and in text_config" if self.layout != "0.1" else "")
             if self.verified else "    config.json not checked for vLLM (verify=False)")
            + "; not served in vLLM here (vLLM is not installed)",
            *(f"    warning: {note}" for note in self.vllm_notes),
        ]


def is_peft_model(model: nn.Module) -> bool:
    """A peft model (LoRA)? Asked without importing peft: a PeftModel exists only once peft has been imported."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merged_copy(model: nn.Module, in_place: bool = False) -> nn.Module:
    """A plain IsaacForConditionalGeneration: LoRA merged into a copy when the model is a peft model (into `model`
    itself with `in_place`, for a copy the caller made already)."""
    from ..model import IsaacForConditionalGeneration

    if isinstance(model, IsaacForConditionalGeneration):
        return model if in_place else sharing_copy(model, {})
    if is_peft_model(model):
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
    is_lora = is_peft_model(model)
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
        exported = save_adapter(model, tmp, base, cfg, torch_dtype)
        layout = layout or "0.1"
    else:
        log(f"export: {'merging LoRA into ' if is_lora else ''}a copy of the model")
        reference = logits_of(model, sample) if is_lora and verify else None  # before a merge in place
        exported = merged_copy(model, in_place=owned)
        merge_diff = _check_merge(reference, exported, sample) if reference is not None else None
        layout = layout or exported.config.checkpoint_layout
        exported.config.checkpoint_layout = layout
        _processing_fields_from(processor, exported.config, log)
        exported.to(torch_dtype)
        log(f"export: writing {dtype} weights (Isaac-{layout} layout) to {tmp}")
        exported.save_pretrained(tmp, max_shard_size=max_shard_size)
    processor.save_pretrained(tmp)
    copied = copy_base_files(base, tmp)
    summary = ExportSummary(out, layout, dtype, ("adapter" if lora == "adapter" else "merged") if is_lora else None,
                            parameter_parts(model if lora == "adapter" else exported), copied=copied, verified=verify)
    if lora != "adapter":
        summary.vllm_command = vllm_serve_command(out, processor)
        summary.vllm_notes = vllm_notes(exported.config)
    if verify:
        log("export: verifying (reload, tensors by name, logits on a fixed multimodal sample)")
        if lora == "adapter":
            summary.max_logit_diff = verify_adapter(model, tmp, base, sample, torch_dtype)
        else:
            summary.max_merge_diff = merge_diff
            _check_config_for_vllm(tmp, exported.config, processor)
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


def _processing_fields_from(processor, config, log) -> None:
    """config.json's processing fields set to the processor's (vLLM sizes its per-image token budget from
    config.json's, and preprocesses with the processor's through --mm-processor-kwargs). A processor whose patch
    size or pixel shuffle the model cannot take is refused."""
    fields = processing_fields(processor)
    for key, model_key in (("video_patch_size", "patch_size"), ("pixel_shuffle_scale", "pixel_shuffle_scale_factor")):
        if fields[key] != getattr(config.vision_config, model_key):
            raise ValueError(f"the processor's {key}={fields[key]} does not fit the model's "
                             f"vision_config.{model_key}={getattr(config.vision_config, model_key)}: export with the "
                             "processor the model was trained with (data.processor / model.pretrained)")
    changed = {k: (getattr(config, k), v) for k, v in fields.items() if getattr(config, k) != v}
    for key, (_, value) in changed.items():
        setattr(config, key, value)
    if changed:
        log("export: config.json's processing fields set to the processor's: "
            + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()))


def _check_config_for_vllm(tmp: Path, config, processor) -> None:
    """The written config.json carries the model's dimensions where vLLM's Isaac reads them (see serving.py)."""
    problems = vllm_config_problems(json.loads((tmp / "config.json").read_text()), config, processor)
    if problems:
        raise ExportVerificationError(f"{tmp / 'config.json'} would not serve as written in vLLM: "
                                      + "; ".join(problems))


def _check_merge(reference: torch.Tensor, merged: nn.Module, sample: dict) -> float:
    """Logits of the merged fp32 copy against the LoRA model's as trained, `reference` (the merge must lose
    nothing)."""
    diff = float((logits_of(merged, sample) - reference).abs().max())
    if diff > MERGE_TOLERANCE * max(1.0, float(reference.abs().max())):
        raise ExportVerificationError(f"the merged weights' logits differ from the trained model's by {diff:.3e}: "
                                      "the LoRA merge lost something")
    return diff


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
