"""Run under torchrun by test_eval_ranks.py: answer the eval samples of SHARDS with the tiny model (seed 0), plain
(ddp: each rank holds the whole model) or FSDP2-sharded (every rank must run every forward), and write this
rank's share and the gathered answers to OUT/rank{r}.json.

    python -m torch.distributed.run --nproc_per_node=2 tests/eval/dist_eval_worker.py ddp|fsdp SHARDS OUT N
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from isaac_train.dist_env import DistEnv
from isaac_train.distributed.setup import shutdown_and_exit
from isaac_train.eval.generate import answers_on_rank, merge_answers
from isaac_train.eval.samples import read_eval_samples
from isaac_train.model import IsaacForConditionalGeneration
from isaac_train.model.tiny import tiny_config
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer


def tiny_eval_model() -> IsaacForConditionalGeneration:
    """The tiny model with every weight redrawn from seed 0 (the same on every process)."""
    torch.manual_seed(0)
    model = IsaacForConditionalGeneration(tiny_config(attn_backend="sdpa"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.05 * noise)
    return model.eval()


def main() -> None:
    mode, shards, out, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size())
    model = tiny_eval_model()
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from isaac_train.distributed.fsdp import shard_units

        mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (env.world_size,))
        for unit in shard_units(model):
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
    processor = IsaacProcessor.from_settings(build_tiny_tokenizer(), tiny_config())
    samples = read_eval_samples(shards, n).samples
    local = answers_on_rank(model, processor, samples, env.rank, env.world_size, synced=mode == "fsdp",
                            batch_size=3, max_new_tokens=6)
    answers = merge_answers(env.gather(local), len(samples))
    (out / f"rank{env.rank}.json").write_text(json.dumps({"share": sorted(local), "answers": answers}))
    shutdown_and_exit(env, 0)  # barrier, destroy, flush, os._exit: the gloo exit abort of shared/platform_notes.md


if __name__ == "__main__":
    main()
