"""Real services for the scale-out tests, started on loopback and stopped by process group.

* :func:`moto_s3` — ``moto_server`` (S3 stand-in) on a free port; yields :class:`S3Service`.
* :func:`postgres` — Debian's PostgreSQL 15: ``initdb`` into a temp folder, run as the
  ``postgres`` user when we are root; yields :class:`PostgresService` (a fresh database per use).
* :func:`mlflow_server` — ``mlflow server`` on Postgres with ``--serve-artifacts
  --artifacts-destination s3://<bucket>/mlflow`` (job execution off: ~0.5 GB instead of ~2.2 GB).

Fixtures (import them into a test module: ``from tests.services import moto_s3_session, ...``)
are session-scoped: the first start costs ~1 s (moto), ~3 s (postgres), ~15-20 s (mlflow).
Test credentials are dummies; nothing here talks to a real cloud.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{url} not up after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


# ------------------------------------------------------------------------------------------ S3 (moto)


@dataclass
class S3Service:
    endpoint: str
    env: dict[str, str]  # AWS_* dummies + endpoint variables, for clients and subprocesses

    def make_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **_boto_kwargs()).create_bucket(Bucket=name)
        return name


def _boto_kwargs() -> dict[str, str]:
    return {
        "aws_access_key_id": DUMMY_AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": DUMMY_AWS["AWS_DEFAULT_REGION"],
    }


@contextlib.contextmanager
def moto_s3(workdir: Path) -> Iterator[S3Service]:
    port = free_port()
    log = workdir / "moto.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **DUMMY_AWS},
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{endpoint}/moto-api/", proc, log, 30)
        env = {**DUMMY_AWS, "MLFLOW_S3_ENDPOINT_URL": endpoint, "PUMPL_S3_ENDPOINT_URL": endpoint}
        yield S3Service(endpoint=endpoint, env=env)
    finally:
        _stop(proc)


# ------------------------------------------------------------------------------------------ PostgreSQL


def _pg_bin(name: str) -> str:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).is_file():
            return str(d / name)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed (apt-get install -y postgresql)")
    return found


@dataclass
class PostgresService:
    port: int
    user: str

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URI (psycopg2 driver, loopback, trust auth)."""
        subprocess.run(
            [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
            check=True,
            capture_output=True,
        )
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[PostgresService]:
    as_root = os.geteuid() == 0
    data = workdir / "pgdata"
    run_user = "postgres" if as_root else None
    if as_root:
        workdir.chmod(0o755)
        shutil.chown(workdir, "postgres")

    def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        if run_user:
            cmd = ["runuser", "-u", run_user, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, **kw)  # type: ignore[call-overload,no-any-return]

    _run([_pg_bin("initdb"), "-D", str(data), "-U", "pumpl", "-A", "trust", "--no-sync"])
    port = free_port()
    log = workdir / "postgres.log"
    cmd = [
        _pg_bin("postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={workdir}",
        "-c",
        "fsync=off",
    ]
    if run_user:
        cmd = ["runuser", "-u", run_user, "--", *cmd]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            ok = subprocess.run(
                [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode
            if ok == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield PostgresService(port=port, user="pumpl")
    finally:
        _stop(proc)


# ------------------------------------------------------------------------------------------ MLflow server


@dataclass
class MlflowServer:
    tracking_uri: str
    bucket: str
    env: dict[str, str]  # what a client process needs (AWS dummies + S3 endpoint); never the server's DB


@contextlib.contextmanager
def mlflow_server(workdir: Path, s3: S3Service, pg: PostgresService, bucket: str) -> Iterator[MlflowServer]:
    s3.make_bucket(bucket)
    db = pg.create_database(f"mlflow_{bucket.replace('-', '_')}")
    port = free_port()
    log = workdir / "mlflow-server.log"
    env = {
        **os.environ,
        **s3.env,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                db,
                "--serve-artifacts",
                "--artifacts-destination",
                f"s3://{bucket}/mlflow",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=workdir,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{uri}/health", proc, log, 120)
        yield MlflowServer(tracking_uri=uri, bucket=bucket, env=dict(s3.env))
    finally:
        _stop(proc)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def moto_s3_session() -> Iterator[S3Service]:
    with tempfile.TemporaryDirectory(prefix="pumpl-moto-") as d, moto_s3(Path(d)) as s3:
        yield s3


@pytest.fixture(scope="session")
def postgres_session() -> Iterator[PostgresService]:
    with tempfile.TemporaryDirectory(prefix="pumpl-pg-") as d, postgres(Path(d)) as pg:
        yield pg


@pytest.fixture(scope="session")
def mlflow_server_session(
    moto_s3_session: S3Service, postgres_session: PostgresService
) -> Iterator[MlflowServer]:
    with (
        tempfile.TemporaryDirectory(prefix="pumpl-mlflow-") as d,
        mlflow_server(Path(d), moto_s3_session, postgres_session, "pumpl-mlflow") as srv,
    ):
        yield srv


@pytest.fixture()
def s3_env(moto_s3_session: S3Service, monkeypatch: pytest.MonkeyPatch) -> S3Service:
    """Point this test's boto3/MLflow clients at the moto server (dummy credentials)."""
    for k, v in moto_s3_session.env.items():
        monkeypatch.setenv(k, v)
    return moto_s3_session
