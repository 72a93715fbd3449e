#!/usr/bin/env bash
# Dev screening of the calibration knobs (issue 14; experiments/results/calibration_sweep/NOTES.md).
#   bash experiments/sweeps/tuning/dev_screen.sh <calibration sweep dir>   (SWEEP_DIR of calibration.sh)
#   NAMES="slen025 s2sigma0" JOBS=2 OUT=multirun/tuning
# Each setting is one override on experiment=et_agent, seeds 0 1 2. RL settings reuse the sweep's
# et_agent flywheel + ASE of the same seed; flywheel settings redo flywheel + ASE. Scores: the
# curriculum's own dev evaluation after each RL stage (metrics/rl_stage{1,2}_dev.jsonl);
# `python experiments/sweeps/tuning/dev_table.py <OUT> <sweep>` tabulates them.
set -euo pipefail
cd "$(dirname "$0")/../../.."
SWEEP=$(realpath "${1:?usage: dev_screen.sh <calibration sweep dir>}")
export OUT=$(realpath -m "${OUT:-multirun/tuning}") SWEEP PY=${PY:-.venv/bin/python}
declare -A OV STG
OV[slen025]="reward.sigma_len=0.25";                     STG[slen025]=rl
OV[s2sigma0]="schedule.stages.1.sigma_len=0 schedule.stages.1.sigma_tool=0"; STG[s2sigma0]=rl
OV[one_stage]="schedule=one_stage";                      STG[one_stage]=rl
OV[steps8]="schedule.stages.0.steps=8 schedule.stages.1.steps=8"; STG[steps8]=rl
OV[select16]="schedule.stages.0.select=16 schedule.stages.1.select=16"; STG[select16]=rl
OV[group16]="rl.group_size=16 rl.prompts_per_step=4";    STG[group16]=rl
OV[fwtemp07]="flywheel.temperature=0.7";                 STG[fwtemp07]=fw
OV[mpq1]="flywheel.max_per_question=1";                  STG[mpq1]=fw
mkdir -p "$OUT"; declare -p OV STG > "$OUT/settings.sh"
one() {
  source "$OUT/settings.sh"
  local name=$1 s=$2 d="$OUT/$1/seed_$2" init='[world,seed,flywheel,ase]' resume=false
  [ "${STG[$name]}" = fw ] && init='[world,seed]'
  [ -f "$d/config.yaml" ] && resume=true
  mkdir -p "$OUT/$name"
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m etagent logger=none experiment=et_agent seed="$s" ${OV[$name]} \
    init_from="$SWEEP/et_agent/seed_$s" "init_stages=$init" 'stages=[world,seed,flywheel,ase,rl]' \
    resume=$resume hydra.run.dir="$d" > "$d.log" 2>&1 && echo "done $name $s" || echo "FAILED $name $s (see $d.log)"
}
export -f one
for n in ${NAMES:-slen025 s2sigma0 one_stage steps8 select16 group16 fwtemp07 mpq1}; do
  for s in ${SEEDS:-0 1 2}; do echo "$n $s"; done
done | xargs -P "${JOBS:-2}" -L 1 bash -c 'one "$@"' _
