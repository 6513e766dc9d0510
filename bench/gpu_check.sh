#!/usr/bin/env bash
# The GPU path end to end on one machine, one JSON line per step (see bench/gpu_check.py).
#   bench/gpu_check.sh [--out DIR] [--assets DIR]   on a GPU machine: `ray start`, then every step on CUDA
#   bench/gpu_check.sh --cpu [--out DIR]            the same steps, tiny, on CPU in a local Ray (no `ray start`)
# PYTHON picks the interpreter (default python3). Exits non-zero on the first failed step.
exec "$(dirname "$0")/with_ray.sh" bench/gpu_check.py "$@"
