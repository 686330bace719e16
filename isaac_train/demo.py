"""The README's main job, for now a placeholder until the trainer exists (issue: Trainer).

What it does today, end to end on CPU in about a minute: builds the small Isaac model (`model/tiny.py`),
trains it on synthetic image-text rows (solid-colour images, the answer token names the colour) packed
several documents per row, saves a Hugging Face directory, reloads it through transformers' Auto classes and
generates answers for held-out images. The real demo (isaac-data demo shards, Hydra recipe `demo_cpu`,
checkpoints, isaac-export) replaces this once the data and trainer issues land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import isaac_train
from isaac_train.model.tiny import small_config

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
QUESTION = [10, 11, 12]  # token ids of a fixed question
ANSWER_BASE = 20  # answer token for colour k is ANSWER_BASE + k
IMAGE_TOKEN = 5
GRID = (4, 4)  # real patch grid of each 64x64 image -> 4 decoder tokens


def colour_patches(rgb: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """(16, 768) normalised patches of a 64x64 image of one colour with a little noise."""
    pixels = torch.tensor(rgb, dtype=torch.float32) / 255 * 2 - 1
    patches = pixels.repeat(16 * 16).repeat(GRID[0] * GRID[1], 1)
    return patches + 0.1 * torch.randn(patches.shape, generator=gen)


def sample(k: int, gen: torch.Generator) -> tuple[list[int], torch.Tensor]:
    ids = [1] + [IMAGE_TOKEN] * 4 + QUESTION + [ANSWER_BASE + k, 2]
    return ids, colour_patches(list(COLOURS.values())[k], gen)


def packed_batch(n_docs: int, gen: torch.Generator) -> dict:
    ids, labels, patches, lengths = [], [], [], []
    for _ in range(n_docs):
        k = int(torch.randint(len(COLOURS), (1,), generator=gen))
        doc, pv = sample(k, gen)
        ids += doc
        labels += [-100] * (len(doc) - 2) + doc[-2:]  # loss on the answer and end token
        patches.append(pv)
        lengths.append(len(doc))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "cu_seqlens": cu,
        "pixel_values": torch.cat(patches), "image_grid_hw": torch.tensor([GRID] * n_docs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = isaac_train.IsaacForConditionalGeneration(small_config(image_token_id=IMAGE_TOKEN)).train()
    print(f"small Isaac model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.time()
    for step in range(1, args.steps + 1):
        out = model(**packed_batch(8, gen))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 or step == 1:
            print(f"step {step:4d}  loss {out.loss.item():.4f}  ({time.time() - start:.1f}s)")

    export = args.output_dir / "hf"
    model.save_pretrained(export)
    print(f"saved a Hugging Face directory to {export}")
    from transformers import AutoModelForImageTextToText

    reloaded = AutoModelForImageTextToText.from_pretrained(export).eval()
    correct = 0
    for k, name in enumerate(COLOURS):
        ids, pv = sample(k, torch.Generator().manual_seed(1000 + k))
        prompt = torch.tensor([ids[:-2]])
        with torch.no_grad():
            gen_ids = reloaded.generate(input_ids=prompt, pixel_values=pv, image_grid_hw=torch.tensor([GRID]),
                                        max_new_tokens=2, do_sample=False, pad_token_id=0)
        answer = int(gen_ids[0, prompt.shape[1]]) - ANSWER_BASE
        predicted = list(COLOURS)[answer] if 0 <= answer < len(COLOURS) else f"<token {answer + ANSWER_BASE}>"
        correct += predicted == name
        print(f"held-out {name:>6} image -> model says {predicted}")
    print(f"accuracy {correct}/{len(COLOURS)} (chance 1/{len(COLOURS)})")


if __name__ == "__main__":
    main()
