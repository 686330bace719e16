"""The synthetic shapes dataset that the CPU demo trains on, drawn with PIL (`isaac-data demo OUT_DIR` makes it).

Each image (64x64 by default, on a white or light background) holds 1-3 shapes of different kinds (circle,
square, triangle), each red, green, blue or yellow, each inside one of five cells of a 3x3 grid (top left, top
right, center, bottom left, bottom right) so its location has one right name. Each sample asks one question
whose answer the image determines, in the words of the tiny tokenizer's corpus:

    colour:    "What colour is the circle?" -> "The circle is red."
    count:     "How many shapes are in the image?" -> "There are two shapes."
    location:  "Where is the square?" -> "The square is in the top left."
    grounding: "Draw a box around the blue square."
               -> '<point_box mention="blue square"> (94,47) (328,281) </point_box>'

Box coordinates are integers on the 0-1000 grid of the image (x * 1000 / width, halves rounded up, by the
converters' rule in isaac_train/processing/grid.py), the box being the shape's pixel extent. Each sample's JSON
also carries `meta` (the drawn shapes, their pixel boxes, the question type), so
answers can be checked. Output: OUT_DIR/train/, OUT_DIR/eval/ (shards + index.json), OUT_DIR/eval_answers.jsonl
and OUT_DIR/demo.json (the parameters; a second call with the same ones reuses the data).
"""

from __future__ import annotations

import io
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageDraw
from tqdm import tqdm

from ..processing.grid import box_to_grid
from .shards import INDEX_NAME, ShardWriter

SOURCE = "shapes-demo"
DEMO_VERSION = 2  # bump when the drawing or the questions change, so old data is not reused (2: boxes halves up)
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 20)}
BACKGROUNDS = ((255, 255, 255), (246, 246, 246), (252, 248, 238), (240, 245, 252))
SHAPES = ("circle", "square", "triangle")
REGIONS = {"top left": (0, 0), "top right": (0, 2), "center": (1, 1), "bottom left": (2, 0), "bottom right": (2, 2)}
COUNT_WORDS = {1: "There is one shape.", 2: "There are two shapes.", 3: "There are three shapes."}
QUESTION_TYPES = ("colour", "count", "location", "grounding")
SAMPLES_PER_SHARD = 500
MIN_IMAGE_SIZE = 32


def draw_scene(rng: random.Random, size: int) -> tuple[PIL.Image.Image, dict[str, Any]]:
    """A random image and its description {"width", "height", "background", "shapes": [{"shape", "colour",
    "region", "box": [x0, y0, x1, y1]}]} (pixel box, x1/y1 exclusive)."""
    background = rng.choice(BACKGROUNDS)
    image = PIL.Image.new("RGB", (size, size), background)
    draw = PIL.ImageDraw.Draw(image)
    cell = size / 3
    n = rng.randint(1, 3)
    shapes = []
    for kind, region in zip(rng.sample(SHAPES, n), rng.sample(list(REGIONS), n), strict=True):
        colour = rng.choice(list(COLOURS))
        side = rng.randint(int(cell * 0.5), int(cell * 0.9))
        row, col = REGIONS[region]
        x0 = int(col * cell) + rng.randint(0, int(cell) - side)
        y0 = int(row * cell) + rng.randint(0, int(cell) - side)
        x1, y1 = x0 + side, y0 + side
        fill = COLOURS[colour]
        if kind == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif kind == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
        shapes.append({"shape": kind, "colour": colour, "region": region, "box": [x0, y0, x1, y1]})
    return image, {"width": size, "height": size, "background": list(background), "shapes": shapes}


def grid_box(box: list[int], width: int, height: int) -> list[int]:
    """A pixel box -> integers on Isaac's 0-1000 grid of the image, by the converters' rule
    (isaac_train.processing.grid: halves up, not Python round()'s halves to even)."""
    return list(box_to_grid(*box, width, height))


def question_and_answer(kind: str, scene: dict[str, Any], target: int) -> tuple[str, str]:
    """The question of type `kind` about shape number `target` of the scene, and its answer."""
    shape = scene["shapes"][target]
    name, colour = shape["shape"], shape["colour"]
    if kind == "colour":
        return f"What colour is the {name}?", f"The {name} is {colour}."
    if kind == "count":
        return "How many shapes are in the image?", COUNT_WORDS[len(scene["shapes"])]
    if kind == "location":
        return f"Where is the {name}?", f"The {name} is in the {shape['region']}."
    if kind == "grounding":
        x0, y0, x1, y1 = grid_box(shape["box"], scene["width"], scene["height"])
        mention = f"{colour} {name}"
        return (f"Draw a box around the {mention}.",
                f'<point_box mention="{mention}"> ({x0},{y0}) ({x1},{y1}) </point_box>')
    raise ValueError(f"unknown question type {kind!r}; use one of {QUESTION_TYPES}")


