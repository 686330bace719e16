"""Plots of a run: RUN_DIR/plots/*.png drawn from RUN_DIR/metrics.jsonl, one PNG per metric present.

    isaac-train plot RUN_DIR                  # redraw them (also: python -m isaac_train.metrics.plot RUN_DIR)

The trainer draws them at every checkpoint and at the end of a run (rank 0; `draw_quietly`: a failure is a
warning, never the end of the run). matplotlib is optional (`pip install -e '.[plot]'`); without it the trainer
says so once and trains on. Every figure is FIGSIZE x DPI pixels (800 x 450), drawn on the Agg canvas (no
display, no pyplot state), against the step; a step logged twice keeps its last value.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
FIGSIZE = (8.0, 4.5)  # inches; with DPI: 800 x 450 pixels
DPI = 100
INSTALL_HINT = "pip install -e '.[plot]'"
# (file stem, title, metrics.jsonl keys drawn as one line each; "eval/*": every key with that prefix)
PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("loss", "loss (train and eval)", ("loss", "eval_loss")),
    ("lr", "learning rate", ("lr",)),
    ("grad_norm", "gradient norm (before clipping)", ("grad_norm",)),
    ("tokens_per_s", "tokens/s (all ranks)", ("tokens_per_s",)),
    ("packing_efficiency", "packing efficiency (row fill)", ("packing_efficiency",)),
    ("mfu", "MFU", ("mfu",)),
    ("eval_metrics", "evaluation metrics", ("eval/*",)),
    # objective=dpo (TRL's names; eval_*: held-out pairs)
    ("rewards", "rewards (chosen, rejected, margin)", ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                                       "eval_rewards/chosen", "eval_rewards/rejected",
                                                       "eval_rewards/margins")),
    ("reward_accuracy", "reward accuracy (chosen above rejected)", ("rewards/accuracies", "eval_rewards/accuracies")),
    ("logps", "log-probabilities of the answers", ("logps/*", "eval_logps/*")),
    # objective=grpo (TRL's names)
    ("reward", "reward (mean over completions; std within groups; groups tied)",
     ("reward", "reward_std", "frac_reward_zero_std")),
    ("step_time", "seconds per step: generation, scoring, log-probs, update", ("time/*",)),
    ("completions", "completion length (tokens) and share cut at max_new_tokens",
     ("completions/mean_length", "completions/clipped_ratio")),
)

_missing_reported = False  # draw_quietly says once per process that matplotlib is missing


class PlotsUnavailable(ImportError):
    """matplotlib is not installed."""


def read_series(metrics_file: Path) -> dict[str, dict[int, float]]:
    """key -> {step: value} of every numeric value in metrics.jsonl; a later record of a step replaces an earlier
    one; torn lines and non-finite values (logged as strings) are left out."""
    series: dict[str, dict[int, float]] = {}
    for line in Path(metrics_file).read_text().splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue
        for key, value in record.items():
            if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                series.setdefault(key, {})[step] = float(value)
    return series


def _keys(wanted: tuple[str, ...], series: dict[str, Any]) -> list[str]:
    """The keys of `wanted` that have data, in order; "prefix*" stands for every such key, sorted."""
    out = []
    for key in wanted:
        if key.endswith("*"):
            out += sorted(k for k in series if k.startswith(key[:-1]))
        elif key in series:
            out.append(key)
    return out


def _matplotlib():
    """Figure and the Agg canvas, without pyplot (no global backend, nothing shown)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotsUnavailable(f"plots need matplotlib: {INSTALL_HINT}") from err
    return Figure, FigureCanvasAgg


def plot_run(run_dir: Path | str) -> dict[str, list[str]]:
    """Draw RUN_DIR/plots/NAME.png for each panel with data; returns {file name: [line labels drawn]}.
    Raises FileNotFoundError without RUN_DIR/metrics.jsonl, PlotsUnavailable without matplotlib. Panels without
    data (a resumed run cut back before its evaluation) have their old PNG removed."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} does not exist: not a run directory (or nothing logged yet)")
    Figure, FigureCanvasAgg = _matplotlib()
    series = read_series(metrics_file)
    out_dir = run_dir / PLOTS_DIR
    drawn: dict[str, list[str]] = {}
    for stem, title, wanted in PANELS:
        name, keys = f"{stem}.png", _keys(wanted, series)
        if not keys:
            (out_dir / name).unlink(missing_ok=True)
            continue
        fig = Figure(figsize=FIGSIZE, dpi=DPI)
        FigureCanvasAgg(fig)
        fig.subplots_adjust(left=0.1, right=0.97, top=0.91, bottom=0.12)  # fixed margins: one draw per file
        ax = fig.add_subplot()
        for key in keys:
            steps = sorted(series[key])
            few = len(steps) <= 50  # sparse series (eval, short runs): mark the points
            ax.plot(steps, [series[key][s] for s in steps], label=key, marker="o" if few else None, markersize=3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 6), useOffset=False)  # labels fit the margin
        ax.set(title=f"{title}: {run_dir.name}", xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        out_dir.mkdir(exist_ok=True)
        tmp = out_dir / f".{name}.tmp"  # a viewer never sees a half-written PNG
        fig.savefig(tmp, dpi=DPI, format="png")
        tmp.replace(out_dir / name)
        drawn[name] = keys
    return drawn


def draw_quietly(run_dir: Path | str) -> dict[str, list[str]] | None:
    """plot_run for the trainer: never raises. A missing matplotlib is logged once per process, any other
    failure as a warning; returns what was drawn, or None."""
    global _missing_reported
    try:
        return plot_run(run_dir)
    except PlotsUnavailable:
        if not _missing_reported:
            _missing_reported = True
            logger.warning("no plots in %s: matplotlib is not installed (%s enables them)",
                           Path(run_dir) / PLOTS_DIR, INSTALL_HINT)
    except Exception as err:  # noqa: BLE001  (plots are a convenience: never the end of a run)
        logger.warning("drawing the plots of %s failed (%s: %s); training goes on", run_dir, type(err).__name__, err)
    return None


def main(argv: list[str] | None = None, prog: str = "python -m isaac_train.metrics.plot") -> int:
    """Redraw RUN_DIR/plots/; exit 2 when RUN_DIR has no metrics.jsonl, 1 without matplotlib."""
    parser = argparse.ArgumentParser(prog=prog, description="Redraw RUN_DIR/plots/*.png from its metrics.jsonl.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    args = parser.parse_args(argv)
    try:
        drawn = plot_run(args.run_dir)
    except FileNotFoundError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    except PlotsUnavailable as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    for name, labels in drawn.items():
        print(f"{args.run_dir / PLOTS_DIR / name}: {', '.join(labels)}")
    if not drawn:
        print(f"{prog}: {args.run_dir / 'metrics.jsonl'} has no metrics to draw yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
