"""core/heap.py: the training process runs on tcmalloc where the machine has it, else keeps glibc's
freed memory instead of page-faulting it back each step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    print(heap.allocator(), end=" ")
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


def _run(mode: str, **env: str) -> tuple[str, bool, int]:
    """(allocator, retain applied, page faults of rounds 2-5) of the child."""
    import os

    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**base, **env},
    ).stdout.split()
    return out[0], out[1] == "True", int(out[2])


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    _, applied, faults = _run(mode, **env)
    return applied, faults


_TCMALLOC = heap.find_tcmalloc()
# CI (PUMPL_MALLOC=tcmalloc) installs it: there a missing library fails instead of skipping.
needs_tcmalloc = pytest.mark.skipif(
    _TCMALLOC is None and os.environ.get(heap.MALLOC_ENV) != "tcmalloc",
    reason=f"{heap.TCMALLOC_LIBRARY} not installed (apt-get install libtcmalloc-minimal4)",
)


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


@needs_tcmalloc
def test_a_child_started_with_preload_env_runs_on_tcmalloc_and_reuses_freed_memory() -> None:
    env = heap.preload_env({})
    assert env == {"LD_PRELOAD": str(_TCMALLOC)}
    allocator, applied, faults = _run("on", **env)
    # tcmalloc keeps freed pages itself; glibc's mallopt switches are not applied on top of it.
    assert (allocator, applied) == ("tcmalloc", False)
    assert faults < 4 * 256 * 2**20 // 4096 // 20


def test_a_plain_child_runs_on_glibc_and_reports_it() -> None:
    assert _run("on")[:2] == ("glibc-retained", True)
    assert _run("off")[:2] == ("glibc", False)


@needs_tcmalloc
def test_preload_env_keeps_the_parents_preloads_and_adds_tcmalloc_once() -> None:
    env = heap.preload_env({"LD_PRELOAD": "/opt/libother.so"})
    assert env == {"LD_PRELOAD": f"{_TCMALLOC} /opt/libother.so"}
    assert heap.preload_env({"LD_PRELOAD": env["LD_PRELOAD"]}) == {}


def test_malloc_choice_glibc_preloads_nothing_and_a_bad_value_is_named() -> None:
    assert heap.preload_env({heap.MALLOC_ENV: "glibc"}) == {}
    with pytest.raises(ValueError, match="PUMPL_MALLOC must be one of auto, tcmalloc, glibc, got 'jemalloc'"):
        heap.preload_env({heap.MALLOC_ENV: "jemalloc"})


def test_required_tcmalloc_missing_is_a_clear_error_and_auto_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heap, "TCMALLOC_DIRS", (str(tmp_path),))
    assert heap.find_tcmalloc() is None
    assert heap.preload_env({}) == {}
    with pytest.raises(heap.AllocatorUnavailableError, match="apt-get install libtcmalloc-minimal4"):
        heap.preload_env({heap.MALLOC_ENV: "tcmalloc"})
    (tmp_path / heap.TCMALLOC_LIBRARY).write_bytes(b"")
    assert heap.preload_env({heap.MALLOC_ENV: "tcmalloc"}) == {
        "LD_PRELOAD": str(tmp_path / heap.TCMALLOC_LIBRARY)
    }


def test_cli_prints_the_preload_for_scripts() -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", heap.MALLOC_ENV)}
    cmd = [sys.executable, "-m", "pumpl_assets.core.heap", "ld-preload"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=base, check=True).stdout.strip()
    assert out == (str(_TCMALLOC) if _TCMALLOC else "")
    bad = subprocess.run(cmd, capture_output=True, text=True, env={**base, heap.MALLOC_ENV: "x"})
    assert bad.returncode == 1 and "PUMPL_MALLOC must be one of" in bad.stderr
