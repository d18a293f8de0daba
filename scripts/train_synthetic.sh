#!/usr/bin/env bash
# The synthetic end-to-end run (configs/synthetic_run.yaml): world → all stages → pipeline → report.
#   scripts/train_synthetic.sh [OUT [PROFILE [KEY=VALUE ...]]]    e.g. scripts/train_synthetic.sh runs/synthetic quick
# Re-running it continues an interrupted run. On a few CPU cores shared with other jobs, one thread per
# process is faster than several (OMP_NUM_THREADS=1 unless set).
set -euo pipefail
out=${1:-runs/synthetic}
profile=${2:-}
shift $(( $# < 2 ? $# : 2 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python -m emodiff synthetic-run --out "$out" ${profile:+--profile "$profile"} --set "$@"
