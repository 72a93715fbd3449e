#!/usr/bin/env bash
# The mechanism study (issue 22): every group on 5 seeds, each seed with its own world and seed
# agent, paired by seed, then etagent-compare's paired differences against plain GRPO.
#
#   bash experiments/sweeps/mechanism.sh
#   PRESET=mechanism SEEDS="0 1 2 3 4" JOBS=1 THREADS=1 SWEEP_DIR=multirun/mechanism \
#   RESULTS=experiments/results/mechanism_sweep REFERENCE=plain_grpo TARGET=et_agent \
#   STUDY_GROUPS="et_agent et_agent_released plain_grpo no_flywheel no_pareto one_stage" \
#   MIN_PAIRS=5 EXTRA="" COMPARE_ARGS=""   bash experiments/sweeps/mechanism.sh
#
# A group is an experiment (conf/experiment/<group>.yaml); PRESET=none runs the embedded default.
# Per seed s, runs in $SWEEP_DIR/<name>/seed_<s> (log: seed_<s>.log beside it):
#   phase 1  seed_agent   preset=$PRESET 'stages=[world,seed,eval]' seed=s: its own world and seed agent
#   phase 2  et_agent     from seed_agent [world,seed]: flywheel -> ASE -> RL
#            plain_grpo   from seed_agent [world,seed]: RL from the seed agent (no flywheel, no ASE)
#            rft_only     from seed_agent [world,seed] (only when no_flywheel is a group): RFT data -> ASE, no eval
#            any other group that phase 3 does not name: from seed_agent [world,seed]
#   phase 3  et_agent_released, et_agent_sigma0,     from et_agent [world,seed,flywheel,ase]: RL only
#            no_pareto, one_stage
#            no_flywheel                               from rft_only [world,seed,flywheel,ase]: RL only
# Reusing a stage is sound because the groups differ only after it (their experiment files
# change RL settings, or the flywheel for no_flywheel/rft_only); init_from copies finished stages.
# An existing run dir resumes (resume=<dir>: finished stages are skipped, an interrupted stage
# continues from its checkpoint, a changed config stops with the differing keys); a finished
# one (summary.json) is skipped. JOBS jobs run at once, each with THREADS torch/OMP threads
# (numbers do not depend on it: every budget is a step budget). EXTRA: overrides added to every
# job (e.g. to shrink a test); COMPARE_ARGS: extra etagent-compare options; DRY_RUN=1 prints each
# phase's jobs and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
PRESET=${PRESET:-mechanism}
SEEDS=${SEEDS:-0 1 2 3 4}
STUDY_GROUPS=${STUDY_GROUPS:-et_agent et_agent_released plain_grpo no_flywheel no_pareto one_stage}
REFERENCE=${REFERENCE:-plain_grpo}
TARGET=${TARGET:-et_agent}
JOBS=${JOBS:-1}
THREADS=${THREADS:-1}
OUT=$(realpath -m "${SWEEP_DIR:-multirun/mechanism}")
RESULTS=${RESULTS:-experiments/results/mechanism_sweep}
EXTRA=${EXTRA:-}
COMPARE_ARGS=${COMPARE_ARGS:-}
MIN_PAIRS=${MIN_PAIRS:-5}   # DESIGN.md: the goals are decided on seeds 0-4 only (fewer: an interim report)
DRY_RUN=${DRY_RUN:-0}
PY=${PY:-.venv/bin/python}

