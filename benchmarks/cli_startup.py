"""Start-up time of the command-line tools: `--help`, a config error, `import isaac_train`.

    python benchmarks/cli_startup.py [--runs 5] [--before /tmp/before] [--only isaac-train] [--json OUT.json]

Each command runs N times in a fresh interpreter, the commands taking turns (round-robin) so that a change in
the machine's load touches all of them alike; the table gives the median and the fastest run of each, and the
median's ratio to the two baselines measured in the same rounds: `python -c pass` (an interpreter's start) and
`python -c "import torch"` (what a command costs the moment it imports torch). `--before DIR` times another
checkout (e.g. `git archive e8fa79e | tar -x -C /tmp/before`) with this venv's packages in the same rounds,
alternating with this one, and prints its medians and the speed-up; `--pythonpath DIR` measures DIR alone.
The load average is printed before and after: the machine is shared, so compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _script(name: str, module: str) -> list[str]:
    """The console script the user runs (its own shebang, this interpreter), else `python -m module`."""
    path = BIN / name
    return [str(path)] if path.is_file() else [sys.executable, "-m", module]


def commands() -> dict[str, tuple[list[str], int]]:
    """name -> (argv, the exit code it must end with)."""
    train, data = _script("isaac-train", "isaac_train.train"), _script("isaac-data", "data_tools.cli")
    return {
        "python -c pass": ([sys.executable, "-c", "pass"], 0),
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
        "import isaac_train": ([sys.executable, "-c", "import isaac_train"], 0),
        "isaac-train --help": ([*train, "--help"], 0),
        "isaac-train train.max_steps=-1": ([*train, "train.max_steps=-1"], 2),
        "isaac-train +train.nope=1": ([*train, "+train.nope=1"], 2),
        "isaac-data --help": ([*data, "--help"], 0),
        "isaac-data make-shards --help": ([*data, "make-shards", "--help"], 0),
        "isaac-eval --help": ([*_script("isaac-eval", "isaac_train.eval.cli"), "--help"], 0),
        "isaac-export --help": ([*_script("isaac-export", "isaac_train.export.cli"), "--help"], 0),
    }


def time_once(argv: list[str], code: int, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != code:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}, expected {code}: {proc.stderr.strip()[-500:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (5)")
    parser.add_argument("--pythonpath", default=None, help="put this checkout first on PYTHONPATH")
    parser.add_argument("--before", default=None, help="also time this checkout (as --pythonpath) in the same rounds, "
                        "alternating with the measured one, and print its medians and the speed-up")
    parser.add_argument("--only", action="append", default=[], help="commands whose name starts with this "
                        "(repeatable; the two baselines always run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    def env_for(path: str | None) -> dict[str, str]:
        env = dict(os.environ, HYDRA_FULL_ERROR="0")
        if path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
        return env

    trees = {"now": env_for(args.pythonpath), **({"before": env_for(args.before)} if args.before else {})}
    todo = {name: cmd for i, (name, cmd) in enumerate(commands().items())
            if i < 2 or not args.only or any(name.startswith(o) for o in args.only)}
    load_before = os.getloadavg()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        for i, (name, (cmd, code)) in enumerate(todo.items()):
            for tree, env in trees.items():
                if i >= 2 or tree == "now":  # the baselines do not depend on the checkout
                    times.setdefault((name, tree), []).append(time_once(cmd, code, env))
    load_after = os.getloadavg()
    base, torch_base = (statistics.median(times[(n, "now")]) for n in list(todo)[:2])
    print(f"{args.runs} runs each, {os.cpu_count()} cores, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; PYTHONPATH={trees['now'].get('PYTHONPATH', '')}"
          + (f"; before: {args.before}" if args.before else ""))
    extra = f" {'before s':>9s} {'speed-up':>8s}" if args.before else ""
    print(f"{'command':34s} {'median s':>9s} {'fastest s':>9s} {'x pass':>7s} {'x torch':>7s}{extra}")
    rows = {}
    for name in todo:
        values = times[(name, "now")]
        med = statistics.median(values)
        row = {"median_s": round(med, 3), "min_s": round(min(values), 3), "x_pass": round(med / base, 1),
               "x_import_torch": round(med / torch_base, 2)}
        line = f"{name:34s} {med:9.3f} {min(values):9.3f} {med / base:7.1f} {med / torch_base:7.2f}"
        if (name, "before") in times:
            old = statistics.median(times[(name, "before")])
            row.update(before_median_s=round(old, 3), speedup=round(old / med, 1))
            line += f" {old:9.3f} {old / med:7.1f}x"
        rows[name] = row
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "load": [load_before[0], load_after[0]],
                                         "pythonpath": args.pythonpath, "before": args.before, "commands": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
