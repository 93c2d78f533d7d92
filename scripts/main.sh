#!/usr/bin/env bash
# The main job on the embedded default: SmolLM2-135M-Instruct + the shared data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/prunelab info smollm2-135m
.venv/bin/prunelab perplexity smollm2-135m --windows 16 --json out/main-perplexity.json
