"""The memory allocator of processes that allocate large tensors over and over (CPU training, eval).

**tcmalloc first.** A training child (and the main job's Dagster processes, see ``scripts/main.sh``)
starts with gperftools' ``libtcmalloc_minimal`` preloaded (:func:`preload_env`; Debian package
``libtcmalloc-minimal4``, installed by ``scripts/setup.sh``). Measured on the 2-core box, real
SmolLM2 LoRA steps (1,536-token packed rows, bf16 autocast, same losses to 4 decimals):
glibc retained (below) 3.68 s/step at steps 11-20 growing to 4.27 s at 71-80 (RSS 8 -> 11 GiB; 4.0 ->
5.1 s over the 200 steps of a CI run) as the heap fragments -- ``empty_strided`` 67 -> 234 ms a step;
glibc default 3.58 -> 4.33 s; jemalloc 3.5 -> 3.1 s; **tcmalloc 2.6-2.7 s flat** (RSS ~5 GiB).
Served decode at batch 48: 152.5 s -> 139.1 s. ``PUMPL_MALLOC=glibc`` turns it off,
``PUMPL_MALLOC=tcmalloc`` makes a missing library an error (CI), ``auto`` (default) uses it when found.

**glibc fallback** (no tcmalloc on the machine):

Why: PyTorch has no caching allocator on CPU, and glibc serves every allocation above its mmap
threshold (at most 32 MiB on 64-bit) with a fresh ``mmap`` that it unmaps again on ``free``. A
training step's large tensors — the answer logits of one packed SmolLM2 row are ~1,300 × 49,152
floats, 250 MB — therefore come back every step as new pages that the kernel zeroes on first touch.
Profiled on this 2-core box (one packed 1,536-token LoRA step of SmolLM2-135M, bf16 autocast):
``log_softmax`` and its backward, ``fill_`` and ``copy_`` spent ~1 s of the step in page faults;
with ``mmap`` off and the heap never trimmed, the same step took 5.2 s instead of 6.3 (same
arithmetic, same losses) -- but over a whole run the never-trimmed heap fragments (figures above),
which is why tcmalloc, where the machine has it, replaces it.

The price is that freed memory stays with the process until it exits, which is what a training
child (:mod:`pumpl_assets.core.training.run`) does anyway. Not for long-lived servers.
``PUMPL_RETAIN_HEAP=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

MallocChoice = Literal["auto", "tcmalloc", "glibc"]
MALLOC_ENV = "PUMPL_MALLOC"
MALLOC_CHOICES: tuple[MallocChoice, ...] = ("auto", "tcmalloc", "glibc")
TCMALLOC_LIBRARY = "libtcmalloc_minimal.so.4"
# Where Debian/Ubuntu (multiarch), Fedora and source builds put it.
TCMALLOC_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)

# <malloc.h> parameter numbers (glibc).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_NEVER = 2**31 - 1  # mallopt takes an int: trim only once 2 GiB at the heap's top are free

_applied = False


class AllocatorUnavailableError(RuntimeError):
    """``PUMPL_MALLOC=tcmalloc`` on a machine without the library."""


def malloc_choice(environ: Mapping[str, str] | None = None) -> MallocChoice:
    """``$PUMPL_MALLOC`` (default ``auto``); a clear error for anything else."""
    raw = (os.environ if environ is None else environ).get(MALLOC_ENV, "auto").strip() or "auto"
    for choice in MALLOC_CHOICES:
        if raw == choice:
            return choice
    raise ValueError(f"{MALLOC_ENV} must be one of {', '.join(MALLOC_CHOICES)}, got {raw!r}")


def find_tcmalloc(dirs: tuple[str, ...] | None = None) -> Path | None:
    """The tcmalloc shared library in ``dirs`` (default :data:`TCMALLOC_DIRS`), or None (also off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    for d in TCMALLOC_DIRS if dirs is None else dirs:
        path = Path(d) / TCMALLOC_LIBRARY
        if path.is_file():
            return path
    return None


def preload_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables to add to a child process's environment so it runs on tcmalloc ({} for glibc).

    ``LD_PRELOAD`` keeps whatever the parent preloads, after tcmalloc. Raises
    :class:`AllocatorUnavailableError` when ``PUMPL_MALLOC=tcmalloc`` and the library is missing.
    """
    environ = os.environ if environ is None else environ
    choice = malloc_choice(environ)
    if choice == "glibc":
        return {}
    lib = find_tcmalloc()
    if lib is None:
        if choice == "tcmalloc":
            raise AllocatorUnavailableError(
                f"{MALLOC_ENV}=tcmalloc but {TCMALLOC_LIBRARY} is in none of {', '.join(TCMALLOC_DIRS)}: "
                "install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4; scripts/setup.sh does "
                f"as root) or set {MALLOC_ENV}=auto"
            )
        return {}
    current = [p for p in environ.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if str(lib) in current:
        return {}
    return {"LD_PRELOAD": " ".join([str(lib), *current])}


def loaded_allocator() -> Literal["tcmalloc", "glibc"]:
    """Which malloc this process runs on (tcmalloc when its library is mapped in)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    return "tcmalloc" if "libtcmalloc" in maps else "glibc"


def allocator() -> str:
    """``tcmalloc``, ``glibc-retained`` (:func:`retain_freed_memory` in force) or ``glibc``: for metrics."""
    if loaded_allocator() == "tcmalloc":
        return "tcmalloc"
    return "glibc-retained" if _applied else "glibc"


def retain_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (glibc on Linux only).

    Returns whether the setting is in force; a no-op (False) off glibc, under tcmalloc (which keeps
    freed memory by itself; its ``mallopt`` is a stub that returns 1) or with ``PUMPL_RETAIN_HEAP=0``.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("PUMPL_RETAIN_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if loaded_allocator() == "tcmalloc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_NEVER))
    return _applied


def retained() -> bool:
    """Whether :func:`retain_freed_memory` is in force in this process."""
    return _applied


def main(argv: list[str] | None = None) -> int:
    """``python -m pumpl_assets.core.heap ld-preload``: the LD_PRELOAD value for this machine (may be empty)."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["ld-preload"]:
        print("usage: python -m pumpl_assets.core.heap ld-preload", file=sys.stderr)
        return 2
    try:
        print(preload_env().get("LD_PRELOAD", os.environ.get("LD_PRELOAD", "")))
    except (AllocatorUnavailableError, ValueError) as exc:
        print(f"pumpl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
