"""Load against the real LitServe server (tiny model, loopback): no failures under concurrency,
and a clean 503 + Retry-After (never another 5xx) when the queue bound is hit.

* 50 concurrent clients x 20 requests (4 of 5 on ``/generate``, 1 of 5 on
  ``/v1/chat/completions``), ``max_tokens`` 8, all inside a 180 s cap: every request
  answers 200 with a well-formed body; p50/p99 latency is printed and attached to the test
  report (``record_property``); ``/info`` shows the requests were dynamically batched and
  none was rejected or timed out.
* A burst of 40 simultaneous requests against ``--max-queue 4``: some answer 503 with a
  ``Retry-After`` header, all others 200, nothing else; ``/info`` counted exactly the 503s
  we saw; ``/health`` and a new request are fine afterwards.
"""

from __future__ import annotations

import collections
import json
import math
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pumpl_serving.testing import ServerProcess, start_server

pytestmark = pytest.mark.integration

GENERATE = "/generate"
CHAT = "/v1/chat/completions"
CLIENTS = 50
REQUESTS_PER_CLIENT = 20
MAX_TOKENS = 8
CAP_S = 180.0  # the whole load run must finish inside this
LOAD_QUEUE = 64  # > CLIENTS: the load run must never see 503

BURST = 40
BURST_QUEUE = 4


def _server(tiny_model_dir: Path, tmp: Path, *extra: str) -> ServerProcess:
    return start_server(
        ["--model-path", str(tiny_model_dir), "--threads", "1", "--poll-interval", "0", *extra],
        log_path=tmp / "server.log",
        env={"PUMPL_DATA_ROOT": str(tmp / "data")},
    )


def _stop(srv: ServerProcess) -> None:
    srv.stop()
    assert srv.proc.poll() is not None, "server process still running after stop()"
    assert not srv.group_alive(), "LitServe processes outlived the server"


@pytest.fixture(scope="module")
def load_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = _server(
        tiny_model_dir,
        tmp_path_factory.mktemp("serve-load"),
        *("--max-batch-size", "8", "--batch-timeout", "0.02", "--max-queue", str(LOAD_QUEUE)),
        *("--timeout", "120"),
    )
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def small_queue_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = _server(
        tiny_model_dir,
        tmp_path_factory.mktemp("serve-queue"),
        *("--max-batch-size", "2", "--batch-timeout", "0.05", "--max-queue", str(BURST_QUEUE)),
        *("--timeout", "120"),
    )
    yield srv
    _stop(srv)


@dataclass
class Result:
    client: int
    path: str
    status: int  # -1: no HTTP answer (connection error, client timeout)
    seconds: float
    problem: str | None = None
    completion_tokens: int = 0


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _check_body(path: str, body: dict[str, Any]) -> str | None:
    """Why a 200 body is malformed, or None."""
    if path == GENERATE:
        u = body.get("usage") or {}
        if not isinstance(body.get("text"), str):
            return "no text"
        if not 1 <= u.get("completion_tokens", 0) <= MAX_TOKENS:
            return f"completion_tokens {u.get('completion_tokens')} not in 1..{MAX_TOKENS}"
        return None
    choices = body.get("choices") or []
    if len(choices) != 1 or not isinstance(choices[0].get("message", {}).get("content"), str):
        return "no choices[0].message.content"
    # Chat usage re-tokenizes the decoded text, which can exceed the tokens actually generated
    # (reported, counted in chat_usage_over_max_tokens, not a failed request); it is never 0.
    if (body.get("usage") or {}).get("completion_tokens", 0) < 1:
        return f"usage {body.get('usage')}"
    return None


