"""core/heap.py: the training process keeps freed memory instead of page-faulting it back each step."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pumpl_assets.core import heap

pytestmark = pytest.mark.unit

# A child allocates and fills a 256 MB buffer five times (as a training step does with its logits)
# and prints the minor page faults of the last four rounds.
_CHILD = textwrap.dedent(
    """
    import resource, sys
    from pumpl_assets.core import heap
    applied = heap.retain_freed_memory() if sys.argv[1] == "on" else False
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = bytearray(256 * 2**20)
        buf[:: 4096] = b"x" * len(buf[:: 4096])
        del buf
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, sum(faults[1:]))
    """
)


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    import os

    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retained_heap_reuses_large_buffers_without_page_faults() -> None:
    pages = 4 * 256 * 2**20 // 4096  # 4 rounds of 256 MB in 4 KiB pages
    applied, retained_faults = _faults("on")
    assert applied
    _, default_faults = _faults("off")
    # glibc's default mmaps and unmaps every round: each page faults again.
    assert default_faults > pages // 2
    # Retained: the first round's pages are reused.
    assert retained_faults < pages // 20


def test_env_switch_turns_it_off() -> None:
    applied, _ = _faults("on", PUMPL_RETAIN_HEAP="0")
    assert not applied


def test_not_applied_in_this_process_until_called() -> None:
    # The test session itself never calls it (only the training child does).
    assert heap.retained() is False
