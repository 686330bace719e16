"""`isaac-data demo OUT_DIR`: make the synthetic shapes dataset the CPU demo trains on
(isaac_train/data/demo.py, which the trainer also calls for `data.demo=true`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isaac_train.data.demo import make_demo_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line of `isaac-data demo`."""
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where train/, eval/ and the answers go")
    parser.add_argument("--train", type=int, default=2000, help="training samples (2000)")
    parser.add_argument("--eval", type=int, default=200, help="evaluation samples (200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    parser.add_argument("--image-size", type=int, default=64, help="image width and height in pixels (64)")
    parser.add_argument("--overwrite", action="store_true", help="remake the data even if it exists")


def run(args: argparse.Namespace) -> int:
    """Make the dataset and print where it is."""
    try:
        info = make_demo_dataset(args.out_dir, train=args.train, eval=args.eval, seed=args.seed,
                                 image_size=args.image_size, overwrite=args.overwrite)
    except ValueError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    verb = "reused" if info["reused"] else f"made in {info['seconds']:.1f} s"
    print(f"demo: {info['train']} train + {info['eval']} eval samples ({info['image_size']}px) {verb}: "
          f"{info['train_dir']}, {info['eval_dir']}, answers in {info['eval_answers']}")
    print(f"question types (train): {info['types']['train']}")
    return 0