die() { echo "[mechanism] error: $*" >&2; exit 2; }
has() { local x=$1; shift; for y in "$@"; do [ "$x" = "$y" ] && return 0; done; return 1; }
read -r -a groups <<< "$STUDY_GROUPS"
[ ${#groups[@]} -gt 0 ] || die "STUDY_GROUPS is empty"
[ "$PRESET" = none ] || [ -f "conf/preset/$PRESET.yaml" ] || die "preset '$PRESET' not found (conf/preset/$PRESET.yaml); PRESET=none runs the embedded default"
need=("${groups[@]}")
if has no_flywheel "${groups[@]}"; then need+=(rft_only); fi
for g in "${need[@]}"; do
  [ -f "conf/experiment/$g.yaml" ] || die "experiment '$g' not found (conf/experiment/$g.yaml): add it or leave it out of STUDY_GROUPS"
done
has "$REFERENCE" "${groups[@]}" || die "REFERENCE=$REFERENCE is not in STUDY_GROUPS ($STUDY_GROUPS)"
has "$TARGET" "${groups[@]}" || die "TARGET=$TARGET is not in STUDY_GROUPS ($STUDY_GROUPS)"
if [ ! -x "$PY" ]; then bash scripts/setup.sh; fi
PRESET_OV=""
[ "$PRESET" = none ] || PRESET_OV="preset=$PRESET"
export PY OUT THREADS EXTRA PRESET_OV DRY_RUN

# one job: <name> <seed> <overrides...>; its dir is $OUT/<name>/seed_<seed>
one() {
  local name=$1 seed=$2 dir="$OUT/$1/seed_$2" resume=false t0=$SECONDS
  shift 2
  if [ "$DRY_RUN" = 1 ]; then echo "[mechanism] plan $name seed=$seed $PRESET_OV $* $EXTRA"; return 0; fi
  if [ -f "$dir/summary.json" ]; then echo "[mechanism] finished earlier: $name seed=$seed"; return 0; fi
  if [ -f "$dir/config.yaml" ]; then resume="$dir"; fi
  mkdir -p "$dir"
  # shellcheck disable=SC2086  # EXTRA and PRESET_OV are lists of overrides
  if OMP_NUM_THREADS=$THREADS ETAGENT_THREADS=$THREADS "$PY" -m etagent logger=none $PRESET_OV seed="$seed" "$@" \
      resume="$resume" hydra.run.dir="$dir" $EXTRA > "$dir.log" 2>&1; then
    echo "[mechanism] done  $name seed=$seed ($((SECONDS - t0)) s)"
  else
    echo "[mechanism] FAILED $name seed=$seed (see $dir.log)" >&2
    return 1
  fi
}
export -f one
phase() { xargs -r -P "$JOBS" -L 1 bash -c 'one "$@"' _; }

# phase 3 groups reuse the flywheel + ASE of another run of the same seed
declare -A REUSE=([et_agent_released]=et_agent [et_agent_sigma0]=et_agent [no_pareto]=et_agent [one_stage]=et_agent
                  [no_flywheel]=rft_only)

# Seed-major: every group of seed s finishes before seed s+1 starts, so a sweep cut short leaves
# whole paired seeds (the statistics use the seeds complete in both groups), not five lone seed agents.
for s in $SEEDS; do
  echo "seed_agent $s stages=[world,seed,eval]" | phase
  # DESIGN.md: the world checks are recomputed on every seed's own seed agent (world_checks.{json,md})
  if [ "$PRESET" = mechanism ]; then
    if [ "$DRY_RUN" = 1 ]; then echo "[mechanism] plan world_checks seed=$s"
    elif [ ! -f "$OUT/seed_agent/seed_$s/world_checks.json" ]; then
      OMP_NUM_THREADS=$THREADS "$PY" experiments/mechanism/world_checks.py "$OUT/seed_agent/seed_$s" \
        > "$OUT/seed_agent/seed_$s.world_checks.log" 2>&1 || die "world checks failed: $OUT/seed_agent/seed_$s.world_checks.log"
    fi
  fi
  base="init_from=$OUT/seed_agent/seed_$s init_stages=[world,seed]"
  {
    # rft_only only feeds no_flywheel (whose eval scores its ASE policy too): no eval of its own
    if has no_flywheel "${groups[@]}"; then echo "rft_only $s experiment=rft_only stages=[world,seed,flywheel,ase] $base"; fi
    for g in "${groups[@]}"; do
      if [ -z "${REUSE[$g]:-}" ]; then echo "$g $s experiment=$g $base"; fi
    done
  } | phase
  for g in "${groups[@]}"; do
    from=${REUSE[$g]:-}
    if [ -n "$from" ]; then echo "$g $s experiment=$g init_from=$OUT/$from/seed_$s init_stages=[world,seed,flywheel,ase]"; fi
  done | phase
done
[ "$DRY_RUN" = 1 ] && exit 0
dirs=()
for g in "${groups[@]}"; do dirs+=("$OUT/$g"); done
# shellcheck disable=SC2086
"$PY" -m etagent.report.compare "${dirs[@]}" --out "$RESULTS" --reference "$REFERENCE" --target "$TARGET" --min-pairs "$MIN_PAIRS" $COMPARE_ARGS
