"""Small Isaac configurations: `tiny` for tests (a few hundred KB of weights), `small` for the CPU demo.

Both keep Isaac's real patch size (16), pixel shuffle (2), position table (16x16) and the 2:1:1 mRoPE split,
so every code path of the full model runs; only widths, depths and the vocabulary shrink.
"""

from __future__ import annotations

from typing import Any

from .config import IsaacConfig


def tiny_config(**overrides: Any) -> IsaacConfig:
    """2-layer Qwen3 (hidden 64, 4 heads / 2 kv heads of 16) + 2-layer SigLIP2 (hidden 32), vocab 512.

    Special ids match the tiny tokenizer (processing/tiny_tokenizer.py): `<|image_pad|>` 498, `<|im_end|>` 488,
    `<|endoftext|>` 486.
    """
    kwargs: dict[str, Any] = dict(
        text_config=dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
            max_position_embeddings=4096, hidden_act="silu", bos_token_id=486, eos_token_id=488, pad_token_id=486,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
            num_channels=3, num_patches=256, pixel_shuffle_scale_factor=2, hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        ),
        video_patch_size=16, vision_max_num_patches=256, vision_min_num_patches=16, pixel_shuffle_scale=2,
        max_sequence_length=4096, image_token_id=498, bos_token_id=486, eos_token_id=488, pad_token_id=486,
        checkpoint_layout="0.1",
    )
    kwargs.update(overrides)
    return IsaacConfig(**kwargs)


def small_config(**overrides: Any) -> IsaacConfig:
    """~6M parameters: 4-layer Qwen3 (hidden 256), 2-layer SigLIP2 (hidden 128), the tiny tokenizer's 512-token
    vocabulary and special ids; trains on CPU in minutes (the demo)."""
    kwargs: dict[str, Any] = dict(
        text_config=dict(
            vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=1_000_000.0,
            max_position_embeddings=8192, bos_token_id=486, eos_token_id=488, pad_token_id=486,
        ),
        vision_config=dict(
            hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, patch_size=16,
            num_patches=256, pixel_shuffle_scale_factor=2,
        ),
        video_patch_size=16, vision_max_num_patches=256, vision_min_num_patches=16, pixel_shuffle_scale=2,
        max_sequence_length=2048, image_token_id=498, bos_token_id=486, eos_token_id=488, pad_token_id=486,
        checkpoint_layout="0.2",
    )
    kwargs.update(overrides)
    return IsaacConfig(**kwargs)
