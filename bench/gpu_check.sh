#!/usr/bin/env bash
# The GPU path end to end on one machine, one JSON line per step (see bench/gpu_check.py).
#   bench/gpu_check.sh [--out DIR] [--assets DIR]   on a GPU machine: `ray start`, then every step on CUDA
#   bench/gpu_check.sh --cpu [--out DIR]            the same steps, tiny, on CPU in a local Ray (no `ray start`)
# PYTHON picks the interpreter (default python3). Exits non-zero on the first failed step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
address=()
if [[ " $* " != *" --cpu "* ]]; then
  # Ray 2.60 turns token auth on for clusters started with `ray start`; this one is private to the machine.
  export RAY_AUTH_MODE=disabled
  "$PYTHON" -m ray.scripts.scripts start --head --include-dashboard=false --disable-usage-stats >&2
  trap '"$PYTHON" -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true' EXIT
  address=(--address auto)
fi
"$PYTHON" bench/gpu_check.py "$@" "${address[@]}"
