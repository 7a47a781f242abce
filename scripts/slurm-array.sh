#!/bin/bash
# Run a suite over a Slurm job array: every array task takes one balanced share of the suite's
# cells, and all tasks write one run directory, RESULTS/SUITE/RUN_ID, on a shared file system.
#
#   sbatch --array=0-7 scripts/slurm-array.sh suites/default.yaml [extra `run` flags, e.g. --quick]
#   dlm-harness status results/<suite>/<array job id>
#
# Environment: RUN_ID (default: the array job id) and SHARDS (default: the array's task count): set
# both to resubmit a dead task into the same run, e.g. RUN_ID=1234 SHARDS=8 sbatch --array=3 ...; RESULTS (default: results), GPUS_PER_JOB (default 1; above 1 each task runs torchrun with that
# many ranks), DLM_HARNESS (default: dlm-harness on PATH).
#SBATCH --job-name=dlm-harness
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail

SUITE=${1:?usage: sbatch --array=0-N scripts/slurm-array.sh SUITE [run flags]}
shift
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-(N-1)}"
COUNT=${SHARDS:-${SLURM_ARRAY_TASK_COUNT:-$((SLURM_ARRAY_TASK_MAX + 1))}}
RUN_ID=${RUN_ID:-${SLURM_ARRAY_JOB_ID}}
RESULTS=${RESULTS:-results}
GPUS=${GPUS_PER_JOB:-1}
HARNESS=${DLM_HARNESS:-dlm-harness}

ARGS=(run "$SUITE" --results "$RESULTS" --run-id "$RUN_ID" --shard "$SLURM_ARRAY_TASK_ID/$COUNT" --no-progress "$@")
if [ "$GPUS" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node="$GPUS" "$(command -v "$HARNESS")" "${ARGS[@]}"
fi
exec "$HARNESS" "${ARGS[@]}"
