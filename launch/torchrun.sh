#!/usr/bin/env bash
# One node: torchrun over every visible GPU (or NPROC processes), Hydra overrides passed through.
#   launch/torchrun.sh recipe=sft_lora model.pretrained=/ckpt/Isaac-0.1 data.train_shards=/data/sft
# NPROC: processes (default: the GPU count from nvidia-smi, else 1). With NPROC > 1 and no strategy= given,
# strategy=ddp is added. PYTHON: the interpreter (default: python). DRY_RUN=1: print the command, run nothing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=/dev/null
source "$here/env.sh"
if [ -z "${NPROC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then NPROC=$(nvidia-smi -L | grep -c '^GPU'); else NPROC=1; fi
fi
args=("$@")
if [ "$NPROC" -gt 1 ] && ! printf '%s\n' "${args[@]+"${args[@]}"}" | grep -q '^strategy='; then
  args+=("strategy=ddp")
fi
cmd=("${PYTHON:-python}" -m torch.distributed.run --standalone --nproc_per_node "$NPROC"
     -m isaac_train.train "${args[@]+"${args[@]}"}")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
