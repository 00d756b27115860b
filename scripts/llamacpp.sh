#!/usr/bin/env bash
# Idempotent: install the pinned llama-cpp-python (sdist only: built here with cmake + a C/C++ compiler,
# ~2 min on 2 cores without the multimodal and `common` libraries) and place llama.cpp's HF -> GGUF
# converter, which the package does not install, under .cache/llamacpp/ (git-ignored), with the
# `conversion/` and `gguf-py/` trees it imports from the same sdist (so converter and gguf writer are the
# same llama.cpp revision).
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

# Build options. LLAVA_BUILD=OFF: Pumpl serves text only, and the multimodal library (mtmd: clip, audio) is
# ~30% of the build (180 s vs 258 s on 2 cores, 2026-12-03); the package imports without it.
# On x86-64: GGML_NATIVE=OFF with this CPU's instruction sets named one by one (from /proc/cpuinfo), and
# never AMX. The default -march=native build decoded 24 batched served rows of SmolLM2 q8_0 at 108.5
# tokens/s on this box's Xeon against 167.5 for the same instruction sets named explicitly (batch 1: 81.2
# vs 91.9), and a native build without AMX was as slow (107.0), so it is -march=native's code generation,
# not AMX; AMX itself segfaults here (llama.cpp #20824). Measured 2026-12-04.
cmake_args="-DLLAVA_BUILD=OFF"
if [ "$(uname -m)" = "x86_64" ] && [ -r /proc/cpuinfo ]; then
  cpu=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  cmake_args+=" -DGGML_NATIVE=OFF"
  for pair in sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
    avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    case "$cpu" in
      *" ${pair%%:*} "*) cmake_args+=" -DGGML_${pair##*:}=ON" ;;
      *) cmake_args+=" -DGGML_${pair##*:}=OFF" ;;
    esac
  done
fi
cmake_args="${CMAKE_ARGS:+$CMAKE_ARGS }$cmake_args"
# llama.cpp's `common` library (chat templates, argument parsing, downloads: 29 heavy C++ files) is forced ON
# by the package's CMakeLists (a CACHE FORCE, so -DLLAMA_BUILD_COMMON=OFF is overridden), yet only its
# multimodal library links it (off above) and the Python package never loads it: it was half the build
# (205 s with it, ~100 s without, 2 cores, 2026-12-04). The build patches that one line (checked below).
patch="common=off"
key="$(printf '%s %s %s' "$PIN" "$cmake_args" "$patch" | sha256sum | cut -c1-12)"
# The built wheel is kept per build options: pip's own wheel cache keys an sdist by its URL alone, so a
# changed option would silently reinstall the old binary.
wheels="${PUMPL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pumpl/wheels}/llama-cpp-python-$PIN-$key"
stamp="$DEST/.installed-$PIN-$key"
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
if ! ls "$wheels"/llama_cpp_python-"$PIN"-*.whl >/dev/null 2>&1; then
  missing=()
  for tool in cmake gcc g++ make; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "llamacpp.sh: llama-cpp-python==$PIN is built from source and needs: ${missing[*]} (not on PATH)." >&2
    echo "  Debian/Ubuntu: apt-get install -y cmake build-essential" >&2
    exit 1
  fi
  echo "llamacpp.sh: building llama-cpp-python $PIN ($cmake_args; $patch)" >&2
  mkdir -p "$(dirname "$wheels")"
  building="$(mktemp -d "$(dirname "$wheels")/.building.XXXXXX")"
  src="$building/src"
  mkdir -p "$src"
  tar -xzf "$sdist" -C "$src"
  src="$src/llama_cpp_python-$PIN"
  forced='set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)'
  if ! grep -qF "$forced" "$src/CMakeLists.txt"; then
    echo "llamacpp.sh: llama-cpp-python $PIN's CMakeLists.txt no longer forces LLAMA_BUILD_COMMON as expected;" \
      "review the common=off patch in scripts/llamacpp.sh" >&2
    exit 1
  fi
  sed -i "s/set(LLAMA_BUILD_COMMON ON CACHE/set(LLAMA_BUILD_COMMON OFF CACHE/" "$src/CMakeLists.txt"
  CMAKE_ARGS="$cmake_args" nice -n 10 "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$building" "$src"
  rm -rf "$building/src"
  rm -rf "$wheels" && mv "$building" "$wheels"  # whole folder or nothing: a killed build leaves no wheel
fi
"$PY" -m pip uninstall -q -y llama-cpp-python >/dev/null 2>&1 || true
"$PY" -m pip install -q "$wheels"/llama_cpp_python-"$PIN"-*.whl

# Converter + the trees it imports, from the same sdist.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
top="llama_cpp_python-$PIN/vendor/llama.cpp"
tar -xzf "$sdist" -C "$tmp" "$top/convert_hf_to_gguf.py" "$top/conversion" "$top/gguf-py"
rm -rf "$DEST/conversion" "$DEST/gguf-py"
mv "$tmp/$top/conversion" "$tmp/$top/gguf-py" "$DEST/"
mv "$tmp/$top/convert_hf_to_gguf.py" "$DEST/convert_hf_to_gguf.py"
"$PY" "$DEST/convert_hf_to_gguf.py" --help >/dev/null
rm -rf "$sdist_dir" "$DEST"/.installed-*  # the converter tree is all we keep; one stamp, this build's
touch "$stamp"
echo "llamacpp.sh: llama-cpp-python $PIN ($key) and $DEST/convert_hf_to_gguf.py ready"
