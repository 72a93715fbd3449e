#!/usr/bin/env bash
# Test-split scores of settings chosen on dev: eval + report on each tuning run, then etagent-compare
# against the calibration sweep with the setting as --target.
#   bash experiments/sweeps/tuning/test_eval.sh <calibration sweep dir> <tuning OUT> <name> '<override ...>' [result name]
# e.g. ... slen025 'reward.sigma_len=0.25' sigma_len025  -> experiments/results/calibration_sweep/tuned_sigma_len025
set -euo pipefail
cd "$(dirname "$0")/../../.."
SWEEP=$(realpath "$1"); TUNE=$(realpath "$2"); NAME=$3; OV=$4; PY=${PY:-.venv/bin/python}
OUT=$(realpath -m "${TEST_OUT:-multirun/tuning_test}")/et_agent_$NAME
for s in ${SEEDS:-0 1 2}; do
  mkdir -p "$OUT"
  "$PY" -m etagent logger=none experiment=et_agent seed="$s" $OV init_from="$TUNE/$NAME/seed_$s" \
    'init_stages=[world,seed,flywheel,ase,rl]' hydra.run.dir="$OUT/seed_$s" > "$OUT/seed_$s.log" 2>&1
done
target="experiment=et_agent,$(echo $OV | tr ' ' ',')"
"$PY" -m etagent.report.compare "$SWEEP" "$OUT" --target "$target" --out "${RESULTS:-experiments/results/calibration_sweep}/tuned_${5:-$NAME}"
