"""Artifacts are written atomically: a writer killed mid-write never leaves a half artifact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from pumpl_assets.core.io import (
    _host_tag,
    atomic_path,
    frame_hash,
    sha256_tree,
    sweep_dead_writers,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
)

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from pumpl_assets.core.io import atomic_path
    dest = Path(sys.argv[1])
    kind = sys.argv[2]
    with atomic_path(dest) as tmp:
        if kind == "dir":
            tmp.mkdir()
            for i in range(1000):
                (tmp / f"shard-{i:04d}.bin").write_bytes(b"x" * 65536)
                if i == 5:
                    print("writing", flush=True)
        else:
            with open(tmp, "wb") as fh:
                for i in range(1000):
                    fh.write(b"y" * 65536)
                    fh.flush()
                    if i == 5:
                        print("writing", flush=True)
                    time.sleep(0.002)
    print("done", flush=True)
    """
)


def _kill_mid_write(dest: Path, kind: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(dest), kind],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_kill_mid_write_leaves_old_artifact_intact(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / ("model" if kind == "dir" else "table.bin")
    if kind == "dir":
        dest.mkdir()
        (dest / "weights.bin").write_bytes(b"old")
    else:
        dest.write_bytes(b"old")
    before = sha256_tree(dest)
    _kill_mid_write(dest, kind)
    assert sha256_tree(dest) == before  # the previous complete artifact is untouched
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == [dest.name]  # only hidden temp leftovers, never a half artifact under the real name


@pytest.mark.unit
def test_kill_mid_first_write_leaves_nothing_visible(tmp_path: Path) -> None:
    dest = tmp_path / "fresh.bin"
    _kill_mid_write(dest, "file")
    assert not dest.exists()


@pytest.mark.unit
def test_failed_write_raises_and_keeps_old(tmp_path: Path) -> None:
    dest = tmp_path / "a.json"
    write_json_atomic(dest, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text('{"v": 2')  # half written
        raise RuntimeError("crash during write")
    assert dest.read_text().strip().startswith("{") and '"v": 1' in dest.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.unit
def test_directory_replacement_is_whole(tmp_path: Path) -> None:
    dest = tmp_path / "folder"
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["b"]


@pytest.mark.unit
def test_writing_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="produced nothing"), atomic_path(tmp_path / "x"):
        pass


@pytest.mark.unit
def test_parquet_and_hash_roundtrip(tmp_path: Path) -> None:
    df = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    write_parquet_atomic(tmp_path / "t.parquet", df)
    back = pl.read_parquet(tmp_path / "t.parquet")
    assert frame_hash(back) == frame_hash(df)
    assert frame_hash(df) != frame_hash(df.reverse())
    write_bytes_atomic(tmp_path / "b.bin", b"abc")
    assert (tmp_path / "b.bin").read_bytes() == b"abc"
    time.sleep(0)


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_next_write_sweeps_a_killed_writers_leftovers_only(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / ("model" if kind == "dir" else "table.bin")
    _kill_mid_write(dest, kind)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(f".{dest.name}.")]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
    # A live writer's temp (this process), another host's and an unrelated sibling's are kept
    # (the latter two with the pid of a process that has exited).
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait(timeout=30)
    live = tmp_path / f".{dest.name}.{_host_tag()}-{os.getpid()}.abc.tmp"
    other_host = tmp_path / f".{dest.name}.ffffffff-{done.pid}.abc.tmp"
    sibling = tmp_path / f".{dest.name}x.{_host_tag()}-{done.pid}.abc.tmp"
    for p in (live, other_host, sibling):
        p.mkdir()
    with atomic_path(dest) as tmp:
        if kind == "dir":
            tmp.mkdir()
            (tmp / "w.bin").write_bytes(b"new")
        else:
            tmp.write_bytes(b"new")
    assert not leftovers[0].exists()  # swept
    assert live.exists() and other_host.exists() and sibling.exists()
    assert sweep_dead_writers(dest) == []  # nothing left to sweep
