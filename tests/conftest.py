"""Shared fixtures: tiny Isaac models and random packed inputs, all built locally (no hub downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import isaac_train  # noqa: E402,F401  (registers the Auto classes)
from isaac_train.model import IsaacForConditionalGeneration  # noqa: E402
from isaac_train.model.tiny import tiny_config  # noqa: E402

GOLDEN_DIR = Path(__file__).parent / "golden" / "reference_tiny"
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _threads_as_a_fresh_process():
    """Every test starts with the thread count of a fresh process: an in-process run with data.num_workers=0 sets
    torch to one thread (the loader processes samples in the main process) and leaves it so, and the slow demo
    test then trained on one thread instead of make demo's two, into other figures (colour 32% against 55%)."""
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(DEFAULT_THREADS)
IMAGE_TOKEN = 498  # tiny_config's image_token_id (<|image_pad|> of the tiny tokenizer)
TEXT_IDS = (6, 486)  # random text ids: plain BPE tokens, below the added tokens


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every parameter (norm weights around 1) so no tensor is trivially zero or one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)
    return model


@pytest.fixture
def tiny_model() -> IsaacForConditionalGeneration:
    torch.manual_seed(0)
    model = IsaacForConditionalGeneration(tiny_config(attn_backend="sdpa"))
    return randomize_(model).eval()


def make_document(gen: torch.Generator, pieces: list, patch_dim: int = 768) -> dict:
    """One document from pieces: an int n = n random text tokens, a (H, W) tuple = an image with that real grid.

    Returns input_ids (T,), pixel_values (N, patch_dim), image_grid_hw (n, 2).
    """
    ids, patches, grids = [], [], []
    for piece in pieces:
        if isinstance(piece, int):
            ids.append(torch.randint(*TEXT_IDS, (piece,), generator=gen))
        else:
            h, w = piece
            ids.append(torch.full((h * w // 4,), IMAGE_TOKEN))
            patches.append(torch.randn(h * w, patch_dim, generator=gen))
            grids.append(torch.tensor([h, w]))
    return {
        "input_ids": torch.cat(ids),
        "pixel_values": torch.cat(patches) if patches else None,
        "image_grid_hw": torch.stack(grids) if grids else None,
    }


def pack(docs: list[dict], pad_to: int | None = None) -> dict:
    """Pack documents into one row with cu_seqlens (the padding tail, if any, as its own segment)."""
    ids = torch.cat([d["input_ids"] for d in docs])
    lengths = [len(d["input_ids"]) for d in docs]
    if pad_to is not None and pad_to > len(ids):
        lengths.append(pad_to - len(ids))
        ids = torch.cat([ids, torch.zeros(pad_to - len(ids), dtype=torch.long)])
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    pv = [d["pixel_values"] for d in docs if d["pixel_values"] is not None]
    gr = [d["image_grid_hw"] for d in docs if d["image_grid_hw"] is not None]
    return {
        "input_ids": ids[None],
        "cu_seqlens": cu,
        "pixel_values": torch.cat(pv) if pv else None,
        "image_grid_hw": torch.cat(gr) if gr else None,
    }


def single(doc: dict) -> dict:
    return {**doc, "input_ids": doc["input_ids"][None]}


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def tiny_processor(tiny_tokenizer):
    from isaac_train.processing.processor import IsaacProcessor

    return IsaacProcessor.from_settings(tiny_tokenizer, tiny_config())


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory) -> Path:
    """120 chat samples with images in 6 shards (tests/data_helpers.py), for training runs."""
    from .data_helpers import make_chat_shards

    return make_chat_shards(tmp_path_factory.mktemp("train_shards"), n=120, per_shard=20, seed=7)


@pytest.fixture
def perceptron_dir(tmp_path, tiny_tokenizer):
    """A directory shaped like Perceptron's hub checkpoints: remote-code auto_map (whose code must never run),
    processor_config.json with a nested config, the tiny golden weights."""
    import json
    import shutil

    d = tmp_path / "Isaac-tiny"
    shutil.copytree(GOLDEN_DIR, d)
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modular_isaac.IsaacConfig",
                          "AutoModelForCausalLM": "modular_isaac.IsaacForConditionalGeneration"}
    (d / "config.json").write_text(json.dumps(config))
    (d / "modular_isaac.py").write_text("raise RuntimeError('remote code must not be imported')\n")
    tiny_tokenizer.save_pretrained(d)
    (d / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "modular_isaac.IsaacProcessor"}, "processor_class": "IsaacProcessor",
        "config": {"vision_max_num_patches": 6144, "vision_min_num_patches": 256, "video_patch_size": 16,
                   "pixel_shuffle_scale": 2, "max_sequence_length": 16384, "vision_token": "<image>"},
    }))
    return d
