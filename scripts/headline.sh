#!/usr/bin/env bash
# The headline comparison (docs/results.md): every merge strategy against FedAvg on real MedMNIST
# with the pretrained EfficientNet-Lite0, per preset and seed:
#   one_shot task arithmetic (+ TIES, DARE-TIES, KnOTS, FedIT re-merged from the same adapters:
#   train once, merge many), MedForge Fusion and Mixture (progressive and one-shot), FedAvg for
#   10 rounds of 1 local epoch (rows after R = 1, 3, 10), and the centralised (pooled-data) reference;
#   the hospitals' own adapters (local) come with every one-shot run.
#
#   bash scripts/headline.sh                          # 3 seeds, both presets, into results/headline/
#   SEEDS=0 PRESETS=real_multitask bash scripts/headline.sh   # a quick subset
#   SEEDS="1 2" STRATEGIES="one_shot fedavg centralised" bash scripts/headline.sh   # skip MedForge
#   DATA_ROOT=/data/medmnist OUT=results/mine bash scripts/headline.sh
#
# Each preset ends with `scripts/compare.py` writing OUT/<preset>/report.md, report.csv and the plots.
# A run that fails keeps its folder (status: failed) and the others go on; compare.py skips it.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-results/headline}"
DATA_ROOT="${DATA_ROOT:-../shared/data/medmnist}"
SEEDS="${SEEDS:-0 1 2}"
PRESETS="${PRESETS:-real_multitask real_multicenter}"
REMERGE="${REMERGE:-ties dare_ties knots fedit}"
FEDAVG_ROUNDS="${FEDAVG_ROUNDS:-10}"
STRATEGIES="${STRATEGIES:-one_shot medforge fedavg centralised}"

wanted() { [[ " $STRATEGIES " == *" $1 "* ]]; }

run() {  # run FOLDER OVERRIDES...: one experiment, skipped when FOLDER already completed
  local folder="$1"; shift
  if grep -q '"status": "completed"' "$folder/results.json" 2>/dev/null; then
    echo "headline: $folder already completed, kept"; return 0
  fi
  "$PYTHON" scripts/run.py "hydra.run.dir=$folder" "data.root=$DATA_ROOT" quiet=true "$@" \
    || echo "headline: FAILED $folder (kept; compare.py skips it)"
}

for preset in $PRESETS; do
  for seed in $SEEDS; do
    base="$OUT/$preset/seed$seed"
    if wanted one_shot; then
      run "$base/one_shot" "experiment=$preset" "seed=$seed" strategy=one_shot
      if [ -f "$base/one_shot/results.json" ]; then
        "$PYTHON" scripts/remerge.py "$base/one_shot" --merge $REMERGE --quiet \
          || echo "headline: remerge failed for $base/one_shot"
      fi
    fi
    wanted medforge && run "$base/medforge" "experiment=$preset" "seed=$seed" strategy=medforge
    wanted fedavg && run "$base/fedavg" "experiment=$preset" "seed=$seed" strategy=fedavg "strategy.rounds=$FEDAVG_ROUNDS" train.local_epochs=1
    wanted centralised && run "$base/centralised" "experiment=$preset" "seed=$seed" strategy=centralised
  done
  "$PYTHON" scripts/compare.py "$OUT/$preset" --fedavg-rounds 1 3 --quiet
done
