#!/usr/bin/env bash
# Run a bench script on one machine: `ray start` first (its address passed as --address auto), unless --cpu,
# which runs in a local Ray. Used by bench/gpu_check.sh and bench/llm_quality.sh.
#   bench/with_ray.sh bench/SCRIPT.py [--cpu] [ARGS...]
# PYTHON picks the interpreter (default python3). Exits with the script's status.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
script=$1
shift
address=()
if [[ " $* " != *" --cpu "* ]]; then
  # Ray 2.60 turns token auth on for clusters started with `ray start`; this one is private to the machine.
  export RAY_AUTH_MODE=disabled
  "$PYTHON" -m ray.scripts.scripts start --head --include-dashboard=false --disable-usage-stats >&2
  trap '"$PYTHON" -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true' EXIT
  address=(--address auto)
fi
"$PYTHON" "$script" "$@" "${address[@]}"
