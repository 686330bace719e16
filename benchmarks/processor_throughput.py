"""Throughput of processing one typical training sample on one core.

    python benchmarks/processor_throughput.py [--iters 200]

Sample: a 640x480 JPEG (decoded from bytes each time) and about 200 tokens of chat text, through
`IsaacProcessor.encode_chat` with Isaac's real image settings (max 6144 / min 256 patches, pixel shuffle 2).
Prints samples/s and the share of each stage (JPEG decode, image processing, tokenization + labels), measured
in the same process, with torch limited to one thread.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import PIL.Image
import torch

from isaac_train.processing.image_processing import IsaacImageProcessorFast
from isaac_train.processing.processor import IsaacProcessor
from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer


def photo_jpeg(h: int = 480, w: int = 640) -> bytes:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 255 // (h + w))], -1).astype(np.int16)
    img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    PIL.Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def timed(fn, iters: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    processor = IsaacProcessor(IsaacImageProcessorFast(max_num_patches=6144, min_num_patches=256), tokenizer)
    jpeg = photo_jpeg()
    question = "Describe the picture in detail, then list every shape you can see and where it is. " * 2
    answer = "The picture shows a small house next to a tall tree under a clear sky, and a dog on the grass. " * 2
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": answer},
    ]
    sample = processor.encode_chat(messages, [jpeg])
    n_text = int((sample.input_ids != processor.image_token_id).sum())
    t_total = timed(lambda: processor.encode_chat(messages, [jpeg]), args.iters)
    t_decode = timed(lambda: PIL.Image.open(io.BytesIO(jpeg)).load(), args.iters)
    decoded = PIL.Image.open(io.BytesIO(jpeg))
    decoded.load()
    t_image = timed(lambda: processor.image_processor.process_one(decoded), args.iters)
    print(f"sample: 640x480 JPEG ({len(jpeg) / 1024:.0f} KB) -> {sample.image_grid_hw.tolist()[0]} patches grid, "
          f"{len(sample)} decoder tokens ({n_text} text, {sample.num_label_tokens} labels)")
    print(f"encode_chat: {t_total * 1e3:.2f} ms/sample = {1 / t_total:.0f} samples/s on one core")
    print(f"  jpeg decode {t_decode / t_total:.0%}, image processing {t_image / t_total:.0%}, "
          f"text + labels {(t_total - t_decode - t_image) / t_total:.0%}")


if __name__ == "__main__":
    main()
