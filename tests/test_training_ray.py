"""The same Pipes training as a Ray job on a real local Ray head (``launcher="ray"``).

One head for the module (``ray start --head --block`` on loopback, free ports, its own temp dir,
in its own process group so teardown stops exactly it). The test materializes ``lora_adapter``
with the Ray launcher, stops the Ray job once the first checkpoint is on disk (the asset fails and
names the stopped job), then materializes again: the new Ray job resumes from the last checkpoint
and SUCCEEDS, and its job id, the loss and the three gates come back through Pipes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RAY_BIN = Path(sys.executable).with_name("ray")
_HEADS = itertools.count()


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A local Ray head (2 CPUs, 1 logical GPU); yields its dashboard address."""
    with start_ray_head() as address:
        yield address


@contextlib.contextmanager
def start_ray_head(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a local Ray head whose processes also get ``extra_env`` (a node's own credentials, say)."""
    pytest.importorskip("ray")
    pytest.importorskip("dagster_ray")
    gcs, dash, client, agent_http, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = _free_ports(9)
    temp_dir = Path(f"/tmp/ray-pumpl-{os.getpid()}-{next(_HEADS)}")
    log = temp_dir.with_suffix(".log")
    cmd = [
        str(RAY_BIN), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2", "--num-gpus=1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
        f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    env = dict(os.environ, **(extra_env or {}), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    fh = open(log, "wb")  # noqa: SIM115 (closed in teardown)
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    t_start = time.monotonic()
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(f"Ray dashboard {address} not up after 90 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        print(f"\nray head up in {time.monotonic() - t_start:.1f}s")
        yield address
    finally:
        # Stop exactly this head: its process group (ray start --block and everything it spawned).
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
        fh.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


def _stop_after_first_checkpoint(
    address: str, ckpt_root: Path, box: dict[str, object], done: threading.Event
) -> None:
    """Watcher: once a checkpoint is complete, stop the running training Ray job (like `ray job stop`).
    ``done`` is set when the materialization returned (stopped or, if the watcher was too late, finished)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not done.is_set():
        if any((p / "COMPLETE.json").is_file() for p in ckpt_root.glob("step-*")):
            running = [
                j.submission_id
                for j in client.list_jobs()
                if j.status == JobStatus.RUNNING and (j.submission_id or "").startswith("pumpl-lora-")
            ]
            if running:
                box["stopped"] = running[0]
                box["at_step"] = max(int(p.name.split("-")[1]) for p in ckpt_root.glob("step-*"))
                client.stop_job(str(running[0]))
                return
        time.sleep(0.1)
    box["error"] = (
        "the training finished before the watcher could stop it" if done.is_set()
        else "no checkpoint appeared within 120 s"
    )  # fmt: skip


def test_training_as_a_ray_job_succeeds_and_resumes_after_the_job_is_stopped(
    ray_head: str, pumpl_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from pumpl_assets.common import TrainConfig
    from pumpl_assets.core import settings
    from tests.training_helpers import (
        PARTITION,
        check_outcomes,
        lora_metadata,
        materialize_lora,
        write_tiny_split,
    )

    t0 = time.monotonic()
    monkeypatch.setenv("PUMPL_MODEL_PATH_SMOLLM2_135M", str(tiny_model_dir))
    monkeypatch.setenv("PUMPL_TORCH_THREADS", "1")
    monkeypatch.setenv("PUMPL_RAY_ADDRESS", ray_head)
    monkeypatch.setenv("PUMPL_FAKE_SECRET_TOKEN", "must-not-travel")
    write_tiny_split()
    # Enough steps that the watcher's stop (a job listing, then a stop request) lands mid-training even
    # when the box is busy: with 12, a fast run once finished first and the test failed on its own race.
    steps = 30
    cfg = TrainConfig(launcher="ray", max_steps=steps, checkpoint_every=2, learning_rate=5e-3)
    out = settings.artifacts_dir(PARTITION, "lora_adapter")
    client = JobSubmissionClient(ray_head)

    # 1. Stopped mid-training: the asset fails naming the stopped job; no final adapter.
    box: dict[str, object] = {}
    done = threading.Event()
    watcher = threading.Thread(
        target=_stop_after_first_checkpoint, args=(ray_head, out / "checkpoints", box, done), daemon=True
    )
    watcher.start()
    first, instance = materialize_lora(cfg)
    done.set()
    watcher.join(timeout=30)
    assert "error" not in box, box
    stopped = str(box["stopped"])
    assert not first.success
    assert client.get_job_status(stopped) == JobStatus.STOPPED
    failure = first.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and stopped in failure.message and "STOPPED" in failure.message
    assert not (out / "adapter").exists()
    t_stopped = time.monotonic() - t0

    # 2. Again: a new Ray job resumes from the last checkpoint and succeeds.
    second, _ = materialize_lora(cfg, instance)
    assert second.success
    md = lora_metadata(second)
    job_id = md["Ray Job ID"]
    assert job_id != stopped and client.get_job_status(job_id) == JobStatus.SUCCEEDED
    assert md["launcher"] == "ray"
    assert md["resumed_from_step"] > 0 and md["resumed_from_step"] >= int(box["at_step"])  # type: ignore[call-overload]
    assert md["steps"] == steps and md["steps_this_run"] == steps - md["resumed_from_step"]
    losses = md["train_loss"]
    assert [s for s, _ in losses] == list(range(1, steps + 1)) and all(math.isfinite(v) for _, v in losses)
    assert md["final_train_loss"] == losses[-1][1]
    assert (Path(md["adapter_dir"]) / "adapter_model.safetensors").is_file()
    checks = check_outcomes(second)  # reported by the Ray job through Pipes
    assert set(checks) == {"trained", "loss_improved", "adapter_integrity"}
    assert checks["trained"] and checks["adapter_integrity"]
    # The job ran with this checkout on its path and without the secret in its environment.
    env_vars = (client.get_job_info(job_id).runtime_env or {})["env_vars"]
    assert "PUMPL_FAKE_SECRET_TOKEN" not in env_vars and env_vars["PUMPL_TORCH_THREADS"] == "1"
    print(
        f"\nray: stopped at step {box['at_step']} after {t_stopped:.1f}s; resumed run done at {time.monotonic() - t0:.1f}s"
    )
