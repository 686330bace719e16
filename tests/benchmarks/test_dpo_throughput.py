"""benchmarks/dpo_throughput.py in its tiny mode: every method's first step passes the benchmark's checks (DPO
starts at log 2, its per-answer log-probabilities are SFT's token losses on the same documents, LoRA starts at the
base weights, vision once per pair = once per document), and the benchmark runs end to end (subprocess per run,
JSON, markdown table). No timing is checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from . import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dpo_throughput.py"


def _bench():
    return load_benchmark("dpo_throughput")


@pytest.fixture
def one_thread():
    """The tiny model's ops are too small for two threads to help, and on a busy machine they wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mix", ["pairs", "images"])
def test_methods_pass_the_first_step_checks(mix, one_thread):
    bench = _bench()
    m = bench.PairMix(**{**asdict(bench.MIXES[mix]), **bench.TINY[mix]})
    settings = {"pairs_per_step": m.pairs_per_step, "seq_len": m.seq_len, "rows": 1, "pack_buffer": 64, "steps": 1,
                "rounds": 1}
    spec = {**settings, "mix": asdict(m), "size": "tiny", "seed": 0, "attn_backend": "auto"}
    res = bench.MixResult(mix, settings, {
        name: [bench.measure({**spec, "method": asdict(bench.METHODS[name])})]
        for name in (*bench.MIX_METHODS[mix], *bench.OPT_IN.get(mix, ()))})
    bench.summarize(res)
    assert res.agree, [c for c in res.checks if not c["ok"]]
    whats = " ".join(c["what"] for c in res.checks)
    if mix == "pairs":
        for method in ("dpo-lora", "dpo-precomputed", "dpo-lora-precomputed"):
            assert f"{method}: |first loss - log 2|" in whats
        assert "simpo-lora: -(logps/chosen + logps/rejected) against sft-lora's token loss sum" in whats
        s = res.summary
        assert s["sft"]["tokens_per_step"] == s["dpo"]["tokens_per_step"] == s["simpo-lora"]["tokens_per_step"]
        assert s["sft"]["patches_per_step"] == 2 * s["dpo"]["patches_per_step"] > 0  # SFT: images per document
        assert set(res.ratios) == {"dpo", "dpo-precomputed", "simpo", "dpo-lora", "dpo-lora-precomputed",
                                   "simpo-lora", "sft-lora-no-dropout"}
    else:
        assert "vision once per pair = once per document: gradient norm" in whats
        assert res.summary["dpo-per-document"]["patches_per_step"] == 2 * res.summary["dpo"]["patches_per_step"] > 0


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--mix", "both", "--methods", "sft,dpo",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["checks_agree"]
    pairs, images = result["mixes"]
    assert set(pairs["summary"]) == {"sft", "dpo"} and set(images["summary"]) == {"dpo"}
    assert set(pairs["ratios"]) == {"dpo"} and images["ratios"] == {}  # dpo-per-document did not run
    for figures in pairs["summary"].values():
        assert figures["tokens_per_s"] > 0 and figures["tokens_per_cpu_s"] > 0 and figures["rss_peak_mib"] > 0
    assert "| pairs | dpo (full, reference: frozen copy) |" in proc.stdout and "dpo / sft: tokens/s" in proc.stdout
