#!/usr/bin/env bash
# Second venv for the verl hand-off tests (.venv-verl): verl 0.9.1 pins transformers<5.11 and
# tensordict<=0.10, which the main venv does not meet. setup.sh's recipe (CPU torch wheel first,
# idempotent) with etagent[verl,dev].
set -euo pipefail
cd "$(dirname "$0")/.."
ETAGENT_VENV=${ETAGENT_VERL_VENV:-.venv-verl} ETAGENT_EXTRAS=verl,dev exec bash scripts/setup.sh
