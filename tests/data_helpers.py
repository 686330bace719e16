"""Small real shard sets for data tests (chat samples with PNG/JPEG images, written with ShardWriter), and
checkpoint-shaped directories for the checks made before a run starts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import PIL.Image

from isaac_train.data.shards import ShardWriter

WORDS = "red green blue yellow circle square triangle star shape image top left right bottom center".split()


def encode_image(h: int, w: int, seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def chat_sample(i: int, rng: np.random.Generator) -> tuple[dict, list[tuple[str, bytes]]]:
    """A chat with 0-2 images and answers of varied length (so packing has something to do)."""
    n_images = int(rng.integers(0, 3))
    q = " ".join(rng.choice(WORDS, int(rng.integers(3, 12))))
    a = " ".join(rng.choice(WORDS, int(rng.integers(1, 40))))
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": f"Sample {i}: {q}?"}]
    images = []
    for k in range(n_images):
        h, w = (int(x) for x in rng.integers(16, 80, 2))
        images.append((f"{k}.{'jpg' if k % 2 else 'png'}", encode_image(h, w, i * 10 + k, "JPEG" if k % 2 else "PNG")))
    sample = {"source": "unit", "messages": [{"role": "user", "content": content},
                                             {"role": "assistant", "content": a}]}
    return sample, images


def make_chat_shards(out: Path, n: int, per_shard: int = 10, seed: int = 0, prefix: str = "shard",
                     make_sample=chat_sample) -> Path:
    """`n` samples of `make_sample(i, rng)` (chat_sample; pair_sample for preference pairs) in shards of
    `per_shard`."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(out, prefix=prefix, max_count=per_shard)
    for i in range(n):
        sample, images = make_sample(i, rng)
        writer.write(f"{prefix}{i:06d}", sample, images)
    writer.close()
    return out


ISAAC_KEYS = ("model.embed_tokens.weight", "model.vision_embedding.0.embeddings.patch_embedding.weight",
              "model.vision_embedding.1.weight", "lm_head.weight")


def make_checkpoint(out: Path, config: dict | None = None, keys: tuple[str, ...] = ISAAC_KEYS) -> Path:
    """A directory shaped like a checkpoint: config.json (tiny Isaac's unless `config` is given), the tiny
    tokenizer and a model.safetensors holding `keys` as 2x2 tensors. Enough for the path checks; not a model."""
    import torch
    from safetensors.torch import save_file

    from isaac_train.model.tiny import tiny_config
    from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    if config is None:
        tiny_config().save_pretrained(out)
    else:
        (out / "config.json").write_text(json.dumps(config))
    build_tiny_tokenizer().save_pretrained(out)
    save_file({k: torch.zeros(2, 2) for k in keys}, str(out / "model.safetensors"))
    return out


def pair_sample(i: int, rng: np.random.Generator, images: int | None = None) -> tuple[dict, list[tuple[str, bytes]]]:
    """A preference pair in the stored form (docs/data_format.md): a prompt with 0-2 images, two different answers."""
    n_images = int(rng.integers(0, 3)) if images is None else images
    q = " ".join(rng.choice(WORDS, int(rng.integers(3, 10))))
    chosen = " ".join(rng.choice(WORDS, int(rng.integers(1, 12))))
    rejected = " ".join(rng.choice(WORDS, int(rng.integers(1, 12)))) + " no"
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": f"Pair {i}: {q}?"}]
    pictures = [(f"{k}.png", encode_image(*(int(x) for x in rng.integers(16, 64, 2)), i * 10 + k))
                for k in range(n_images)]
    sample = {"source": "unit", "messages": [{"role": "user", "content": content}],
              "chosen": [{"role": "assistant", "content": chosen}],
              "rejected": [{"role": "assistant", "content": rejected}]}
    return sample, pictures


def make_pair_shards(out: Path, n: int, per_shard: int = 10, seed: int = 0, prefix: str = "pairs") -> Path:
    return make_chat_shards(out, n, per_shard, seed, prefix, make_sample=pair_sample)
