"""Atomic artifact writes and content hashes.

Every artifact is written to a temporary sibling and renamed into place, so a run
killed mid-write never leaves a half artifact where downstream readers look.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _host_tag() -> str:
    # Temp names carry host + pid, so only leftovers of dead writers on THIS host are ever swept.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_dead_writers(dest: Path | str) -> list[Path]:
    """Remove hidden temp siblings of ``dest`` left by writers that were killed (their pid is gone).

    Names are ``.<name>.<host>-<pid>.<random>.tmp`` (in-flight writes) and
    ``.<name>.old-<host>-<pid>`` (a replaced directory not yet deleted). Leftovers of a live
    process, of another host, or in an older naming scheme are kept. Returns what was removed.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    host, removed = _host_tag(), []
    prefix = f".{dest.name}."
    for p in dest.parent.iterdir():
        rest = p.name[len(prefix) :] if p.name.startswith(prefix) else ""
        tag = (
            rest.removeprefix("old-").split(".")[0]
            if rest.endswith(".tmp") or rest.startswith("old-")
            else ""
        )
        owner_host, _, pid = tag.partition("-")
        if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` only on success.

    Works for files and directories (a directory replaces the old one whole). Hidden leftovers
    of earlier writers of ``dest`` that were killed are swept first (:func:`sweep_dead_writers`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_dead_writers(dest)
    owner = f"{_host_tag()}-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{owner}.", suffix=".tmp", dir=dest.parent))
    target = tmp / dest.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"atomic write to {dest} produced nothing at {target}")
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{owner}")
            os.replace(dest, old)
            os.replace(target, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, dest)
        _fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(dest: Path | str, data: bytes) -> Path:
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(dest)


def write_text_atomic(dest: Path | str, text: str) -> Path:
    return write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: Path | str, obj: Any) -> Path:
    return write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_parquet_atomic(dest: Path | str, df: pl.DataFrame) -> Path:
    with atomic_path(dest) as tmp:
        df.write_parquet(tmp)
    return Path(dest)


def write_jsonl_atomic(dest: Path | str, rows: list[dict[str, Any]]) -> Path:
    return write_text_atomic(dest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: Path | str) -> str:
    """Hash of a file or a directory's files (relative names + contents), order-independent."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def frame_hash(df: pl.DataFrame) -> str:
    """Content hash of a frame (row order matters; callers sort first when it must not)."""
    return sha256_bytes(df.write_ipc(None).getvalue()) if df.height else sha256_text(str(df.schema))


def stable_hash(obj: Any) -> str:
    return sha256_text(json.dumps(obj, sort_keys=True, default=str))
