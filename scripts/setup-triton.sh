#!/usr/bin/env bash
# Create .venv-triton: NVIDIA PyTriton 0.7.0 (bundles Triton Inference Server 2.51.0, which runs on CPU)
# plus ONNX Runtime, for the second real-server integration tests (tests/test_http_triton.py). Its own
# venv because PyTriton needs numpy < 2 (nnseal's venv has numpy 2). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PINS=(nvidia-pytriton==0.7.0 onnxruntime==1.32.0 numpy==1.26.4)
if [ ! -x .venv-triton/bin/python ]; then "$PY" -m venv .venv-triton; fi
if ! .venv-triton/bin/python - "${PINS[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(any(version(name) != want for name, want in (pin.split("==") for pin in sys.argv[1:])))
PY
then
  .venv-triton/bin/pip install --quiet --upgrade pip
  .venv-triton/bin/pip install --quiet "${PINS[@]}"
fi
