"""benchmarks/grpo_throughput.py with the tiny model: the step's split is measured and adds up, and the batched
rollout gives exactly the one-prompt-at-a-time rollout's tokens (greedy). No timing is checked."""

from __future__ import annotations

from . import load_benchmark


def test_the_benchmark_runs_and_batched_rollouts_equal_one_prompt_at_a_time(tmp_path):
    result = load_benchmark("grpo_throughput").main(
        ["--tiny", "--steps", "3", "--prompts-per-batch", "3", "--generations", "2", "--max-new-tokens", "6",
         "--repeats", "1", "--json", str(tmp_path / "out.json")])
    step, rollout = result["step"], result["rollout"]
    assert step["completions_per_step"] == 6 and step["generation_s"] > 0 and step["update_s"] > 0
    assert step["generation_s"] + step["scoring_s"] + step["logps_s"] <= step["step_s"]
    assert rollout["rows"] == 6 and rollout["same_tokens"] is True
    assert (tmp_path / "out.json").is_file()
