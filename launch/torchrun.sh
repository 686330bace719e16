#!/usr/bin/env bash
# One node: torchrun over every visible GPU (or NPROC processes), Hydra overrides passed through.
#   launch/torchrun.sh recipe=sft_lora model.pretrained=/ckpt/Isaac-0.1 data.train_shards=/data/sft
# NPROC: processes (default: the GPU count from nvidia-smi, else 1). With NPROC > 1 and no strategy= given,
# strategy=ddp is added. PYTHON: the interpreter (default: python). DRY_RUN=1: print the command, run nothing.
# Preemption: SIGTERM, SIGINT or SIGUSR1 to this script, to torchrun or to every process of the job makes the
# ranks finish their step and checkpoint; torchrun waits STOP_GRACE_S (default 300) before it kills them, and
# this script then exits 75 (requeue) if the checkpoint was committed. A signal during start-up (before the first
# step) also ends in 75: the ranks leave at once, the last committed checkpoint stands. torchrun itself always
# exits 1 there.
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
# torchrun forwards these to the ranks (SIGUSR1 would otherwise kill torchrun and orphan them) and waits
# --shutdown-timeout seconds for them to checkpoint and exit before it sends SIGKILL.
cmd=("${PYTHON:-python}" -m torch.distributed.run --standalone --nproc_per_node "$NPROC"
     --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout "${STOP_GRACE_S:-300}"
     -m isaac_train.train "${args[@]+"${args[@]}"}")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
ISAAC_EXIT_FILE=$(mktemp "${TMPDIR:-/tmp}/isaac-exit.XXXXXX")
export ISAAC_EXIT_FILE
rm -f "$ISAAC_EXIT_FILE"  # rank 0 writes it only when it stops on a signal with a committed checkpoint
"${cmd[@]}" &
pid=$!
forwarded=0
forward() { if [ "$forwarded" = 0 ]; then forwarded=1; kill -USR1 "$pid" 2>/dev/null || true; fi; }
trap forward TERM INT USR1
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done  # wait returns early when a signal is trapped
wait "$pid" && rc=0 || rc=$?
if [ -s "$ISAAC_EXIT_FILE" ] && grep -q '"exit_code": 75' "$ISAAC_EXIT_FILE"; then
  echo "isaac-train: stopped on a signal ($(cat "$ISAAC_EXIT_FILE")); exit 75 = requeue" >&2
  rm -f "$ISAAC_EXIT_FILE"
  exit 75
fi
rm -f "$ISAAC_EXIT_FILE"
if [ "$forwarded" = 1 ] && [ "$rc" != 0 ]; then
  # signalled before any rank could record it (torchrun itself was still starting): nothing was trained since
  # the last committed checkpoint, which the requeued job resumes
  echo "isaac-train: signalled during start-up (torchrun exit $rc); exit 75 = requeue" >&2
  exit 75
fi
exit "$rc"
