#!/usr/bin/env bash
# The main job: set up (idempotent) and materialize the WHOLE asset graph for one base model
# (default smollm2-135m, on CPU). Usage: bash scripts/main.sh [partition]
# Instance: dagster_home/ (sqlite, one machine) by default; PUMPL_DAGSTER_INSTANCE=team selects
# dagster_home/team/ (PostgreSQL from PUMPL_PG_HOST/PORT/USER/DB; see docs/deployment.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
case "${PUMPL_DAGSTER_INSTANCE:-local}" in
  local | "") export DAGSTER_HOME="$PWD/dagster_home" ;;
  team)
    for v in PUMPL_PG_HOST PUMPL_PG_PORT PUMPL_PG_USER PUMPL_PG_DB; do
      if [ -z "${!v:-}" ]; then
        echo "PUMPL_DAGSTER_INSTANCE=team needs $v (the PostgreSQL connection; see docs/deployment.md)" >&2
        exit 2
      fi
    done
    export DAGSTER_HOME="$PWD/dagster_home/team"
    ;;
  *)
    echo "PUMPL_DAGSTER_INSTANCE must be 'local' (dagster_home/) or 'team' (dagster_home/team/), got" \
      "'$PUMPL_DAGSTER_INSTANCE'" >&2
    exit 2
    ;;
esac
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The job's processes on tcmalloc where the machine has it (pumpl_assets/core/heap.py: LoRA steps ~30%
# faster, served eval decode ~9%); an error only when PUMPL_MALLOC=tcmalloc and it is missing.
preload="$(.venv/bin/python -m pumpl_assets.core.heap ld-preload)"
if [ -n "$preload" ]; then
  export LD_PRELOAD="$preload"
fi
echo "malloc: ${LD_PRELOAD:-glibc}"
partition="${1:-smollm2-135m}"
echo "Dagster instance: $DAGSTER_HOME"
start=$(date +%s)
.venv/bin/dagster asset materialize -m pumpl_assets.definitions --select '*' --partition "$partition"
echo "full graph for $partition: $(( $(date +%s) - start )) s"
# The CLI's exit code is the run's; also fail if any blocking gate failed (belt and braces).
.venv/bin/python -m pumpl_assets.report --partition "$partition"
