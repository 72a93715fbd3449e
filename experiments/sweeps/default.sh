#!/usr/bin/env bash
# The default sweep: ET-Agent's RL against its main baselines on ONE shared seed agent.
#
#   bash experiments/sweeps/default.sh <finished main-job run dir>
#
# Every job reuses (copies) the finished stages of the given run (`init_from`), so the sweep
# varies only what it compares and fits a 2-core CPU (~35 minutes in all):
#   * RL ablations reuse world, seed, flywheel and ASE: experiment=et_agent (efficiency reward,
#     Pareto), grpo_correctness (correctness-only reward), no_pareto (random selection);
#   * rft_only reuses world and seed (its flywheel keeps unedited correct samples; no RL).
# `seed` varies the calibration stages' randomness (sampling, selection, data order) on the
# shared seed agent. Results: experiments/results/default_sweep/compare.{md,csv,json}, radar.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=$(realpath "${1:?usage: experiments/sweeps/default.sh <finished main-job run dir>}")
SEEDS=${SEEDS:-0,1}
OUT=${SWEEP_DIR:-multirun/default_sweep}
bash scripts/setup.sh
.venv/bin/python -m etagent -m logger=none init_from="$BASE" 'init_stages=[world,seed,flywheel,ase]' \
  experiment=et_agent,grpo_correctness,no_pareto seed="$SEEDS" hydra.sweep.dir="$OUT/rl"
.venv/bin/python -m etagent -m logger=none init_from="$BASE" 'init_stages=[world,seed]' \
  experiment=rft_only seed="$SEEDS" hydra.sweep.dir="$OUT/rft"
.venv/bin/python -m etagent.report.compare "$OUT/rl" "$OUT/rft" --out experiments/results/default_sweep
