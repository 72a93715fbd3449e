#!/usr/bin/env bash
# The calibration sweep (issue 14): ET-Agent against its baselines on one seed agent, >= 3 seeds.
#
#   bash experiments/sweeps/calibration.sh <run dir with finished world + seed stages>
#   SEEDS="0 1 2" JOBS=1 SWEEP_DIR=multirun/calibration RESULTS=experiments/results/calibration_sweep
#
# `seed` varies every calibration stage (flywheel sampling, ASE data order, Pareto selection, RL
# rollouts); the seed agent is shared (`init_from`), so the seed agent row is one point. To vary
# the seed agent too, run this once per seed-agent run (`python -m etagent 'stages=[world,seed,eval]'
# seed=K`) and pass all sweep dirs to etagent-compare.
#
# Paired design, so a difference is the ablated component and not another draw of the data:
#   phase 1  experiment=et_agent   seed=s   full flywheel -> ASE -> Pareto + efficiency-reward RL
#            experiment=rft_only   seed=s   no flywheel edits (the seed's own correct samples) -> ASE
#   phase 2  experiment=grpo_correctness, no_pareto   reuse et_agent's flywheel + ASE of the same seed
#            experiment=no_flywheel                   reuses rft_only's flywheel + ASE of the same seed
#            (no_flywheel is rft_only + RL: its flywheel and ASE stages are the same computation)
# JOBS>1 runs that many jobs at once: numbers are unchanged (step budgets; set OMP_NUM_THREADS=1
# per job on a 2-core machine), only wall times stop being comparable.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=$(realpath "${1:?usage: experiments/sweeps/calibration.sh <run dir with finished world + seed>}")
SEEDS=${SEEDS:-0 1 2}
JOBS=${JOBS:-1}
OUT=$(realpath -m "${SWEEP_DIR:-multirun/calibration}")
RESULTS=${RESULTS:-experiments/results/calibration_sweep}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { bash scripts/setup.sh; }
export PY OUT

# one job: <experiment> <seed> <init_from> <init_stages>; an existing run dir resumes (same overrides)
one() {
  local exp=$1 seed=$2 from=$3 stages=$4 dir="$OUT/$1/seed_$2" resume=false
  [ -f "$dir/config.yaml" ] && resume=true
  mkdir -p "$dir"
  "$PY" -m etagent logger=none experiment="$exp" seed="$seed" init_from="$from" "init_stages=$stages" \
    resume=$resume hydra.run.dir="$dir" > "$dir.log" 2>&1 \
    && echo "[calibration] done  $exp seed=$seed" || { echo "[calibration] FAILED $exp seed=$seed (see $dir.log)"; return 1; }
}
export -f one

phase() { xargs -P "$JOBS" -L 1 bash -c 'one "$@"' _; }

for s in $SEEDS; do
  echo "et_agent $s $BASE [world,seed]"
  echo "rft_only $s $BASE [world,seed]"
done | phase
for s in $SEEDS; do
  echo "grpo_correctness $s $OUT/et_agent/seed_$s [world,seed,flywheel,ase]"
  echo "no_pareto $s $OUT/et_agent/seed_$s [world,seed,flywheel,ase]"
  echo "no_flywheel $s $OUT/rft_only/seed_$s [world,seed,flywheel,ase]"
done | phase
"$PY" -m etagent.report.compare "$OUT" --out "$RESULTS"
