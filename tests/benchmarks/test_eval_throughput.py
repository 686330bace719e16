"""benchmarks/eval_throughput.py runs end to end on a few prompts, and its batched answers equal the unbatched ones
(the benchmark prints the count). No timing is checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_throughput.py"


def test_eval_throughput_runs_and_batched_answers_are_equal():
    out = subprocess.run([sys.executable, str(SCRIPT), "--samples", "5", "--batch-sizes", "1,4", "--rounds", "1",
                          "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.split() and line.split()[0] in ("1", "4")]
    assert [r[0] for r in rows] == ["1", "4"] and all(r[-1] == "5/5" for r in rows), out.stdout
    assert "batch 4 vs 1:" in out.stdout
