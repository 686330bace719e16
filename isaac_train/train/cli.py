"""`isaac-train [hydra overrides]` (also `python -m isaac_train.train` and under torchrun).

    isaac-train                                   # the demo_cpu recipe
    isaac-train recipe=sft_lora model.pretrained=/ckpt/Isaac-0.1 data.train_shards=/data/sft run.output_dir=/runs/a
    isaac-train recipe=sft_full --cfg job         # print the resolved config and exit
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ..config.schema import Config, validate

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def register_schema() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


def to_config(cfg: DictConfig) -> Config:
    """Typed, validated Config from Hydra's composition (raises ConfigError naming the key)."""
    config = OmegaConf.to_object(cfg)
    validate(config)
    return config


def compose_config(overrides: list[str] | None = None) -> Config:
    """Compose configs/train.yaml with overrides, as the command line would (tests, notebooks, dry runs)."""
    register_schema()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return to_config(compose("train", overrides=list(overrides or [])))


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from ..distributed.setup import shutdown_and_exit
    from .loop import exit_code, train

    result = train(to_config(cfg))
    shutdown_and_exit(result.env, exit_code(result))  # torchrun ranks leave here (clean gloo/NCCL exit)
    if exit_code(result):
        sys.exit(exit_code(result))


def main() -> None:
    if not CONFIG_DIR.is_dir():
        sys.exit(f"isaac-train: configs not found at {CONFIG_DIR}; install the package from a clone (pip install -e .)")
    register_schema()
    _main()


if __name__ == "__main__":
    main()
