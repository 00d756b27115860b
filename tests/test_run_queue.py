"""The team instance's run queue on a real PostgreSQL with a real ``dagster-daemon``.

Runs of a tiny code location (tests/queue_defs.py: a ``gpu``-pool step, then a CPU step, per partition) are
submitted to the queue of ``dagster_home/team/dagster.yaml`` (copied unchanged) and started by the daemon.
From the run records and the steps' own timestamps the test shows: every run succeeded; no two runs of one
partition ever overlapped (tag ``dagster/partition``, limit 1 per value); no two gpu-pool steps overlapped
(pool default limit 1); and the queue still ran things in parallel where it may. It records the measured
dequeue throughput in bench/out/run_queue.json (docs/deployment.md's capacity plan).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_helpers import REPO_ROOT, VENV_BIN, PgServer, postgres, team_home
from tests.ui_helpers import Server, free_port, wait_for

# ~1.5 min (daemon + 9 run processes on 2 cores): out of the fast default suite; CI (-m "not gpu") runs it.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

GPU_RUNS = ["p1", "p1", "p2", "p2", "p3"]
NOOP_RUNS = ["n1", "n2", "n3", "n4"]
RUNS_TIMEOUT_S = 240
OUT = REPO_ROOT / "bench" / "out" / "run_queue.json"


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with postgres() as server:
        yield server


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _max_concurrency(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def test_queue_keeps_partitions_and_gpu_pool_exclusive(
    pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg
    from dagster._core.events import DagsterEventType

    db_env = pg.create_db("queue_test")
    home = team_home(tmp_path)
    steps_log = tmp_path / "steps.jsonl"
    steps_log.touch()
    env = {
        **os.environ,
        **db_env,
        "DAGSTER_HOME": str(home),
        "PUMPL_QUEUE_LOG": str(steps_log),
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p),
        "DAGSTER_TELEMETRY_ENABLED": "false",
    }
    for k, v in db_env.items():
        monkeypatch.setenv(k, v)
    # Create the instance's tables once, before the daemon and the launcher both open the fresh
    # database: each creates them on first use, and two creators racing fail with DuplicateObject
    # ('type "jobs" already exists'; the daemon exited with it once in a CI run).
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)

    daemon = Server(
        name="dagster-daemon",
        argv=[str(VENV_BIN / "dagster-daemon"), "run", "-m", "tests.queue_defs", "-d", str(REPO_ROOT)],
        port=free_port(),  # unused: the daemon serves nothing
        log_path=tmp_path / "daemon.log",
        env=env,
    )
    daemon.start()
    try:
        import subprocess

        targets = [f"gpu_job:{p}" for p in GPU_RUNS] + [f"noop_job:{p}" for p in NOOP_RUNS]
        launched = subprocess.run(
            [sys.executable, "-m", "tests.queue_launch", "tests.queue_defs", *targets],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert launched.returncode == 0, launched.stdout + launched.stderr[-3000:]
        submitted = [json.loads(line) for line in launched.stdout.splitlines() if line.startswith("{")]
        assert len(submitted) == len(targets)
        assert {s["status"] for s in submitted} <= {"QUEUED", "NOT_STARTED", "STARTING", "STARTED"}, submitted

        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            ids = [s["run_id"] for s in submitted]

            def all_done() -> bool:
                runs = instance.get_runs(filters=dg.RunsFilter(run_ids=ids))
                return len(runs) == len(ids) and all(r.is_finished for r in runs)

            wait_for(
                f"{len(ids)} queued runs to finish",
                all_done,
                timeout=RUNS_TIMEOUT_S,
                server=daemon,
                interval=1.0,
            )
            records = {r.dagster_run.run_id: r for r in instance.get_run_records(dg.RunsFilter(run_ids=ids))}
            statuses = {rid: rec.dagster_run.status.value for rid, rec in records.items()}
            assert set(statuses.values()) == {"SUCCESS"}, f"{statuses}\n{daemon.log_tail()}"

            def first_event(run_id: str, kind: DagsterEventType) -> float:
                recs = instance.get_records_for_run(run_id, of_type=kind).records
                assert recs, f"run {run_id} has no {kind.value} event"
                return recs[0].timestamp

            enqueued = {rid: first_event(rid, DagsterEventType.RUN_ENQUEUED) for rid in ids}
            # Dequeued = launched: the daemon moves a run QUEUED → STARTING (1.13 writes no DEQUEUED event).
            dequeued = {rid: first_event(rid, DagsterEventType.RUN_STARTING) for rid in ids}
            gpu_info = instance.event_log_storage.get_concurrency_info("gpu")
        by_id = {s["run_id"]: s for s in submitted}

        # 1. Never two runs of one partition at once (run records: start → end of each run).
        spans = {rid: (rec.start_time or 0.0, rec.end_time or 0.0) for rid, rec in records.items()}
        for a, b in itertools.combinations(ids, 2):
            if by_id[a]["partition"] == by_id[b]["partition"]:
                assert not _overlap(spans[a], spans[b]), (
                    f"two runs of {by_id[a]['partition']} overlapped: {spans[a]} vs {spans[b]}"
                )
        # ... and the second run of a partition was only dequeued after the first one ended.
        for part in {p for p in GPU_RUNS if GPU_RUNS.count(p) > 1}:
            first, second = sorted(
                (rid for rid in ids if by_id[rid]["partition"] == part), key=lambda rid: dequeued[rid]
            )
            assert dequeued[second] >= spans[first][1] - 0.5, (part, dequeued[second], spans[first])

        # 2. Never two gpu-pool steps at once (the steps' own clocks), and the pool's limit is 1.
        steps = [json.loads(line) for line in steps_log.read_text().splitlines() if line.strip()]
        train = [(s["start"], s["end"]) for s in steps if s["step"] == "train"]
        assert len(train) == len(GPU_RUNS), steps
        for a, b in itertools.combinations(train, 2):
            assert not _overlap(a, b), f"two gpu-pool steps overlapped: {a} vs {b}"
        assert gpu_info.slot_count == 1, gpu_info

        # 3. ... while the queue did run things side by side where nothing forbids it.
        assert _max_concurrency(list(spans.values())) >= 2, spans

        # Measured for the capacity plan: how fast the daemon dequeues runs nothing holds back.
        noop_ids = [rid for rid in ids if by_id[rid]["job"] == "noop_job"]
        t0 = min(enqueued[r] for r in noop_ids)
        dequeue_span = max(dequeued[r] for r in noop_ids) - t0
        finish_span = max(spans[r][1] for r in noop_ids) - t0
        all_span = max(s[1] for s in spans.values()) - min(enqueued.values())
        measured = {
            "runs": len(ids),
            "noop_runs": len(noop_ids),
            "noop_enqueue_to_last_dequeue_s": round(dequeue_span, 2),
            "noop_enqueue_to_last_finish_s": round(finish_span, 2),
            "noop_runs_dequeued_per_min": round(len(noop_ids) / max(dequeue_span, 1e-6) * 60, 1),
            "noop_runs_finished_per_min": round(len(noop_ids) / max(finish_span, 1e-6) * 60, 1),
            "all_runs_wall_s": round(all_span, 1),
            "max_concurrent_runs_seen": _max_concurrency(list(spans.values())),
            "run_launch_s_median": sorted(spans[r][0] - dequeued[r] for r in ids)[len(ids) // 2],
            "dequeue_interval_s": 2,
            "cpus": os.cpu_count(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(measured, indent=2) + "\n")
        print(json.dumps(measured))
    finally:
        daemon.stop()