def make_sample(rng: random.Random, size: int) -> tuple[dict[str, Any], bytes]:
    """One chat sample (JSON object with `meta`) and its PNG image."""
    image, scene = draw_scene(rng, size)
    kind = rng.choice(QUESTION_TYPES)
    target = rng.randrange(len(scene["shapes"]))
    question, answer = question_and_answer(kind, scene, target)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    sample = {
        "source": SOURCE,
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer},
        ],
        "meta": {"type": kind, "target": target, **scene},
    }
    return sample, buf.getvalue()


def write_split(out_dir: Path, count: int, rng: random.Random, size: int, answers: io.TextIOBase | None = None,
                desc: str = "") -> Counter[str]:
    """Write `count` samples as shards under out_dir (+ one answer line each to `answers`); -> types count."""
    writer = ShardWriter(out_dir, prefix="shapes", max_count=SAMPLES_PER_SHARD)
    kinds: Counter[str] = Counter()
    for i in tqdm(range(count), desc=desc, unit="sample", disable=None):
        sample, png = make_sample(rng, size)
        key = f"{i:09d}"
        writer.write(key, sample, [("0.png", png)])
        meta = sample["meta"]
        kinds[meta["type"]] += 1
        if answers is not None:
            line = {"key": key, "type": meta["type"], "question": sample["messages"][0]["content"][1]["text"],
                    "answer": sample["messages"][1]["content"]}
            if meta["type"] == "grounding":
                line["box"] = grid_box(meta["shapes"][meta["target"]]["box"], meta["width"], meta["height"])
            answers.write(json.dumps(line) + "\n")
    writer.close()
    return kinds


def _clear(split_dir: Path) -> None:
    """Remove the shards a previous run left (only shard files, manifests and index.json)."""
    if split_dir.is_dir():
        for path in [*split_dir.glob("shapes-*.tar"), *split_dir.glob("shapes-*.manifest.json"),
                     split_dir / INDEX_NAME]:
            path.unlink(missing_ok=True)


def make_demo_dataset(out_dir: str | Path, train: int = 2000, eval: int = 200, seed: int = 0,
                      image_size: int = 64, overwrite: bool = False) -> dict[str, Any]:
    """Make (or reuse, when made before with the same parameters) the shapes dataset under `out_dir`.

    Returns {"train_dir", "eval_dir", "eval_answers", "train", "eval", "seed", "image_size", "types",
    "seconds", "reused"}. The same parameters give the same bytes; train and eval draw from separate
    random streams, so changing one count does not change the other split.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small to draw 3x3 cells of shapes; use >= {MIN_IMAGE_SIZE}")
    if train < 0 or eval < 0:
        raise ValueError(f"sample counts must be >= 0, got train={train}, eval={eval}")
    out = Path(out_dir)
    params = {"version": DEMO_VERSION, "train": train, "eval": eval, "seed": seed, "image_size": image_size}
    paths = {"train_dir": str(out / "train"), "eval_dir": str(out / "eval"),
             "eval_answers": str(out / "eval_answers.jsonl")}
    info_path = out / "demo.json"
    start = time.time()
    if not overwrite and info_path.is_file() and all((out / s / INDEX_NAME).is_file() for s in ("train", "eval")):
        info = json.loads(info_path.read_text())
        if info.get("params") == params:
            return {**paths, **params, "types": info["types"], "seconds": time.time() - start, "reused": True}
    for split in ("train", "eval"):
        _clear(out / split)
    out.mkdir(parents=True, exist_ok=True)
    types = {"train": write_split(out / "train", train, random.Random(f"{seed}-train"), image_size, desc="train")}
    with open(out / "eval_answers.jsonl", "w") as answers:
        types["eval"] = write_split(out / "eval", eval, random.Random(f"{seed}-eval"), image_size, answers, "eval")
    types = {split: dict(sorted(c.items())) for split, c in types.items()}
    info_path.write_text(json.dumps({"params": params, "types": types}, indent=1) + "\n")
    return {**paths, **params, "types": types, "seconds": time.time() - start, "reused": False}
