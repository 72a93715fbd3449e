#!/usr/bin/env bash
# README command two: set up (idempotent) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
