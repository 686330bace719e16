"""On a GPU: the varlen and flash backends agree with SDPA's block mask in bf16 on packed rows."""

from __future__ import annotations

import pytest
import torch

from isaac_train.model.attention import flash_attn_available

from ..conftest import make_document, pack

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", ["varlen", "flash_attn"])
def test_varlen_backends_match_sdpa_in_bf16(tiny_model, backend):
    if backend == "flash_attn" and not flash_attn_available():
        pytest.skip("flash-attn not installed")
    gen = torch.Generator().manual_seed(0)
    docs = [make_document(gen, p) for p in ([9, (4, 6), 5], [17], [(8, 4), 3])]
    batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in pack(docs, pad_to=96).items()}
    model = tiny_model.cuda().to(torch.bfloat16)
    with torch.no_grad():
        model.config.attn_backend = "sdpa"
        ref = model(**batch).logits.float()
        model.config.attn_backend = backend
        out = model(**batch).logits.float()
    assert (out - ref).abs().max().item() < 3e-2
