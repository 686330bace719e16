# Environment presets sourced by launch/torchrun.sh and launch/slurm/train.sbatch (edit, or export before).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}              # CPU threads per rank (data workers use 1 each)
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a failed collective ends the job
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}                     # INFO to debug topology / network problems
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}  # tokenizers inside loader workers: no thread storm
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}                # checkpoints come from disk, never from the hub
