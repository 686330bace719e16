"""`isaac-export CHECKPOINT OUTPUT_DIR`: a training checkpoint of any strategy -> a verified Hugging Face directory.

    isaac-export /runs/a /exports/a                      # latest checkpoint, LoRA merged, the base's layout/dtype
    isaac-export /runs/a/checkpoints/step_0001000 /exports/a --dtype bf16 --layout 0.2
    isaac-export /runs/lora /exports/lora-adapter --adapter
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isaac-export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="run directory, its checkpoints/ directory, or checkpoints/step_N")
    parser.add_argument("output_dir")
    parser.add_argument("--layout", choices=["0.1", "0.2"], default=None,
                        help="weight names: Isaac-0.1 flat or Isaac-0.2 nested (default: the base checkpoint's)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="weights' dtype (default: the base checkpoint's, fp32 for built-in sizes)")
    parser.add_argument("--adapter", action="store_true",
                        help="LoRA runs: write a PEFT adapter for the base instead of merged weights")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)")
    parser.add_argument("--no-verify", action="store_true", help="skip the reload and logit comparison")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)

    from . import ExportVerificationError, export_checkpoint

    try:
        export_checkpoint(args.checkpoint, args.output_dir, layout=args.layout, dtype=args.dtype,
                          lora="adapter" if args.adapter else "merge", max_shard_size=args.max_shard_size,
                          verify=not args.no_verify, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError, ExportVerificationError) as err:
        print(f"isaac-export: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