def _load_client(
    url: str, client_id: int, start: threading.Barrier, deadline: list[float], out: list[Result]
) -> None:
    with httpx.Client(base_url=url, timeout=CAP_S) as http:
        start.wait()
        for i in range(REQUESTS_PER_CLIENT):
            if time.monotonic() > deadline[0]:
                return  # past the cap: the missing requests fail the test
            seed = client_id * 1000 + i
            if i % 5 == 4:
                path = CHAT
                payload: dict[str, Any] = {
                    "model": "pumpl",
                    "messages": [{"role": "user", "content": f"Client {client_id} asks {i}: one tip?"}],
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0.7,
                }
            else:
                path = GENERATE
                payload = {
                    "prompt": f"Client {client_id}, request {i}: suggest a warm-up",
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0.7,
                    "seed": seed,
                }
            t0 = time.perf_counter()
            try:
                r = http.post(path, json=payload)
            except httpx.HTTPError as exc:
                out.append(
                    Result(client_id, path, -1, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
                )
                continue
            dt = time.perf_counter() - t0
            problem = None
            if r.status_code != 200:
                problem = f"HTTP {r.status_code}: {r.text[:200]}"
            tokens = 0
            if r.status_code == 200:
                try:
                    body = r.json()
                    problem = _check_body(path, body)
                    tokens = int((body.get("usage") or {}).get("completion_tokens", 0))
                except ValueError as exc:
                    problem = f"body is not JSON: {exc}"
            out.append(Result(client_id, path, r.status_code, dt, problem, tokens))


def test_load_50_clients_no_failures(load_server: ServerProcess, record_property: Any) -> None:
    url = load_server.url
    before = httpx.get(f"{url}/info", timeout=10).json()["metrics"]
    results: list[Result] = []  # list.append is atomic under the GIL
    start = threading.Barrier(CLIENTS + 1)
    deadline = [float("inf")]
    threads = [
        threading.Thread(target=_load_client, args=(url, c, start, deadline, results), daemon=True)
        for c in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + CAP_S
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=max(1.0, deadline[0] - time.monotonic() + 30))
    wall = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads), f"clients still running after the {CAP_S:g} s cap"

    expected = CLIENTS * REQUESTS_PER_CLIENT
    failed = [r for r in results if r.problem is not None]
    lat = sorted(r.seconds for r in results)
    per_path = {p: sorted(r.seconds for r in results if r.path == p) for p in (GENERATE, CHAT)}
    stats: dict[str, Any] = {
        "requests": len(results),
        "failed": len(failed),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(results) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(1000 * _percentile(lat, 50), 1) if lat else None,
        "p99_ms": round(1000 * _percentile(lat, 99), 1) if lat else None,
        "max_ms": round(1000 * lat[-1], 1) if lat else None,
        "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
    }
    for p, v in per_path.items():
        name = p.strip("/").replace("/", "_")
        if v:
            stats[f"{name}_n"] = len(v)
            stats[f"{name}_p50_ms"] = round(1000 * _percentile(v, 50), 1)
            stats[f"{name}_p99_ms"] = round(1000 * _percentile(v, 99), 1)
    after = httpx.get(f"{url}/info", timeout=10).json()["metrics"]
    gen_batches = after["generate"]["batches"] - before["generate"]["batches"]
    gen_requests = after["generate"]["requests"] - before["generate"]["requests"]
    stats["generate_mean_batch"] = round(gen_requests / gen_batches, 2) if gen_batches else 0.0
    stats["generate_max_batch"] = after["generate"]["max_batch"]
    stats["chat_usage_over_max_tokens"] = sum(
        1 for r in results if r.path == CHAT and r.completion_tokens > MAX_TOKENS
    )
    print(f"\nload: {json.dumps(stats)}")
    for key, value in stats.items():
        record_property(f"load_{key}", value)

    statuses = collections.Counter(r.status for r in results)
    assert not failed, f"{len(failed)} of {len(results)} requests failed ({dict(statuses)}): " + "; ".join(
        f"{r.path} {r.problem}" for r in failed[:5]
    )
    assert len(results) == expected, f"only {len(results)} of {expected} requests ran within {CAP_S:g} s"
    assert wall < CAP_S
    assert statuses == {200: expected}
    assert stats["generate_n"] == CLIENTS * 16 and stats["v1_chat_completions_n"] == CLIENTS * 4
    # The load really was batched and nothing was shed or timed out.
    assert gen_requests == CLIENTS * 16, (before["generate"], after["generate"])
    assert after["generate"]["max_batch"] > 1 and gen_batches < gen_requests
    http_after = after["http"]
    assert http_after["rejected_queue_full"] == before["http"]["rejected_queue_full"] == 0
    assert http_after["timed_out"] == 0 and http_after["in_flight"] == 0
    assert http_after["model_requests"] - before["http"]["model_requests"] == expected
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_burst_over_small_queue_gets_503_with_retry_after(
    small_queue_server: ServerProcess, record_property: Any
) -> None:
    url = small_queue_server.url
    responses: list[tuple[int, dict[str, str], str]] = []
    errors: list[str] = []
    start = threading.Barrier(BURST)

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            start.wait()
            try:
                r = http.post(
                    GENERATE,
                    json={
                        "prompt": f"burst {i}: plan a long session",
                        "max_tokens": 64,
                        "temperature": 1.0,
                        "seed": i,
                    },
                )
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            responses.append((r.status_code, dict(r.headers), r.text))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(BURST)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    wall = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads), "burst clients still waiting after 150 s"
    assert not errors, errors[:5]

    statuses = collections.Counter(s for s, _, _ in responses)
    print(f"\nburst of {BURST} over --max-queue {BURST_QUEUE}: {dict(statuses)} in {wall:.1f} s")
    record_property("burst_statuses", json.dumps(dict(statuses)))
    assert len(responses) == BURST
    assert set(statuses) <= {200, 503}, f"unexpected statuses {dict(statuses)}"
    assert statuses[503] >= 1, "the burst never hit the queue bound"
    assert statuses[200] >= 1, "nothing was served during the burst"
    for status, headers, text in responses:
        if status == 503:
            assert headers.get("retry-after", "").isdigit() and int(headers["retry-after"]) >= 1, headers
            body = json.loads(text)
            assert body["error"]["type"] == "server_overloaded" and "busy" in body["detail"], body
        else:
            assert json.loads(text)["usage"]["completion_tokens"] >= 1

    info = httpx.get(f"{url}/info", timeout=10).json()["metrics"]["http"]
    assert info["rejected_queue_full"] == statuses[503], info
    assert info["in_flight"] == 0 and info["timed_out"] == 0, info
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    r = httpx.post(f"{url}{GENERATE}", json={"prompt": "after the burst", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text
