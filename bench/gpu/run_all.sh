#!/usr/bin/env bash
# Issue 24's GPU performance run, one shot, <= 8 minutes on one H200 (docs/results/gpu.md says how to call it
# through the device tool). Results: $OUT/gpu_results.{json,md} + gpu_log.txt ($OUT unset: bench/gpu/out/).
#   bash bench/gpu/run_all.sh [--budget 450] [--parts ntk,tensor] [--smoke]
set -u
cd "$(dirname "$0")/../.."
# the project venv when there is one (a developer machine); else the image's python3 (the GPU machine)
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" bench/gpu/run_all.py "$@"
