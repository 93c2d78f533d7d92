#!/usr/bin/env bash
# The main job on the embedded default (SmolLM2-135M-Instruct + ../shared/data): model summary, then the
# quickstart experiment end to end (width-prune 40%, three LoRA mechanisms under isodose, relapse,
# evaluation), then the study's tables and figures in out/quickstart-report/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p out
.venv/bin/prunelab info smollm2-135m
.venv/bin/prunelab run examples/quickstart.yaml --db out/quickstart.sqlite
.venv/bin/prunelab report --db out/quickstart.sqlite -o out/quickstart-report
echo "report: out/quickstart-report/report.html (one self-contained page; tables.md and figures/ beside it)"
