#!/usr/bin/env bash
# Second venv for the verl hand-off tests (.venv-verl): verl 0.9.1 pins transformers<5.11 and
# tensordict<=0.10, which the main venv does not meet. Same recipe as setup.sh: CPU torch wheel
# first (a loose torch spec would pull a multi-GB CUDA build), then etagent[verl,dev].
# Idempotent: a no-op while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${ETAGENT_VERL_VENV:-.venv-verl}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.etagent-setup-stamp"
WANT="$(cat pyproject.toml scripts/setup_verl.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "[setup_verl] no GPU found: installing the CPU torch wheel (torch==2.13.0)"
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  fi
fi
echo "[setup_verl] installing etagent[verl,dev] into $VENV"
"$VENV/bin/python" -m pip install -q -e ".[verl,dev]"
echo "$WANT" > "$STAMP"
