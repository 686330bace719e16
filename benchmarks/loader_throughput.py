"""Loader samples/s per core against a per-sample "process and pad" baseline, on the same shards.

    python benchmarks/loader_throughput.py [--samples 300]

Shards: chat samples with one 640x480 JPEG and ~200 tokens of text, written with ShardWriter.
- ours: PackedLoader with num_workers=0 (everything on the main process's one core): byte-range read,
  IsaacProcessor (uint8 resize, patch cut on uint8, in-place normalise), best-fit packing into 4096-token rows.
- baseline: what a per-sample pipeline does (the LLaVA / HF-processor pattern): WebDataset iteration of the tars,
  PIL decode, PIL bicubic resize (antialiased) to the same target size, float normalise, patchify, tokenize the
  rendered chat, then collate batches of 4 by padding token ids and pixel patches to the longest sample.
Both run in this process with torch limited to one thread; the ratio is ours / baseline samples per second.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import webdataset

from isaac_train.data.loader import LoaderSpec, PackedLoader, SourceSpec
from isaac_train.data.shards import ShardWriter
from isaac_train.processing.image_processing import IsaacImageProcessorFast
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer


def make_shards(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], -1).astype(np.int16)
    writer = ShardWriter(root, max_count=100)
    for i in range(n):
        img = np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        PIL.Image.fromarray(img).save(buf, format="JPEG", quality=90)
        q = "Describe the picture in detail, then list every shape you can see and where it is. " * 2
        a = "The picture shows a small house next to a tall tree under a clear sky, and a dog on the grass. " * 2
        sample = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                               {"role": "assistant", "content": a}]}
        writer.write(f"{i:06d}", sample, [("0.jpg", buf.getvalue())])
    writer.close()


def run_ours(root: Path, processor: IsaacProcessor, n: int) -> float:
    spec = LoaderSpec(sources=[SourceSpec("bench", str(root))], seq_len=4096, pack_buffer=32, num_workers=0,
                      epochs=1, shuffle=False)
    start = time.perf_counter()
    count = sum(len(row) for batch in PackedLoader(spec, processor) for row in batch.sample_keys)
    assert count == n, count
    return n / (time.perf_counter() - start)


def run_baseline(root: Path, processor: IsaacProcessor, n: int, batch_size: int = 4) -> float:
    ip, tok = processor.image_processor, processor.tokenizer
    mean = np.asarray(ip.image_mean, dtype=np.float32)
    std = np.asarray(ip.image_std, dtype=np.float32)
    tars = sorted(str(p) for p in root.glob("*.tar"))
    start = time.perf_counter()
    batch, count = [], 0
    for sample in webdataset.WebDataset(tars, shardshuffle=False):
        obj = json.loads(sample["json"])
        image = PIL.Image.open(io.BytesIO(sample["0.jpg"])).convert("RGB")
        th, tw = ip.target_size(image.height, image.width)
        arr = np.asarray(image.resize((tw, th), PIL.Image.BICUBIC), dtype=np.float32) / 255.0
        arr = (arr - mean) / std
        p = ip.patch_size
        patches = arr.reshape(th // p, p, tw // p, p, 3).transpose(0, 2, 1, 3, 4).reshape(-1, p * p * 3)
        text = processor.apply_chat_template(obj["messages"])
        n_img = ip.num_decoder_tokens((th // p, tw // p))
        ids = tok(text.replace("<image>", "<|image_pad|>" * n_img), add_special_tokens=False)["input_ids"]
        batch.append((torch.tensor(ids), torch.from_numpy(patches)))
        if len(batch) == batch_size:
            _collate(batch)
            count += len(batch)
            batch = []
    if batch:
        _collate(batch)
        count += len(batch)
    assert count == n, count
    return n / (time.perf_counter() - start)


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    longest = max(len(ids) for ids, _ in batch)
    most = max(p.shape[0] for _, p in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    pixels = torch.zeros(len(batch), most, batch[0][1].shape[1])
    for i, (t, p) in enumerate(batch):
        ids[i, : len(t)] = t
        pixels[i, : p.shape[0]] = p
    return {"input_ids": ids, "pixel_values": pixels}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    processor = IsaacProcessor(IsaacImageProcessorFast(max_num_patches=6144, min_num_patches=256),
                               build_tiny_tokenizer())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_shards(root, args.samples)
        run_ours(root, processor, args.samples)  # warm-up (page cache, lazy imports)
        ours = run_ours(root, processor, args.samples)
        base = run_baseline(root, processor, args.samples)
    print(f"{args.samples} samples (640x480 JPEG + ~200 text tokens), one core")
    print(f"ours (PackedLoader, num_workers=0): {ours:.1f} samples/s")
    print(f"baseline (per-sample process and pad): {base:.1f} samples/s")
    print(f"ratio: {ours / base:.2f}x  (target >= 2x)")


if __name__ == "__main__":
    main()
