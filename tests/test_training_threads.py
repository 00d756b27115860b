"""Training threads go to the cores other processes leave idle, measured now and re-checked during training."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pumpl_assets.core.training import base
from pumpl_assets.core.training.base import BusyCores, ThreadGovernor, threads_for, torch_threads

pytestmark = pytest.mark.unit


def test_threads_for_leaves_the_cores_others_use() -> None:
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 0.3) == 2  # a Dagster parent polling its subprocess does not take a core
    assert threads_for(2, 0.6) == 1  # a core more than half used by others is taken
    assert threads_for(2, 1.2) == 1
    assert threads_for(2, 7.0) == 1  # never fewer than one
    assert threads_for(16, 3.4) == 13


def _fake_jiffies(
    monkeypatch: pytest.MonkeyPatch, readings: list[tuple[float, float]], own: list[float]
) -> None:
    """/proc/stat and this process's CPU time, scripted (2 cores, 100 jiffies a second)."""
    it, own_it = iter(readings), iter(own)
    monkeypatch.setattr(base, "_cpu_jiffies", lambda: next(it))
    monkeypatch.setattr(base.time, "process_time", lambda: next(own_it))
    monkeypatch.setattr(base, "cpu_cores", lambda: 2)
    monkeypatch.setattr(base.os, "sysconf", lambda name: 100)


def test_busy_cores_subtracts_this_process_own_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 s of wall on 2 cores = 2,000 jiffies; both cores busy; this process used 10 CPU-seconds
    # (one core): one core busy elsewhere.
    _fake_jiffies(monkeypatch, [(0.0, 0.0), (2000.0, 2000.0)], [0.0, 10.0])
    assert BusyCores().read() == pytest.approx(1.0)
    # This process alone keeps both cores busy: nobody else is.
    _fake_jiffies(monkeypatch, [(0.0, 0.0), (2000.0, 2000.0)], [0.0, 20.0])
    assert BusyCores().read() == pytest.approx(0.0)
    # An idle box.
    _fake_jiffies(monkeypatch, [(0.0, 0.0), (0.0, 2000.0)], [0.0, 0.0])
    assert BusyCores().read() == pytest.approx(0.0)


def test_governor_follows_the_box_and_records_each_change(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("PUMPL_TORCH_THREADS", raising=False)
    busy = iter([1.3, 1.2, 0.1])
    monkeypatch.setattr(base.BusyCores, "read", lambda self: next(busy))
    monkeypatch.setattr(base, "cpu_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        gov = ThreadGovernor(every=10)
        for step in range(1, 31):
            gov.after_step(step)
            if step == 10:
                assert torch.get_num_threads() == 1  # someone else took a core
        assert torch.get_num_threads() == 2  # ... and gave it back by step 30
        assert gov.changes == [(10, 1), (30, 2)]
    finally:
        torch.set_num_threads(before)


def test_a_fixed_thread_count_turns_the_governor_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUMPL_TORCH_THREADS", "1")
    assert torch_threads() == 1
    gov = ThreadGovernor(every=1)
    monkeypatch.setattr(base.BusyCores, "read", lambda self: pytest.fail("read while off"))
    gov.after_step(1)
    assert not gov.enabled and gov.changes == []


def test_a_real_busy_process_is_seen_and_leaves_fewer_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child spinning one core for ~2 s is counted as busy elsewhere (other tests may add more)."""
    monkeypatch.delenv("PUMPL_TORCH_THREADS", raising=False)
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        time.sleep(0.5)  # the interpreter is up and spinning
        probe = BusyCores()
        time.sleep(1.5)
        busy = probe.read()
        assert busy is not None and busy >= 0.7, busy
        assert torch_threads(sample_s=0.5) <= max(1, base.cpu_cores() - 1)
    finally:
        spin.kill()
        spin.wait()
