"""A persistent, process- and thread-safe cache of paid teacher answers (SQLite).

Keyed by :func:`cache_key` — sha256 of (model, system prompt + user prompt,
output schema) — so a changed prompt, model or schema never reuses a stale
answer. Each answer is committed as soon as it arrives, so a rerun, or a run
killed midway, never pays for the same example twice. Only successful answers
are stored (errors are retried on the next run).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pumpl_assets.core import settings
from pumpl_assets.core.io import sha256_text

DEFAULT_CACHE_FILE = "teacher_cache.sqlite"


def cache_key(model: str, system: str, prompt: str, schema: dict[str, Any]) -> str:
    payload = json.dumps(
        {"model": model, "system": system, "prompt": prompt, "schema": schema},
        sort_keys=True,
        separators=(",", ":"),
    )
    return sha256_text(payload)


@dataclass(frozen=True)
class CachedAnswer:
    plan_text: str
    model: str
    input_tokens: int
    output_tokens: int


class TeacherCache:
    """``get`` / ``put`` on one SQLite file (WAL; a lock serialises this process's threads)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else settings.cache_dir() / DEFAULT_CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS answers ("
                " key TEXT PRIMARY KEY, model TEXT NOT NULL, plan_text TEXT NOT NULL,"
                " input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, created REAL NOT NULL)"
            )
            self._conn.commit()

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT plan_text, model, input_tokens, output_tokens FROM answers WHERE key = ?", (key,)
            ).fetchone()
        return CachedAnswer(row[0], row[1], int(row[2]), int(row[3])) if row else None

    def put(self, key: str, answer: CachedAnswer) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (key, answer.model, answer.plan_text, answer.input_tokens, answer.output_tokens, time.time()),
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
