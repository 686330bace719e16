"""benchmarks/gpu_report.py on CPU: the dry run goes through every part, writes report.json and report.md with a
figure or an explicit skip/error reason everywhere; a failing part, in a child process or not, stops nothing else;
the total budget skips what does not fit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_report.py"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def gpu_report():
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_report"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_report", None)


def run_script(out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "report.md").is_file()
    return json.loads((out / "report.json").read_text())


def figure_or_reason(entry: dict, *figures: str) -> bool:
    return any(entry.get(k) for k in ("skipped", "error")) or all(isinstance(entry.get(f), (int, float))
                                                                  for f in figures)


def test_dry_run_writes_every_part(tmp_path, gpu_report):
    report = run_script(tmp_path, "--dry-run")
    md = (tmp_path / "report.md").read_text()
    assert set(report["parts"]) == set(gpu_report.PARTS)
    assert report["torch"] and report["date"] and report["device"] == "cpu"
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part.get("reason"), part.get("traceback"))
        assert f"### {gpu_report.MD[name][0]}" in md

    matmul = report["parts"]["matmul"]["results"]
    assert matmul["ceiling_tflops"] > 0

    attention = {(e["backend"], e["row"]): e for e in report["parts"]["attention"]["results"]["backends"]}
    assert attention.keys() == {("sdpa", "main"), ("varlen", "main"), ("flash_attn", "main"), ("sdpa", "short"),
                                ("eager", "short")}
    assert all(figure_or_reason(e, "fwd_bwd_ms") for e in attention.values())
    assert "needs CUDA" in attention[("varlen", "main")]["skipped"]
    assert attention[("eager", "short")]["max_abs_logit_diff"] < 1e-4  # fp32 on CPU: the same attention
    assert attention[("sdpa", "main")]["ran"] == {"decoder": "sdpa", "vision": "sdpa"}

    model = report["parts"]["model"]["results"]
    runs = model["runs"]
    assert len(runs) == len(gpu_report.MODEL_RUNS)
    assert {(r["training"], r["compile"], r["activation_checkpointing"]) for r in runs} == set(gpu_report.MODEL_RUNS)
    assert all(figure_or_reason(r, "tokens_per_s", "step_s", "tflops") for r in runs)
    measured = [r for r in runs if "tokens_per_s" in r]
    assert measured and measured[0]["flops_per_step"] > 0 and measured[0]["mfu_measured_ceiling"] > 0
    assert "step_flops" in md and "decoder attention" in model["formula"]  # the trainer's formula, quoted

    assert "needs CUDA" in report["parts"]["syncs"]["results"]["skipped"]

    strategies = report["parts"]["strategies"]["results"]["strategies"]
    assert list(strategies) == list(gpu_report.STRATEGIES)
    assert all(figure_or_reason(e, "max_abs_diff_vs_single") for e in strategies.values())
    assert strategies["ddp"]["wrapped"] == "DistributedDataParallel"
    for name, entry in strategies.items():
        if "losses" in entry:  # same weights, same batch: bf16 agreement
            assert entry["max_abs_diff_vs_single"] < 5e-2, (name, entry)


def test_a_failing_part_in_a_child_stops_nothing_else(tmp_path):
    report = run_script(tmp_path, "--dry-run", "--isolate", "--parts", "matmul,attention",
                        "--inject-failure", "attention")
    parts = report["parts"]
    assert parts["attention"]["status"] == "error" and "injected failure" in parts["attention"]["reason"]
    assert parts["matmul"]["status"] == "ok" and parts["matmul"]["results"]["ceiling_tflops"] > 0
    assert (tmp_path / "parts" / "matmul.json").is_file()  # it ran in its own process
    for name in ("model", "syncs", "strategies"):
        assert parts[name]["status"] == "skipped" and "not selected" in parts[name]["reason"]
    assert "**error**: RuntimeError: injected failure" in (tmp_path / "report.md").read_text()


def test_errors_and_the_total_budget_in_process(tmp_path, gpu_report):
    seen = {}

    def ok(ctx):
        seen[ctx.name] = ctx.left()
        ctx.results["figure"] = 1.0

    def boom(ctx):
        ctx.results["half"] = 2.0
        raise ValueError("kernel fell over")

    fns = {"matmul": ok, "attention": boom, "model": ok, "syncs": ok, "strategies": ok}
    args = gpu_report.parse_args(["--dry-run", "--budget-s", "300", "--no-isolate"])
    report = gpu_report.run_all(args, {"parts": {}}, tmp_path, fns)
    parts = report["parts"]
    assert parts["attention"]["status"] == "error" and "kernel fell over" in parts["attention"]["reason"]
    assert parts["attention"]["results"] == {"half": 2.0}  # what it measured before failing is kept
    assert all(parts[n]["status"] == "ok" for n in ("matmul", "model", "syncs", "strategies"))
    assert 0 < seen["matmul"] < 300 * gpu_report.WEIGHTS["matmul"] + 1  # each part gets its share as a deadline
    assert seen["model"] > seen["matmul"]

    # 290 of 300 s already gone: nothing fits any more, every part says so
    report = gpu_report.run_all(args, {"parts": {}, "_start": time.time() - 290}, tmp_path, fns)
    for part in report["parts"].values():
        assert part["status"] == "skipped" and "over the total time budget" in part["reason"]
    assert "over the total time budget" in (tmp_path / "report.md").read_text()


def test_host_syncs_are_tallied_by_line(gpu_report):
    def warning(text, filename, line):
        return warnings.WarningMessage(UserWarning(text), UserWarning, filename, line)

    caught = [warning("called a synchronizing CUDA operation", str(ROOT / "isaac_train/model/modeling.py"), 10),
              warning("called a synchronizing CUDA operation", str(ROOT / "isaac_train/model/modeling.py"), 10),
              warning("called a synchronizing CUDA operation", "/x/site-packages/torch/nn/utils/clip_grad.py", 5),
              warning("something else", "/x/y.py", 1)]
    total, where = gpu_report.tally_sync_warnings(caught)
    assert total == 3
    assert where == [("isaac_train/model/modeling.py:10", 2), ("torch/nn/utils/clip_grad.py:5", 1)]
