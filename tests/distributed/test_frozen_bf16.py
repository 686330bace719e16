"""Frozen weights held in bf16 under `train.precision=bf16` (LoRA's base weights, a frozen vision tower), trainable
ones in fp32, for single, ddp, fsdp, zero2 and zero3 (2 gloo processes).

The base is a bf16 checkpoint, as Perceptron's are: then the forward under autocast equals the one with fp32
frozen weights bit for bit (one process trains identically with fp32 frozen weights), a resumed run continues
bit for bit, and the export (bf16, the base's dtype) holds every tensor that did not train byte for byte as the
base does. The distributed cases run as this module under torchrun (`_probe`): train, record the dtypes each rank
holds (FSDP's local DTensor shards, DeepSpeed's partitions, what the optimizer steps), resume a copy in the same
processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from isaac_train import factory
from isaac_train.export import export_checkpoint
from isaac_train.export.writer import written_tensors
from isaac_train.precision import describe_parameter_memory, parameter_bytes
from isaac_train.train.cli import compose_config

from ..conftest import make_document, pack
from ..export.conftest import make_base
from ..train.conftest import losses
from .helpers import _env, _free_port, keep_only_checkpoint, single_overrides, two_rank_overrides

pytestmark = pytest.mark.timeout(600)

STEPS, SAVE_AT = 4, 2
LORA = ["peft=lora", "model.train_decoder=lora", "peft.dropout=0", "train.precision=bf16"]
ROOT = Path(__file__).resolve().parents[2]
# what trains (Isaac-0.2 names): LoRA on the decoder's projections (merged on export) and the projector
TRAINED = re.compile(r"text_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$|vision_embedding\.[13]\.")


def _run_overrides(base: Path, *extra: str) -> list[str]:
    return [*LORA, f"model.pretrained={base}", f"train.max_steps={STEPS}", f"train.save_every={SAVE_AT}",
            "train.keep_last=5", "run.export=true", *extra]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A bf16 Isaac-0.2-layout checkpoint directory (tests/export/conftest.py)."""
    return make_base(tmp_path_factory.mktemp("bf16_base") / "Isaac-tiny")


def _held(model) -> dict[str, tuple[bool, torch.dtype]]:
    return {n: (p.requires_grad, p.dtype) for n, p in model.named_parameters()}


def _check_held(held: dict[str, tuple[bool, str]]) -> None:
    """Trainable parameters in fp32; frozen ones in bf16 except norm weights (fp32)."""
    frozen = {n: d for n, (trains, d) in held.items() if not trains}
    assert frozen and any(trains for trains, _ in held.values())
    for name, (trains, dtype) in held.items():
        want = "float32" if trains or "norm" in name else "bfloat16"
        assert str(dtype).removeprefix("torch.") == want, (name, trains, dtype)
    assert any("embed_tokens" in n for n in frozen) and any("base_layer" in n for n in frozen)


def test_frozen_bf16_forward_and_gradients_equal_fp32_frozen(base):
    """Same (bf16-representable) values: bf16 frozen weights give the loss and gradients of fp32 ones exactly."""
    models = {}
    for precision in ("fp32", "bf16"):
        cfg = compose_config(["model=tiny", "model.attn_backend=sdpa", "peft=lora", "model.train_decoder=lora",
                              "peft.dropout=0", "model.train_vision=last_n", "model.vision_last_n=1",
                              f"train.precision={precision}", f"model.pretrained={base}"], check_files=False)
        torch.manual_seed(0)  # LoRA's initialisation, as the loop seeds it
        models[precision] = factory.model_factory(cfg, factory.model_config(cfg))("cpu")
    assert all(dtype == torch.float32 for _, dtype in _held(models["fp32"]).values())  # fp32: nothing changes
    _check_held(_held(models["bf16"]))
    sizes = parameter_bytes(models["bf16"])
    fp32_frozen = parameter_bytes(models["fp32"])[("float32", False)]
    assert sizes[("bfloat16", False)] * 2 == pytest.approx(fp32_frozen, rel=0.01)
    assert describe_parameter_memory(models["bf16"]).startswith("parameters: ")
    gen = torch.Generator().manual_seed(1)
    batch = pack([make_document(gen, [5, (4, 4), 20]), make_document(gen, [30, (8, 4), 7])])
    batch["labels"] = batch["input_ids"].clone()
    results = []
    for model in models.values():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, return_logits=False).loss_sum
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss32, grads32), (loss16, grads16) = results
    assert torch.equal(loss32, loss16)
    assert grads32.keys() == grads16.keys() and all(torch.equal(grads32[n], grads16[n]) for n in grads32)


