#!/usr/bin/env bash
# One-shot, idempotent set-up: creates .venv, installs the CPU torch wheel first
# when no GPU is present (a loose torch spec would otherwise pull a multi-GB CUDA
# build), then the package with its dev and slurm extras (tests/test_launcher.py runs a
# sweep through hydra-submitit-launcher). Re-running is a no-op when
# pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${ETAGENT_VENV:-.venv}
EXTRAS=${ETAGENT_EXTRAS:-dev,slurm}  # scripts/setup_verl.sh: .venv-verl with verl,dev
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.etagent-setup-stamp"
WANT="$( (echo "$EXTRAS"; cat pyproject.toml scripts/setup.sh) | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] no GPU found: installing the CPU torch wheel (torch==2.13.0)"
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  fi
fi
echo "[setup] installing etagent[$EXTRAS] into $VENV"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
echo "$WANT" > "$STAMP"
