"""A tiny byte-level BPE tokenizer with Qwen3's special tokens, for tests and the CPU demo.

Built deterministically from `assets/tiny_corpus.txt` (shipped) with Qwen2/3's pre-tokenizer (the same split
regex, byte-level alphabet, NFC), so it behaves like the real one at a 512-token scale: 256 byte tokens, BPE
merges up to 486 ids, then Qwen3's 26 added tokens in Qwen3's order (`<|endoftext|>` 486, `<|im_start|>` 487,
`<|im_end|>` 488, ... `<|image_pad|>` 498, ... `</think>` 511). Real Qwen3 tokenizer files need none of this.

    python -m isaac_train.processing.tiny_tokenizer OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from .chat_template import CHAT_TEMPLATE

VOCAB_SIZE = 512
# Qwen3's added tokens in id order, with whether Qwen3 marks them special.
QWEN3_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", True), ("<|fim_middle|>", True), ("<|fim_suffix|>", True), ("<|fim_pad|>", True),
    ("<|repo_name|>", True), ("<|file_sep|>", True), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]


def _corpus() -> str:
    return resources.files("isaac_train.processing").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(QWEN3_ADDED_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False, min_frequency=2,
    )
    tok.train_from_iterator(_corpus().splitlines(), trainer=trainer)
    model = json.loads(tok.model.__getstate__())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def build_tiny_tokenizer(save_dir: str | Path | None = None) -> Qwen2Tokenizer:
    """The tiny tokenizer (deterministic); saved with its chat template to `save_dir` if given."""
    vocab, merges = _vocab_and_merges()
    if len(vocab) != VOCAB_SIZE - len(QWEN3_ADDED_TOKENS):
        raise RuntimeError(f"tiny corpus gave {len(vocab)} BPE tokens, expected {VOCAB_SIZE - len(QWEN3_ADDED_TOKENS)}")
    vocab = dict(vocab)
    # Give the added tokens their Qwen3 order at the end of the vocabulary before transformers adds them.
    vocab.update({token: len(vocab) + i for i, (token, _) in enumerate(QWEN3_ADDED_TOKENS)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=list(merges), unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN3_ADDED_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {VOCAB_SIZE}")
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the tiny Isaac test tokenizer to a directory.")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    tok = build_tiny_tokenizer(args.out_dir)
    print(f"wrote {len(tok)}-token tokenizer to {args.out_dir}")


if __name__ == "__main__":
    main()
