#!/usr/bin/env bash
# The main job: set up (idempotent) and materialize the WHOLE asset graph for one base model
# (default smollm2-135m, on CPU). Usage: bash scripts/main.sh [partition]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="$PWD/dagster_home"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
partition="${1:-smollm2-135m}"
start=$(date +%s)
.venv/bin/dagster asset materialize -m pumpl_assets.definitions --select '*' --partition "$partition"
echo "full graph for $partition: $(( $(date +%s) - start )) s"
# The CLI's exit code is the run's; also fail if any blocking gate failed (belt and braces).
.venv/bin/python -m pumpl_assets.report --partition "$partition"
