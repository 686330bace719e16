"""plots/: drawn from metrics.jsonl at every checkpoint and at the end of a run (also a resumed one), redrawn by
`isaac-train plot RUN_DIR`; a missing matplotlib or a failed plot never fails training."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from PIL import Image

from isaac_train.metrics import plot
from isaac_train.train import cli, loop
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from .conftest import losses, tiny_overrides

SIZE = (round(plot.FIGSIZE[0] * plot.DPI), round(plot.FIGSIZE[1] * plot.DPI))
TRAIN_PANELS = {"loss.png": ["loss"], "lr.png": ["lr"], "grad_norm.png": ["grad_norm"],
                "tokens_per_s.png": ["tokens_per_s"], "packing_efficiency.png": ["packing_efficiency"]}
MATPLOTLIB = ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg")


def _assert_pngs(plots_dir, names):
    assert sorted(p.name for p in plots_dir.iterdir()) == sorted(names)
    for name in names:
        with Image.open(plots_dir / name) as image:
            assert (image.format, image.size) == ("PNG", SIZE), name


def _record_draws(monkeypatch) -> list[tuple[int, dict]]:
    """(last logged step, what was drawn) for each draw of the trainer."""
    calls = []

    def draw(run_dir):
        drawn = plot.draw_quietly(run_dir)
        calls.append((max(losses(run_dir)), drawn))
        return drawn

    monkeypatch.setattr(loop, "draw_quietly", draw)
    return calls


def test_plots_at_each_checkpoint_and_the_end_also_resumed(train_shards, tmp_path, monkeypatch):
    calls = _record_draws(monkeypatch)
    run = tmp_path / "run"
    evals = [f"data.eval_shards={train_shards}", "train.eval_every=2", "train.eval_samples=0", "train.eval_batches=1"]
    train(compose_config(tiny_overrides(train_shards, run, "train.max_steps=4", "train.save_every=2", *evals)))
    expected = {**TRAIN_PANELS, "loss.png": ["loss", "eval_loss"]}
    assert calls == [(2, expected), (4, expected)]
    _assert_pngs(run / "plots", expected)

    calls.clear()  # resumed from step 4 to 6 (metrics.jsonl cut back to the checkpoint: each step once)
    train(compose_config(tiny_overrides(train_shards, run, "train.max_steps=6", "train.save_every=2", *evals)))
    assert calls == [(6, expected)]
    _assert_pngs(run / "plots", expected)
    series = plot.read_series(run / "metrics.jsonl")
    assert sorted(series["loss"]) == [1, 2, 3, 4, 5, 6] and sorted(series["eval_loss"]) == [2, 4, 6]

    (run / "plots" / "loss.png").unlink()  # `isaac-train plot RUN_DIR` redraws them
    done = subprocess.run([sys.executable, "-m", "isaac_train.train", "plot", str(run)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert f"{run / 'plots' / 'loss.png'}: loss, eval_loss" in done.stdout
    _assert_pngs(run / "plots", expected)


def _write_metrics(run_dir, records, torn: str = "") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


def test_one_line_per_metric_present_and_the_last_record_of_a_step_wins(tmp_path):
    run = tmp_path / "run"
    stale = run / "plots" / "mfu.png"  # drawn before, no mfu in the records now: removed
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    records = [{"step": s, "time": 0.0, "loss": 5.0 - s, "lr": 1e-4, "grad_norm": "nan" if s == 2 else 1.0,
                "skipped": {"too_long": 1}, "tokens_per_s": 1e4} for s in range(1, 4)]
    records += [{"step": 2, "loss": 9.0}, {"step": 3, "eval_loss": 2.5, "eval/exact_match": 0.5,
                                           "eval/contains": 0.75, "eval_samples": 8}]
    _write_metrics(run, records, torn='{"step": 4, "loss": 1.')
    drawn = plot.plot_run(run)
    assert drawn == {"loss.png": ["loss", "eval_loss"], "lr.png": ["lr"], "grad_norm.png": ["grad_norm"],
                     "tokens_per_s.png": ["tokens_per_s"], "eval_metrics.png": ["eval/contains", "eval/exact_match"]}
    _assert_pngs(run / "plots", drawn)
    series = plot.read_series(run / "metrics.jsonl")
    assert series["loss"] == {1: 4.0, 2: 9.0, 3: 2.0} and series["grad_norm"] == {1: 1.0, 3: 1.0}


def test_a_few_thousand_steps_draw_fast(tmp_path):
    import time

    run = tmp_path / "run"
    _write_metrics(run, [{"step": s, "loss": 1 / s, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 1e4,
                          "packing_efficiency": 0.97} for s in range(1, 3001)])
    plot.plot_run(run)  # matplotlib's import and font cache out of the timing
    start = time.process_time()
    assert plot.plot_run(run) == TRAIN_PANELS
    assert time.process_time() - start < 2.0


def test_the_command_without_metrics_exits_2(tmp_path, capsys, monkeypatch):
    assert plot.main([str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["isaac-train", "plot", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("isaac-train plot: ") and "nowhere/metrics.jsonl does not exist" in err


def test_a_missing_matplotlib_is_reported_once_and_never_fails(tmp_path, monkeypatch, caplog, capsys):
    run = tmp_path / "run"
    _write_metrics(run, [{"step": 1, "loss": 1.0}])
    for name in MATPLOTLIB:  # `import matplotlib...` raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(plot, "_missing_reported", False)
    with caplog.at_level(logging.WARNING, logger=plot.__name__):
        assert plot.draw_quietly(run) is None and plot.draw_quietly(run) is None
    warnings = [r.getMessage() for r in caplog.records if r.name == plot.__name__]
    assert len(warnings) == 1 and "pip install -e '.[plot]'" in warnings[0], warnings
    assert not (run / "plots").exists()
    assert plot.main([str(run)]) == 1 and "pip install -e '.[plot]'" in capsys.readouterr().err


def test_a_failed_plot_is_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    _write_metrics(run, [{"step": 1, "loss": 1.0}])
    (run / "plots").write_text("a file where the directory goes")
    with caplog.at_level(logging.WARNING, logger=plot.__name__):
        assert plot.draw_quietly(run) is None
    assert any("training goes on" in r.getMessage() for r in caplog.records)
