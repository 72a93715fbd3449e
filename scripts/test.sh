#!/usr/bin/env bash
# README command two: set up (idempotent) and run the test suite.
# The main suite runs in .venv; the tests against the real verl package (tests/test_verl_pkg_*.py)
# run in .venv-verl (scripts/setup_verl.sh: verl 0.9.1 pins an older transformers). With
# arguments, only the main venv's pytest runs, with those arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
bash scripts/setup_verl.sh
.venv/bin/python -m pytest -q
exec .venv-verl/bin/python -m pytest -q tests/test_verl_pkg_*.py
