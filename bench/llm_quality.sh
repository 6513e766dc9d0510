#!/usr/bin/env bash
# The LLM side on one GPU machine, one JSON line per step (see bench/llm_quality.py).
#   bench/llm_quality.sh [--out DIR] [--llm-epochs N] [--seeds N]   on a GPU machine: `ray start`, every step on CUDA
#   bench/llm_quality.sh --cpu [--mined RUN] [--out DIR]            the same steps, tiny, on CPU in a local Ray
# PYTHON picks the interpreter (default python3). Exits non-zero on the first failed step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
address=()
if [[ " $* " != *" --cpu "* ]]; then
  export RAY_AUTH_MODE=disabled
  "$PYTHON" -m ray.scripts.scripts start --head --include-dashboard=false --disable-usage-stats >&2
  trap '"$PYTHON" -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true' EXIT
  address=(--address auto)
fi
"$PYTHON" bench/llm_quality.py "$@" "${address[@]}"
