#!/usr/bin/env bash
# README command one: set up (idempotent) and run the main job on the embedded default.
# Extra arguments are Hydra overrides, e.g. `bash scripts/run.sh preset=smoke`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m etagent "$@"
