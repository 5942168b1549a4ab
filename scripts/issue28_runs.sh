#!/usr/bin/env bash
# Issue 28's measurement: per preset and seed, one one-shot run (task arithmetic) whose hospitals also send
# their merge statistics (strategy.stats=[gram,fisher]), then TIES, RegMean and Fisher re-merged from the same
# stored adapters and statistics (train once, merge many).
#   bash scripts/issue28_runs.sh                                   # both presets, seeds 0 1 2
#   SEEDS=0 PRESETS=real_multitask bash scripts/issue28_runs.sh    # one run
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-results/issue28}"
DATA_ROOT="${DATA_ROOT:-../shared/data/medmnist}"
SEEDS="${SEEDS:-0 1 2}"
PRESETS="${PRESETS:-real_multitask real_multicenter}"
REMERGE="${REMERGE:-ties regmean fisher}"
for preset in $PRESETS; do
  for seed in $SEEDS; do
    folder="$OUT/$preset/seed$seed/one_shot"
    if ! grep -q '"status": "completed"' "$folder/results.json" 2>/dev/null; then
      "$PYTHON" scripts/run.py "hydra.run.dir=$folder" "data.root=$DATA_ROOT" quiet=true \
        "experiment=$preset" "seed=$seed" strategy=one_shot "strategy.stats=[gram,fisher]" \
        || { echo "issue28: FAILED $folder"; continue; }
    fi
    "$PYTHON" scripts/remerge.py "$folder" --merge $REMERGE --quiet || echo "issue28: remerge failed for $folder"
  done
done
