#!/usr/bin/env bash
# Idempotent: install the pinned llama-cpp-python (sdist only: built here with cmake + a C/C++ compiler,
# ~180 s on 2 cores without the multimodal library, then cached by pip) and place llama.cpp's HF -> GGUF converter, which the package
# does not install, under .cache/llamacpp/ (git-ignored), with the `conversion/` and `gguf-py/` trees it
# imports from the same sdist (so converter and gguf writer are the same llama.cpp revision).
# Exits non-zero with a message naming what is missing; the torch engines do not need any of this.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PUMPL_VENV:-.venv}"
PIN="0.3.36"
DEST=".cache/llamacpp"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "llamacpp.sh: no Python at $PY (run scripts/setup.sh first or set PUMPL_VENV)" >&2
  exit 1
fi
stamp="$DEST/.installed-$PIN"
if [ -f "$stamp" ] && [ -f "$DEST/convert_hf_to_gguf.py" ] \
  && "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$PIN')" 2>/dev/null; then
  exit 0
fi

mkdir -p "$DEST"
sdist_dir="$DEST/sdist"
sdist="$sdist_dir/llama_cpp_python-$PIN.tar.gz"
if [ ! -f "$sdist" ]; then
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$PIN" -d "$sdist_dir"
fi
if ! "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$PIN')" 2>/dev/null; then
  missing=()
  for tool in cmake gcc g++ make; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "llamacpp.sh: llama-cpp-python==$PIN is built from source and needs: ${missing[*]} (not on PATH)." >&2
    echo "  Debian/Ubuntu: apt-get install -y cmake build-essential" >&2
    exit 1
  fi
  # By name from the index (not the local file) so pip caches the built wheel for the next venv.
  # LLAVA_BUILD=OFF: Pumpl serves text only, and the multimodal library (mtmd: clip, audio) is ~30%
  # of the build (180 s vs 258 s on 2 cores, 2026-12-03); the package imports without it.
  CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }-DLLAVA_BUILD=OFF" nice -n 10 "$PY" -m pip install -q "llama-cpp-python==$PIN"
fi

# Converter + the trees it imports, from the same sdist.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
top="llama_cpp_python-$PIN/vendor/llama.cpp"
tar -xzf "$sdist" -C "$tmp" "$top/convert_hf_to_gguf.py" "$top/conversion" "$top/gguf-py"
rm -rf "$DEST/conversion" "$DEST/gguf-py"
mv "$tmp/$top/conversion" "$tmp/$top/gguf-py" "$DEST/"
mv "$tmp/$top/convert_hf_to_gguf.py" "$DEST/convert_hf_to_gguf.py"
"$PY" "$DEST/convert_hf_to_gguf.py" --help >/dev/null
rm -rf "$sdist_dir"  # pip keeps its own copy; the converter tree is all we need
touch "$stamp"
echo "llamacpp.sh: llama-cpp-python $PIN and $DEST/convert_hf_to_gguf.py ready"
