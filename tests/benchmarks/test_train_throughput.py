"""benchmarks/train_throughput.py in its tiny mode: the three ways of batching a step compute the same loss, and the
benchmark runs end to end (subprocess per run, JSON, markdown table). No timing is checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from . import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


def _bench():
    return load_benchmark("train_throughput")


@pytest.mark.parametrize("mix", ["short", "long"])
def test_methods_agree_on_the_first_step(tmp_path, mix):
    from dataclasses import asdict

    from isaac_train.processing.processor import IsaacProcessor
    from isaac_train.processing.tiny_tokenizer import build_tiny_tokenizer

    tt = _bench()
    m = tt.Mix(**{**asdict(tt.MIXES[mix]), **tt.TINY[mix]})
    weights = tmp_path / "w.safetensors"
    tt.save_weights("tiny", 0, weights)
    spec = {"size": "tiny", "weights": str(weights), "attn_backend": "auto", "samples_per_step": m.samples_per_step,
            "seq_len": m.seq_len, "rows": 1, "padded_batching": "match", "pack_buffer": 64}
    processor = IsaacProcessor.from_settings(build_tiny_tokenizer(), tt.model_config("tiny"))
    samples = tt.make_samples(processor, m, m.samples_per_step, seed=0)
    assert any(s.pixel_values is not None for s in samples)
    results = {}
    for method in tt.METHODS:
        step = tt.build_steps(method, samples, spec, processor.tokenizer.pad_token_id)[0]
        strategy, _ = tt.make_trainer(spec)
        loss_sum, count = tt.train_step(strategy, step, 1.0)
        assert count == step.label_tokens, method
        assert step.samples == len(samples)
        results[method] = (loss_sum / count, step)
    ref = results["packed"][0]
    for method, (loss, _) in results.items():
        assert abs(loss - ref) < tt.LOSS_TOLERANCE, (method, loss, ref)
    assert results["per-sample"][1].computed_tokens == results["per-sample"][1].real_tokens  # no padding at all
    assert results["padded"][1].computed_tokens > results["padded"][1].real_tokens
    assert len(results["per-sample"][1].micro) == len(samples)


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--mix", "short", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["losses_agree"]
    (mix,) = result["mixes"]
    assert set(mix["summary"]) == {"packed", "per-sample", "padded"}
    assert set(mix["ratios"]) == {"per-sample", "padded"}
    for figures in mix["summary"].values():
        assert figures["label_tokens_per_s"] > 0 and figures["rss_peak_mib"] > 0
    assert "| short | packed |" in proc.stdout and "packed / per-sample" in proc.stdout
