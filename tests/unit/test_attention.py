"""Attention backends: agreement on CPU, clear errors where a backend cannot run, no NaN from padding."""

from __future__ import annotations

import pytest
import torch

from isaac_train.model.attention import padded_causal_mask, resolve_backend

from ..conftest import make_document, pack

DOCS = [[5, (4, 6), 3], [8], [(2, 2), 6]]


def test_sdpa_and_eager_agree(tiny_model):
    batch = pack([make_document(torch.Generator().manual_seed(i), p) for i, p in enumerate(DOCS)], pad_to=64)
    with torch.no_grad():
        sdpa = tiny_model(**batch).logits
        tiny_model.config.attn_backend = "eager"
        eager = tiny_model(**batch).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["varlen", "flash_attn"])
def test_gpu_backends_refuse_cpu_with_a_clear_message(backend):
    with pytest.raises(RuntimeError, match="attn_backend=sdpa"):
        resolve_backend(backend, torch.device("cpu"), torch.float32)


def test_auto_picks_sdpa_on_cpu_and_varlen_on_cuda_bf16():
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16) == "sdpa"
    assert resolve_backend("auto", torch.device("cuda"), torch.float32) == "sdpa"
    assert resolve_backend("auto", torch.device("cuda"), torch.bfloat16) in ("varlen", "flash_attn")


def test_varlen_backend_on_cpu_fails_in_the_model(tiny_model):
    tiny_model.config.attn_backend = "varlen"
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        tiny_model(input_ids=torch.tensor([[7, 8, 9]]))


def test_padding_rows_never_produce_nan():
    mask = padded_causal_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), 2, 4, 0, torch.device("cpu"))
    assert mask.any(-1).all(), "every query must see at least one key"
    q = torch.randn(2, 2, 4, 8)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    assert torch.isfinite(out).all()


def test_the_one_switch_also_drives_the_vision_tower(tiny_model):
    tiny_model.config.attn_backend = "varlen"
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        tiny_model.model.vision_embedding(torch.randn(16, 768), torch.tensor([[4, 4]]))


def test_autocast_decides_the_activation_dtype(monkeypatch):
    """Embeddings stay fp32 under autocast while q/k/v are bf16: on CUDA `auto` must still pick the varlen kernel
    (CUDA autocast is simulated here: this machine has no GPU)."""
    from isaac_train.model import attention

    cuda = torch.device("cuda")
    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    assert resolve_backend("auto", cuda, torch.float32) == "sdpa"
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    assert resolve_backend("auto", cuda, torch.float32) == "varlen"
    assert resolve_backend("varlen", cuda, torch.float32) == "varlen"