def _untouched(base: Path) -> list[str]:
    """Base tensors that must come out byte for byte: all but the LoRA-merged projections and the projector."""
    names = [k for k in load_file(base / "model.safetensors") if not TRAINED.search(k)]
    assert any("embed_tokens" in k for k in names) and any("norm" in k for k in names)
    assert any("vision_embedding.0." in k and "q_proj" in k for k in names)  # a frozen vision tower
    return names


def _check_export(base: Path, hf: Path) -> None:
    reference, exported = load_file(base / "model.safetensors"), written_tensors(hf)
    assert exported.keys() == reference.keys()
    for key in _untouched(base):
        assert exported[key].dtype == reference[key].dtype == torch.bfloat16, key
        assert exported[key].view(torch.uint8).equal(reference[key].view(torch.uint8)), key
    assert any(not torch.equal(exported[k], reference[k]) for k in exported if "lora" not in k and "q_proj" in k)


@pytest.fixture(scope="module")
def single_run(train_shards, base, tmp_path_factory):
    """One process (2 workers x grad_accum 2: what 2 ranks read), bf16 frozen; and the same with fp32 frozen."""
    from isaac_train.train.loop import train

    out = tmp_path_factory.mktemp("single_bf16")
    extra = [f"data.eval_shards={train_shards}", f"train.eval_every={STEPS}", "train.eval_batches=1",
             "train.eval_samples=1"]  # generation runs with bf16 frozen weights too
    train(compose_config(single_overrides(train_shards, out / "held", *_run_overrides(base, *extra))))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(factory, "frozen_dtype", lambda precision: torch.float32)  # every weight fp32, as before
        train(compose_config(single_overrides(train_shards, out / "fp32", *_run_overrides(base))))
    return out


def test_single_bf16_frozen_trains_resumes_and_exports(train_shards, base, single_run, tmp_path):
    from isaac_train.train.loop import train

    held, fp32 = losses(single_run / "held"), losses(single_run / "fp32")
    assert held.keys() == set(range(1, STEPS + 1)) and held == fp32  # bf16 base: the same run bit for bit
    as_before = load_file(single_run / "fp32" / "checkpoints" / f"step_{SAVE_AT:07d}" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in as_before.values())
    # the checkpoint keeps frozen weights as held: the base's bf16 bits
    state = load_file(single_run / "held" / "checkpoints" / f"step_{SAVE_AT:07d}" / "model.safetensors")
    _check_held({k: (("lora_" in k or "vision_embedding.1" in k or "vision_embedding.3" in k), v.dtype)
                 for k, v in state.items()})
    _check_export(base, single_run / "held" / "hf")
    resumed = keep_only_checkpoint(single_run / "held", SAVE_AT, tmp_path / "resumed")
    train(compose_config(single_overrides(train_shards, resumed, *_run_overrides(base, "run.export=false"))))
    assert losses(resumed) == {s: held[s] for s in range(SAVE_AT + 1, STEPS + 1)}
    # isaac-export reads the checkpoint and writes what the run's export wrote
    export_checkpoint(single_run / "held", tmp_path / "exported", log=lambda *_: None)
    again, first = written_tensors(tmp_path / "exported"), written_tensors(single_run / "held" / "hf")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


