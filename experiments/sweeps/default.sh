#!/usr/bin/env bash
# The default sweep: ET-Agent vs its main baselines/ablations, 2 seeds each, at preset=fast
# (about 4 minutes a run on a 2-core CPU, ~35 minutes in all), then the aggregate table.
#   bash experiments/sweeps/default.sh            # results in multirun/<date>/compare/
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
SWEEP_DIR=${SWEEP_DIR:-multirun/default_sweep}
.venv/bin/python -m etagent -m preset=fast logger=none \
  experiment=et_agent,grpo_correctness,no_pareto,rft_only seed=0,1 \
  hydra.sweep.dir="$SWEEP_DIR"
.venv/bin/python -m etagent.report.compare "$SWEEP_DIR" --out experiments/results/default_sweep
