"""Helpers for the UI tests: background servers in their own process group, GraphQL/REST calls,
headless Chromium screenshots and a PNG sanity check. Standard library + Pillow only.

Assumptions:
* Chromium is at ``/usr/bin/chromium`` or on PATH (``scripts/install_browser.sh`` installs it).
  When it is missing the tests skip — except under ``CI=true``, where they fail.
* Every server is started with ``start_new_session=True`` so that it and all its children share one
  process group/session, and teardown SIGKILLs that group (``dagster dev`` ignores a polite stop
  of its children otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SCREENSHOT_DIR = REPO_ROOT / "bench" / "out" / "ui"  # git-ignored: for a person to look at
WINDOW = (1600, 1000)

T = TypeVar("T")


# ---- processes -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(lines[-n:])


@dataclass
class Server:
    """A server subprocess in its own session; ``stop()`` SIGKILLs the whole group and checks."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    cwd: Path = REPO_ROOT
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log_tail(self, n: int = 60) -> str:
        return f"--- last lines of {self.name} log ({self.log_path}) ---\n{tail(self.log_path, n)}"

    def check_alive(self) -> None:
        assert self.proc is not None, f"{self.name} was never started"
        rc = self.proc.poll()
        if rc is not None:
            raise AssertionError(f"{self.name} exited early with code {rc}\n{self.log_tail()}")

    def _pgrep(self, *args: str) -> set[str]:
        out = subprocess.run(["pgrep", *args], capture_output=True, text=True, timeout=10).stdout
        found = {p for p in out.split() if p.strip()} - {str(os.getpid())}
        return {p for p in found if not _is_zombie(p)}

    def session_pids(self) -> list[str]:
        """Live pids in the server's own session (all started by us)."""
        return sorted(self._pgrep("-s", str(self.proc.pid))) if self.proc is not None else []

    def leftover_pids(self) -> list[str]:
        """Live pids in the server's session or naming its port on their command line."""
        return sorted(set(self.session_pids()) | self._pgrep("-f", f"(-p|--port)[ =]{self.port}( |$)"))

    def stop(self, timeout: float = 20.0) -> None:
        """SIGKILL the process group, reap the leader, and wait until nothing of it is left."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pgid == pid: start_new_session=True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.leftover_pids() and time.monotonic() < deadline:
            for pid in self.session_pids():  # stragglers that left the group but not our session
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.5)
        left = self.leftover_pids()
        assert not left, f"{self.name}: processes still alive after SIGKILL of its group: {left}"


def _is_zombie(pid: str) -> bool:
    """A zombie (already dead, waiting to be reaped — PID 1 in a container may never do it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    server: Server | None = None,
    interval: float = 1.0,
) -> T:
    """Call ``probe`` until it returns something truthy; fail (with the server's log) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if server is not None:
            server.check_alive()
        try:
            result = probe()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    log = server.log_tail() if server is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last_error})\n{log}")


# ---- HTTP ------------------------------------------------------------------------------------
def http_json(url: str, payload: dict[str, Any] | None = None, *, timeout: float = 30.0) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def graphql(base_url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST a GraphQL query; raise with the server's errors when there are any."""
    body = http_json(f"{base_url}/graphql", {"query": query, "variables": variables or {}})
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {json.dumps(body['errors'])[:2000]}")
    return dict(body["data"])


# ---- browser ---------------------------------------------------------------------------------
def chromium_path() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def require_chromium() -> str:
    """The chromium binary; skip without one — but FAIL under CI=true (the UI must be checked there)."""
    path = chromium_path()
    if path is None:
        reason = "chromium not installed (run `bash scripts/install_browser.sh` as root)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


@dataclass
class PageCapture:
    png: Path
    dom: str
    attempts: int
    chromium_log: str


def capture_page(
    url: str,
    png: Path,
    *,
    must_contain: Iterable[str],
    budgets_ms: tuple[int, ...] = (15_000, 30_000, 60_000),
    timeout: float = 120.0,
) -> PageCapture:
    """Screenshot ``url`` with headless Chromium and dump its DOM in the same load.

    Retries with a longer virtual-time budget until the rendered DOM holds every string in
    ``must_contain`` (so a loading spinner never passes as the page); fails listing what is missing.
    """
    chromium = require_chromium()
    needles = list(must_contain)
    png.parent.mkdir(parents=True, exist_ok=True)
    missing: list[str] = needles
    log = ""
    for attempt, budget in enumerate(budgets_ms, start=1):
        profile = png.parent / f".chromium-profile-{png.stem}-{attempt}"
        shutil.rmtree(profile, ignore_errors=True)
        png.unlink(missing_ok=True)
        argv = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
            f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--virtual-time-budget={budget}", f"--screenshot={png}", "--dump-dom", url,
        ]  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            log = (exc.stderr or b"").decode(errors="replace")[-3000:]
            continue  # subprocess.run killed it; try again with the next budget
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        dom = proc.stdout.decode(errors="replace")
        log = proc.stderr.decode(errors="replace")[-3000:]
        missing = [n for n in needles if n not in dom]
        if png.is_file() and not missing:
            return PageCapture(png=png, dom=dom, attempts=attempt, chromium_log=log)
    raise AssertionError(
        f"{url}: after {len(budgets_ms)} attempts the page still lacks {missing} "
        f"(screenshot exists: {png.is_file()})\n--- chromium stderr tail ---\n{log}"
    )


def keep_for_people(png: Path, name: str) -> Path:
    """Copy a screenshot to bench/out/ui/<name> (git-ignored) so a person can look at it."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    dest = SCREENSHOT_DIR / name
    shutil.copyfile(png, dest)
    return dest


# ---- PNG -------------------------------------------------------------------------------------
@dataclass
class PngStats:
    width: int
    height: int
    distinct_colours: int
    dominant_share: float  # fraction of pixels that have the single most common colour


def png_stats(path: Path) -> PngStats:
    """Validate the PNG signature/IHDR by hand, then count colours with Pillow."""
    from PIL import Image

    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG (starts {raw[:8]!r})"
    length, ctype = struct.unpack(">I4s", raw[8:16])
    assert ctype == b"IHDR" and length == 13, f"{path}: first chunk is {ctype!r}, not IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    with Image.open(path) as img:
        img.load()  # decodes every IDAT: a truncated file fails here
        assert img.size == (width, height)
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=width * height) or []
    total = width * height
    dominant = max(count for count, _ in colours) if colours else total
    return PngStats(width, height, len(colours), dominant / total)


def assert_not_blank(path: Path, *, min_colours: int = 32, max_dominant: float = 0.97) -> PngStats:
    stats = png_stats(path)
    assert (stats.width, stats.height) == WINDOW, (
        f"{path}: size {stats.width}x{stats.height}, expected {WINDOW}"
    )
    assert stats.distinct_colours >= min_colours, (
        f"{path}: only {stats.distinct_colours} colours: blank page?"
    )
    assert stats.dominant_share <= max_dominant, (
        f"{path}: {stats.dominant_share:.1%} of pixels are one colour: blank page?"
    )
    return stats


def child_env(**overrides: str) -> dict[str, str]:
    """The test's environment, offline, with no API key, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DAGSTER_TELEMETRY_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env
