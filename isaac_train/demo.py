"""The README's main job: train the demo_cpu recipe, reload the exported model, answer held-out questions.

    python -m isaac_train.demo [hydra overrides]      (what `make demo` runs)

1. `isaac-train recipe=demo_cpu` (default): makes the synthetic shapes data (`isaac-data demo`) under
   run.output_dir/data on first use, trains the small Isaac on CPU with a progress bar, checkpoints, and exports a
   Hugging Face directory to run.output_dir/hf. Running it again resumes from the last checkpoint.
2. Reloads run.output_dir/hf with `AutoModelForImageTextToText` / `AutoProcessor` and answers the held-out
   questions, scored with isaac_train.eval: an answer counts as right when it equals the expected sentence (after
   light normalisation), or for a box, when the expected box is found at IoU >= 0.5. Prints each question type's
   accuracy against chance.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import isaac_train  # noqa: F401  (Auto classes)
from isaac_train.config.schema import ConfigError
from isaac_train.eval import generate_answers, read_eval_samples, score_rows
from isaac_train.train.cli import compose_config, report_config_error
from isaac_train.train.loop import exit_code, train

# Chance of a blind guess per question type (colours: 4, counts: 3, places: 5; a box: ~0).
CHANCE = {"colour": 1 / 4, "count": 1 / 3, "location": 1 / 5, "grounding": 0.0}


def held_out_accuracy(export_dir: Path, eval_dir: str, n: int, show: int = 8) -> dict[str, float]:
    """Reload the export and score its answers (generated 8 at a time) on the first `n` held-out conversations."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(export_dir)
    model = AutoModelForImageTextToText.from_pretrained(export_dir).eval()
    samples = read_eval_samples(eval_dir, n).samples
    answers = generate_answers(model, processor, samples, batch_size=8, max_new_tokens=48)
    right, total = defaultdict(int), defaultdict(int)
    # each sample's metric as isaac-eval picks it: grounding for the box questions, exact match for the others
    for i, (sample, row) in enumerate(zip(samples, score_rows(samples, answers), strict=True)):
        kind = sample.meta.get("type", "other")
        ok = bool(row["scores"].get("all_found", row["scores"].get("exact_match")))
        right[kind] += ok
        total[kind] += 1
        if i < show:
            print(f"  [{'ok' if ok else '--'}] {sample.question}  ->  {row['generated']}")
    accuracy = {k: right[k] / total[k] for k in sorted(total)}
    for kind in sorted(total):
        print(f"  {kind:>9}: {right[kind]:3d}/{total[kind]:3d} = {accuracy[kind]:.0%}  "
              f"(chance {CHANCE.get(kind, 0):.0%})")
    overall = sum(right.values()) / max(sum(total.values()), 1)
    print(f"  overall: {overall:.0%} on {sum(total.values())} held-out questions")
    return {**accuracy, "overall": overall}


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose_config(overrides)
    except ConfigError as err:
        return report_config_error(err)
    result = train(cfg)
    if exit_code(result):
        return exit_code(result)
    if result.export_dir is None or cfg.data.train_shards is not None:
        print("no held-out demo questions to answer (run.export=false or custom data)")
        return 0
    print(f"\nheld-out questions, answered by the model reloaded from {result.export_dir}:")
    eval_dir = str(Path(cfg.run.output_dir) / "data" / "eval")
    accuracy = held_out_accuracy(result.export_dir, eval_dir, cfg.data.demo_eval_samples)
    (Path(cfg.run.output_dir) / "demo_accuracy.json").write_text(json.dumps(accuracy, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
