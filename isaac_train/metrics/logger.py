"""One metrics sink per run: metrics.jsonl always, W&B when enabled, a progress bar on the console (rank 0)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)


# the files a run appends one record per step to; a resumed run cuts them back to the checkpoint's step
STEP_FILES = ("metrics.jsonl", "samples.jsonl")
EVAL_DIR = "eval"  # eval/step_NNNNNNN.jsonl: the predictions of each periodic evaluation
ROLLOUTS_DIR = "rollouts"  # rollouts/step_NNNNNNN.jsonl: objective=grpo's prompts, completions, rewards, advantages


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Prediction rows as JSON lines at `path` (a periodic evaluation's eval/step_N.jsonl, isaac-eval's
    predictions.jsonl), written whole or not at all (a temporary file, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)
    return path


class MetricsLogger:
    """`log(step, metrics)` appends one JSON object per logged step to run_dir/metrics.jsonl (rank 0);
    `ledger(step, keys)` the sample keys each rank trained on in that step to samples.jsonl (logging.ledger).
    Records of steps after `start_step` (written before a crash, after the checkpoint resumed from) are removed
    first, so a resumed run's files hold every step once."""

    def __init__(self, run_dir: Path, config: dict[str, Any], rank: int, total_steps: int, start_step: int,
                 wandb_mode: str = "disabled", project: str = "isaac-train", name: str | None = None,
                 progress: bool = True) -> None:
        self.rank = rank
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        self.bar = None
        if rank != 0:
            return
        for name in STEP_FILES:
            truncate_after(Path(run_dir) / name, start_step)
        for folder in (EVAL_DIR, ROLLOUTS_DIR):  # evaluated or rolled out after the checkpoint resumed
            for later in (Path(run_dir) / folder).glob("step_*.jsonl"):
                number = later.stem.removeprefix("step_")
                if number.isdigit() and int(number) > start_step:
                    later.unlink()
        if wandb_mode != "disabled":
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("logging.wandb needs the wandb package: pip install -e '.[wandb]'") from err
            self.wandb = wandb.init(project=project, name=name, mode=wandb_mode, config=config,
                                    dir=str(run_dir), resume="allow", id=_run_id(run_dir))
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        record = {"step": step, "time": time.time(), **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)
        if self.bar is not None:
            shown = {k: record[k] for k in ("loss", "lr", "tokens_per_s") if k in record}
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()})

    def ledger(self, step: int, keys_per_rank: list[list[str]]) -> None:
        if self.rank == 0:
            with (self.path.parent / "samples.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "keys": keys_per_rank}) + "\n")

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def predictions(self, step: int, rows: list[dict[str, Any]], folder: str = EVAL_DIR) -> Path | None:
        """An evaluation's prediction rows as eval/step_NNNNNNN.jsonl (rank 0; `folder` ROLLOUTS_DIR: a GRPO
        step's rollouts); its path."""
        if self.rank != 0:
            return None
        return write_predictions(self.path.parent / folder / f"step_{step:07d}.jsonl", rows)

    def table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        """Sample predictions as a W&B table, images included (the rows are on disk through `predictions`)."""
        if self.rank != 0 or not rows or self.wandb is None:
            return
        self._wandb_table(name, rows, step)

    def _wandb_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        """The table with its images. wandb (0.31) writes a table logged with `log` with the string "Image" where
        an image goes, so the table travels in an artifact (which stores each image), and the images are also
        logged as a media list (PNGs in the run's media/, captioned with the row's key and answer)."""
        import wandb

        columns = list(rows[0])
        data = [[wandb.Image(r[c]) if c == "image" and r[c] is not None else _cell(r[c]) for c in columns]
                for r in rows]
        table = wandb.Table(columns=columns, data=data)
        images = [wandb.Image(r["image"], caption=f"{r.get('key', '')}: {r.get('generated', '')}"[:200])
                  for r in rows if r.get("image") is not None]
        self.wandb.log({name: table, **({f"{name}_images": images} if images else {})}, step=step)
        artifact = wandb.Artifact(f"{name}-{self.wandb.id}", type="predictions", metadata={"step": step})
        artifact.add(table, f"{name}_step{step:07d}")
        self.wandb.log_artifact(artifact)

    def write(self, message: str) -> None:
        if self.rank == 0:
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def _cell(value: Any) -> Any:
    """A table cell W&B can type: lists and dicts as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def truncate_after(path: Path, step: int) -> None:
    """Keep the records of `path` (JSON lines with a "step") up to `step`; a torn last line goes too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _run_id(run_dir: Path) -> str:
    """A stable W&B run id per run directory, so a resumed run continues the same W&B run."""
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
