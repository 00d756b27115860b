"""glibc heap settings for a process that allocates large tensors over and over (CPU training).

Why: PyTorch has no caching allocator on CPU, and glibc serves every allocation above its mmap
threshold (at most 32 MiB on 64-bit) with a fresh ``mmap`` that it unmaps again on ``free``. A
training step's large tensors — the answer logits of one packed SmolLM2 row are ~1,300 × 49,152
floats, 250 MB — therefore come back every step as new pages that the kernel zeroes on first touch.
Profiled on this 2-core box (one packed 1,536-token LoRA step of SmolLM2-135M, bf16 autocast):
``log_softmax`` and its backward, ``fill_`` and ``copy_`` spent ~1 s of the step in page faults;
with ``mmap`` off and the heap never trimmed, the same step took 5.2 s instead of 6.3 (same
arithmetic, same losses). ``jemalloc`` / ``tcmalloc`` through ``LD_PRELOAD`` would do the same, but
need a system package and a wrapper around every launcher (Pipes subprocess, Ray job); ``mallopt``
is one call at the top of the process.

The price is that freed memory stays with the process until it exits, which is what a training
child (:mod:`pumpl_assets.core.training.run`) does anyway. Not for long-lived servers.
``PUMPL_RETAIN_HEAP=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

# <malloc.h> parameter numbers (glibc).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_NEVER = 2**31 - 1  # mallopt takes an int: trim only once 2 GiB at the heap's top are free

_applied = False


def retain_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (glibc on Linux only).

    Returns whether the setting is in force; a no-op (False) off glibc or with ``PUMPL_RETAIN_HEAP=0``.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("PUMPL_RETAIN_HEAP", "1") == "0" or not sys.platform.startswith("linux"):
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
