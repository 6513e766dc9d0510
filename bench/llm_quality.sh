#!/usr/bin/env bash
# The LLM side on one GPU machine, one JSON line per step (see bench/llm_quality.py).
#   bench/llm_quality.sh [--out DIR] [--llm-epochs N] [--seeds N]   on a GPU machine: `ray start`, every step on CUDA
#   bench/llm_quality.sh --cpu [--mined RUN] [--out DIR]            the same steps, tiny, on CPU in a local Ray
# PYTHON picks the interpreter (default python3). Exits non-zero on the first failed step.
exec "$(dirname "$0")/with_ray.sh" bench/llm_quality.py "$@"
