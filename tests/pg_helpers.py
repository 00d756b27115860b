"""A real, throwaway PostgreSQL for tests (``scripts/pg.sh``, the same starter .ci/run uses).

When Debian's ``postgresql`` binaries are missing the Postgres tests skip with that reason, except where
``PUMPL_REQUIRE_PG=1`` (set by .ci/run, which installs them first): there they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PG_SH = REPO_ROOT / "scripts" / "pg.sh"
VENV_BIN = Path(sys.executable).parent
TEAM_YAML = REPO_ROOT / "dagster_home" / "team" / "dagster.yaml"
PG_VARS = ("PUMPL_PG_HOST", "PUMPL_PG_PORT", "PUMPL_PG_USER", "PUMPL_PG_DB")


def require_pg() -> bool:
    return os.environ.get("PUMPL_REQUIRE_PG") == "1"


def skip_or_fail(reason: str) -> None:
    if require_pg():
        pytest.fail(f"{reason} (PUMPL_REQUIRE_PG=1: required here)")
    pytest.skip(reason)


def pg_binaries_present() -> bool:
    return bool(shutil.which("pg_config")) or any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@dataclass
class PgServer:
    env: dict[str, str]  # PUMPL_PG_HOST/PORT/USER/DB (+ PUMPL_PG_DIR)

    def url(self, db: str | None = None) -> str:
        e = self.env
        return (
            f"postgresql+psycopg2://{e['PUMPL_PG_USER']}@{e['PUMPL_PG_HOST']}:{e['PUMPL_PG_PORT']}/"
            f"{db or e['PUMPL_PG_DB']}"
        )

    def psql(self, sql: str, db: str | None = None) -> list[tuple]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(db), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(sa.text(sql))
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def create_db(self, name: str) -> dict[str, str]:
        self.psql(f'CREATE DATABASE "{name}"')
        return {**self.env, "PUMPL_PG_DB": name}


def _parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export ") :].split("=", 1)
            env[k] = v
    return env


@contextmanager
def postgres(timeout: float = 60.0) -> Iterator[PgServer]:
    """Start a fresh cluster (initdb, loopback port, database ``pumpl``); stop its process group after."""
    if not pg_binaries_present():
        skip_or_fail("PostgreSQL binaries not installed (Debian package `postgresql`; scripts/pg.sh install)")
    out = subprocess.run(["bash", str(PG_SH), "start"], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"scripts/pg.sh start failed:\n{out.stdout}\n{out.stderr}")
    env = _parse_env(out.stdout)
    try:
        yield PgServer(env)
    finally:
        subprocess.run(["bash", str(PG_SH), "stop", env["PUMPL_PG_DIR"]], timeout=timeout, check=False)


def team_home(tmp: Path) -> Path:
    """A DAGSTER_HOME holding the shipped team dagster.yaml (the config under test, unchanged)."""
    home = tmp / "dagster_home_team"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEAM_YAML, home / "dagster.yaml")
    return home