def held_by_rank(strategy) -> dict:
    """What this rank holds: per parameter (trains, dtype of its local storage, kind) and the dtypes the optimizer
    steps (FSDP: the DTensor's local shard; ZeRO-3: the partition; DeepSpeed's optimizer: its fp32 partitions)."""
    params = {}
    for name, p in strategy.eval_model.named_parameters():
        if hasattr(p, "to_local"):
            local, kind = p.to_local(), "dtensor"
        elif hasattr(p, "ds_tensor"):
            local, kind = p.ds_tensor, "partition"
        else:
            local, kind = p, "tensor"
        params[name] = [bool(p.requires_grad), str(local.dtype), kind]
    optimizer = strategy.optimizer  # DeepSpeed's ZeRO optimizers step fp32 partitions of their own with our AdamW
    masters = (getattr(optimizer, "fp32_partitioned_groups_flat", None)  # stage 3
               or getattr(optimizer, "single_partition_of_fp32_groups", None)  # stages 1-2
               or [t for group in optimizer.param_groups for t in group["params"]])
    stepped = {str((t.to_local() if hasattr(t, "to_local") else t).dtype) for t in masters}
    memory = describe_parameter_memory(strategy.eval_model)
    return {"params": params, "stepped": sorted(stepped), "memory": memory}


def _probe(out: Path, overrides: list[str]) -> None:
    """Under torchrun: train straight (checkpoint at SAVE_AT), write held_rank{r}.json, then resume a copy of the
    run from SAVE_AT in the same processes (out/resumed)."""
    import gc

    import torch.distributed as dist

    from isaac_train.distributed.setup import shutdown_and_exit
    from isaac_train.train import loop

    strategies = []
    make = loop.make_strategy

    def keep(*args, **kwargs):
        strategies.append(make(*args, **kwargs))
        return strategies[-1]

    loop.make_strategy = keep
    result = loop.train(compose_config([*overrides, f"run.output_dir={out / 'straight'}"]))
    rank = result.env.rank
    (out / f"held_rank{rank}.json").write_text(json.dumps(held_by_rank(strategies.pop())))
    gc.collect()
    if rank == 0:
        keep_only_checkpoint(out / "straight", SAVE_AT, out / "resumed")
    dist.barrier()
    result = loop.train(compose_config([*overrides, f"run.output_dir={out / 'resumed'}", "run.export=false"]))
    shutdown_and_exit(result.env, 0)


def _launch(out: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "tests.distributed.test_frozen_bf16", str(out), *overrides]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=_env(), cwd=ROOT)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-5000:]}"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2", "zero3"])
def test_two_processes_hold_frozen_bf16(train_shards, base, single_run, tmp_path, strategy):
    if strategy.startswith("zero"):
        pytest.importorskip("deepspeed")
    overrides = [o for o in two_rank_overrides(train_shards, tmp_path, strategy, *_run_overrides(base))
                 if not o.startswith("run.output_dir=")]
    _launch(tmp_path, overrides)
    kind = {"ddp": "tensor", "fsdp": "dtensor", "zero2": "tensor", "zero3": "partition"}[strategy]
    for rank in (0, 1):
        held = json.loads((tmp_path / f"held_rank{rank}.json").read_text())
        _check_held({name: (trains, dtype) for name, (trains, dtype, _) in held["params"].items()})
        assert {k for _, _, k in held["params"].values()} == {kind}, strategy
        assert held["stepped"] == ["torch.float32"], held["stepped"]  # the optimizer steps fp32 master weights
        assert "bf16 frozen" in held["memory"] and "fp32 trainable" in held["memory"], held["memory"]
    expected, got = losses(single_run / "held"), losses(tmp_path / "straight")
    assert got.keys() == expected.keys()
    tolerance = 1e-5 if strategy in ("ddp", "zero2") else 1e-3  # fsdp, zero3: bf16 all-gathers / their own order
    for step in expected:
        assert abs(got[step] - expected[step]) < tolerance, (strategy, step, got[step], expected[step])
    assert losses(tmp_path / "resumed") == {s: got[s] for s in range(SAVE_AT + 1, STEPS + 1)}, strategy
    _check_export(base, tmp_path / "straight" / "hf")
    if strategy == "ddp":
        return  # its checkpoint is single's format (read back above)
    # isaac-export reads the DCP shards / DeepSpeed partitions (zero_to_fp32) and writes what the run exported
    export_checkpoint(tmp_path / "straight", tmp_path / "exported", log=lambda *_: None)
    again, first = written_tensors(tmp_path / "exported"), written_tensors(tmp_path / "straight" / "hf")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first), strategy


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _probe(Path(sys.argv[1]), sys.argv[2:])
