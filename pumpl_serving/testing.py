"""Start a real ``pumpl-serve`` subprocess for tests and scripts, and stop every process it made.

The server runs in its own session / process group (``start_new_session=True``), so teardown
can ``os.killpg`` LitServe's HTTP processes and inference workers together (SIGTERM, then
SIGKILL after a grace period): no worker outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    token: str | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=kw.pop("timeout", 120.0), **kw)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_healthy(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.log_text()[-4000:]}")

    def group_alive(self) -> bool:
        """Is any process of the server's group (HTTP processes, workers) still running?"""
        return _group_alive(self.proc.pid)  # start_new_session: the group id is the leader's pid

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.proc.poll()  # reap our direct child so it does not count as alive
                if not _group_alive(pgid):
                    break
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self._log:
            self._log.close()


def _group_alive(pgid: int) -> bool:
    """Any non-zombie process left in the group? (/proc on Linux, else a signal-0 probe)."""
    proc = Path("/proc")
    if proc.is_dir():
        for stat in proc.glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_server(
    args: list[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    token: str | None = None,
    port: int | None = None,
    wait: bool = True,
    health_timeout: float = 240.0,
) -> ServerProcess:
    """``python -m pumpl_serving <args> --port <free port>`` in a new process group."""
    port = port or free_port()
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if token:
        full_env["PUMPL_SERVE_TOKEN"] = token
    else:
        full_env.pop("PUMPL_SERVE_TOKEN", None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pumpl_serving", *args, "--port", str(port)],
        cwd=str(REPO_ROOT),
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = ServerProcess(proc=proc, port=port, log_path=log_path, token=token, _log=log)
    if wait:
        try:
            server.wait_healthy(health_timeout)
        except BaseException:
            server.stop()
            raise
    return server


@contextlib.contextmanager
def running_server(args: list[str], *, log_path: Path, **kw: Any) -> Iterator[ServerProcess]:
    server = start_server(args, log_path=log_path, **kw)
    try:
        yield server
    finally:
        server.stop()
