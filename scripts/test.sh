#!/usr/bin/env bash
# Set up (idempotent) and run every test that needs no GPU, the slow SmolLM2 end-to-end ones included.
# Faster inner loop: `.venv/bin/pytest` (pyproject's default: -m "not slow and not gpu").
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
bash scripts/install_browser.sh  # headless Chromium for tests/test_ui.py (never fails; tests skip/CI-fail without it)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two workers (pytest-xdist), a test file per worker at a time so module fixtures (servers, trained
# tiny models) are built once: most of the suite waits on subprocesses, servers and imports, so two
# overlap on 2 cores (fast suite 745 -> 586 s here). PUMPL_TEST_WORKERS=0 runs it in one process.
.venv/bin/pytest -m "not gpu" -n "${PUMPL_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
