#!/usr/bin/env bash
# Create .venv-mlserver: MLServer 1.7.1 plus ONNX Runtime, for the real-server integration tests and
# benchmarks/bench_http.py. Its own venv because MLServer's pins clash with nnseal's. uvloop < 0.22:
# newer uvloop breaks MLServer's parallel-worker mode (the tests also turn that mode off). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-mlserver/bin/python ]; then "$PY" -m venv .venv-mlserver; fi
if ! .venv-mlserver/bin/python -c "import mlserver, onnxruntime, numpy, sys; sys.exit(mlserver.__version__ != '1.7.1')" 2>/dev/null; then
  .venv-mlserver/bin/pip install --quiet --upgrade pip
  .venv-mlserver/bin/pip install --quiet 'mlserver==1.7.1' onnxruntime numpy 'uvloop<0.22'
fi
