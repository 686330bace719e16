"""`isaac-train [hydra overrides]` (also `python -m isaac_train.train` and under torchrun).

    isaac-train                                   # the demo_cpu recipe
    isaac-train recipe=sft_lora model.pretrained=/ckpt/Isaac-0.1 data.train_shards=/data/sft run.output_dir=/runs/a
    isaac-train recipe=sft_full --cfg job         # print the resolved config and exit (paths are not checked)
    isaac-train plot RUN_DIR                      # redraw RUN_DIR/plots/ from its metrics.jsonl (no Hydra)

A wrong setting ends the command before anything starts with one line naming the key, `isaac-train: KEY: what
is wrong`, and exit code 2; HYDRA_FULL_ERROR=1 shows the trace instead.

Importing this module imports no Hydra, torch or transformers: `--help` (our own page, help.py) and a config error
end within about a second (docs/performance.md), and the stop handlers of `main()` are in place before any heavy
import.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.schema import Config, ConfigError, validate

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# Shard specs whose braces Hydra's grammar would read as a dict: data.train_shards=/data/sft-{000000..000127}.tar
_BRACED_SHARDS = re.compile(r"^(\+{0,2}data\.(?:train|eval)_shards=)([^'\"\[].*\{.*)$")
# Hydra's flags that print something other than our config, or compose it some other way: not checked here
_NOT_CHECKED = ("help", "hydra_help", "info", "shell_completion", "multirun", "config_path", "config_dir",
                "experimental_rerun")


def register_schema() -> None:
    """Make the typed Config the `schema` entry of configs/train.yaml's defaults list."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)


def to_config(cfg: DictConfig, check_files: bool = True) -> Config:
    """Typed, validated Config from Hydra's composition (raises ConfigError naming the key). `check_files`:
    also check that the shards, checkpoint and processor it names exist and hold what the run reads."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ..config.checks import check_keys, check_paths
    from ..config.hydra_errors import as_config_error

    try:
        check_keys(cfg)
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise as_config_error(err, []) from err
    validate(config)
    if check_files:
        check_paths(config)
    return config


def quote_shard_patterns(overrides: list[str]) -> list[str]:
    """Quote brace patterns in data.train_shards / data.eval_shards for Hydra, as the shell passes them."""
    return [_BRACED_SHARDS.sub(lambda m: m[1] + "'" + m[2].replace("'", "\\'") + "'", o) for o in overrides]


def compose_config(overrides: list[str] | None = None, check_files: bool = True,
                   config_name: str = "train") -> Config:
    """Compose configs/train.yaml with overrides, as the command line would (tests, notebooks, dry runs).
    Every problem, Hydra's included, raises ConfigError naming the key."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config.hydra_errors import as_config_error

    overrides = quote_shard_patterns(list(overrides or []))
    register_schema()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise as_config_error(err, overrides) from err
    return to_config(cfg, check_files=check_files)


def check_command_line(argv: list[str]) -> None:
    """Compose and check the config of this command line once, before Hydra runs it: a problem prints one line
    and exits with code 2 (the trace with HYDRA_FULL_ERROR=1). `--cfg` skips the path checks."""
    from hydra._internal.utils import get_args_parser  # Hydra's own parser: the same flags, the same errors

    args = get_args_parser().parse_args(argv)
    if any(getattr(args, flag) for flag in _NOT_CHECKED):
        return
    overrides = [o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        compose_config(overrides, check_files=args.cfg is None, config_name=args.config_name or "train")
    except ConfigError as err:
        sys.exit(report_config_error(err))


def report_config_error(err: ConfigError) -> int:
    """Print `isaac-train: KEY: what is wrong` on stderr and return exit code 2 (re-raise with HYDRA_FULL_ERROR=1,
    as Hydra shows its own traces)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops here; one says why
        print(f"isaac-train: {err}", file=sys.stderr)
    return 2


def run_faults() -> tuple[type[BaseException], ...]:
    """Errors that end a run with a message saying what happened and what to do: shown without a traceback.
    ValueError covers the refusals (a changed configuration on resume, a checkpoint from elsewhere, a payload)."""
    from ..checkpoint.manager import CheckpointWriteError, RunDirError
    from ..checkpoint.run_lock import RunDirInUse, RunDirTakenOver
    from ..data.loader import NoUsableSamples
    from ..distributed.watchdog import RankFailure
    from .loop import TrainingDiverged

    return (CheckpointWriteError, RunDirError, NoUsableSamples, RankFailure, TrainingDiverged, RunDirInUse,
            RunDirTakenOver, ValueError, FileNotFoundError)


def report_fault(message: str) -> None:
    """`isaac-train: [rank N: ]message` on stderr, then exit 1 (at once under torchrun, whose other ranks may be
    blocked in a collective: torchrun stops them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    where = f"rank {os.environ.get('RANK', '0')}: " if world > 1 else ""
    print(f"isaac-train: {where}{message} (HYDRA_FULL_ERROR=1 shows the trace)", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    if world > 1:
        os._exit(1)
    sys.exit(1)


def _main() -> None:
    """Hydra's entry point (run directory, --cfg, --multirun, overrides from sys.argv) around `_train`; the
    decorator is applied here so that importing this module does not import Hydra."""
    import hydra

    hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")(_train)()


def _train(cfg: DictConfig) -> None:
    from ..distributed.setup import shutdown_and_exit
    from .loop import exit_code, train

    fault = None
    try:
        result = train(to_config(cfg))
    except run_faults() as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fault = str(err)
    if fault is not None:  # outside the except block: the failed run's frames (and its loader workers) are freed
        report_fault(fault)
    shutdown_and_exit(result.env, exit_code(result))  # torchrun ranks leave here (clean gloo/NCCL exit)
    if exit_code(result):
        sys.exit(exit_code(result))


def main() -> None:
    from ..distributed import lifecycle

    stop = lifecycle.begin()  # first: a stop signal during start-up ends in exit 75; a rank dies with its launcher
    if sys.argv[1:2] == ["plot"]:  # a subcommand, before Hydra reads the command line as overrides
        from ..metrics.plot import main as plot_main

        sys.exit(plot_main(sys.argv[2:], prog="isaac-train plot"))
    if not CONFIG_DIR.is_dir():
        sys.exit(f"isaac-train: configs not found at {CONFIG_DIR}; install the package from a clone (pip install -e .)")
    if {"-h", "--help"} & set(sys.argv[1:]):  # our page, not Hydra's (which is --hydra-help)
        from .help import help_page

        print(help_page(CONFIG_DIR, sys.argv[1:]))
        sys.exit(0)
    register_schema()
    sys.argv[1:] = quote_shard_patterns(sys.argv[1:])
    check_command_line(sys.argv[1:])
    lifecycle.exit_before_training(stop, "reading the configuration")
    _main()


if __name__ == "__main__":
    main()
