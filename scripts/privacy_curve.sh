#!/usr/bin/env bash
# The privacy-utility curve (README "Privacy"): one-shot task arithmetic and FedAvg (10 rounds of 1
# local epoch) at ε in EPSILONS under DP-SGD at every hospital, per seed, on the real multi-task preset.
# ε = ∞ are the non-private runs of the same preset and seeds (scripts/headline.sh; linked if present).
#
#   bash scripts/privacy_curve.sh                            # ε 1 3 8, seeds 0 1 2, into results/privacy/
#   SEEDS=0 EPSILONS=8 bash scripts/privacy_curve.sh          # one point
#   EXTRA="lora.freeze_a=true" OUT=results/privacy-ffa bash scripts/privacy_curve.sh   # FFA-LoRA
#
# Ends with scripts/compare.py OUT/<preset> (report.md with an ε column, privacy_utility.png).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-results/privacy}"
DATA_ROOT="${DATA_ROOT:-../shared/data/medmnist}"
SEEDS="${SEEDS:-0 1 2}"
EPSILONS="${EPSILONS:-8 3 1}"
PRESET="${PRESET:-real_multitask}"
HEADLINE="${HEADLINE:-results/headline}"
FEDAVG_ROUNDS="${FEDAVG_ROUNDS:-10}"
STRATEGIES="${STRATEGIES:-one_shot fedavg}"
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"

run() {  # run FOLDER OVERRIDES...: one experiment, skipped when FOLDER already completed
  local folder="$1"; shift
  if grep -q '"status": "completed"' "$folder/results.json" 2>/dev/null; then
    echo "privacy_curve: $folder already completed, kept"; return 0
  fi
  "$PYTHON" scripts/run.py "hydra.run.dir=$folder" "data.root=$DATA_ROOT" quiet=true "$@" "${EXTRA_ARGS[@]}" \
    || echo "privacy_curve: FAILED $folder (kept; compare.py skips it)"
}

for seed in $SEEDS; do
  for strategy in $STRATEGIES; do  # ε = ∞: the non-private run of the same preset and seed
    source="$HEADLINE/$PRESET/seed$seed/$strategy"
    if [ -z "${EXTRA:-}" ] && [ -f "$source/results.json" ] && [ ! -e "$OUT/$PRESET/seed$seed/eps-inf/$strategy" ]; then
      mkdir -p "$OUT/$PRESET/seed$seed/eps-inf"
      ln -s "$(realpath "$source")" "$OUT/$PRESET/seed$seed/eps-inf/$strategy"
    fi
  done
  for epsilon in $EPSILONS; do
    base="$OUT/$PRESET/seed$seed/eps$epsilon"
    for strategy in $STRATEGIES; do
      if [ "$strategy" = fedavg ]; then
        run "$base/fedavg" "experiment=$PRESET" "seed=$seed" privacy=dp "privacy.epsilon=$epsilon" \
          strategy=fedavg "strategy.rounds=$FEDAVG_ROUNDS" train.local_epochs=1
      else
        run "$base/$strategy" "experiment=$PRESET" "seed=$seed" privacy=dp "privacy.epsilon=$epsilon" "strategy=$strategy"
      fi
    done
  done
done
"$PYTHON" scripts/compare.py "$OUT/$PRESET" --quiet
