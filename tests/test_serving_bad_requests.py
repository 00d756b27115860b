"""Bad input and overload against the real server: always a clear 4xx (or 503/504 by design), never a 500.

A server without a token takes the battery (so auth cannot mask what is being tested); a
second server with a tiny queue and a 1 s timeout shows 503 + Retry-After and 504.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pumpl_serving.testing import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve-bad")
    srv = start_server(
        [
            "--model-path",
            str(tiny_model_dir),
            "--threads",
            "1",
            "--max-batch-size",
            "4",
            "--batch-timeout",
            "0.3",
            "--poll-interval",
            "0",
        ],
        log_path=tmp / "server.log",
        env={"PUMPL_DATA_ROOT": str(tmp / "data")},
    )
    yield srv
    srv.stop()


JSON = {"Content-Type": "application/json"}
LONG_WORDS = "word " * 1500  # < 8000 characters, > the tiny model's 1024-token context

# (id, path, raw body, headers, expected status, text the message must contain)
CASES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("invalid-json", "/generate", b"{bad json", JSON, 400, "not valid JSON"),
    ("truncated-json", "/generate", b'{"prompt": "hi"', JSON, 400, "not valid JSON"),
    ("empty-body", "/generate", b"", JSON, 422, "Field required"),
    ("json-null", "/generate", b"null", JSON, 422, "valid dictionary"),
    ("json-list", "/generate", b"[1, 2]", JSON, 422, "valid dictionary"),
    ("missing-prompt", "/generate", b'{"max_tokens": 5}', JSON, 422, "prompt: Field required"),
    ("empty-prompt", "/generate", b'{"prompt": ""}', JSON, 422, "prompt"),
    ("blank-prompt", "/generate", b'{"prompt": "  \\n "}', JSON, 422, "non-whitespace"),
    (
        "prompt-wrong-type",
        "/generate",
        b'{"prompt": 42}',
        JSON,
        422,
        "prompt: Input should be a valid string",
    ),
    (
        "prompt-too-long",
        "/generate",
        ('{"prompt": "' + "a" * 8001 + '"}').encode(),
        JSON,
        422,
        "at most 8000",
    ),
    ("max-tokens-zero", "/generate", b'{"prompt": "hi", "max_tokens": 0}', JSON, 422, "max_tokens"),
    ("max-tokens-huge", "/generate", b'{"prompt": "hi", "max_tokens": 100000}', JSON, 422, "max_tokens"),
    ("max-tokens-string", "/generate", b'{"prompt": "hi", "max_tokens": "lots"}', JSON, 422, "max_tokens"),
    ("temperature-negative", "/generate", b'{"prompt": "hi", "temperature": -0.1}', JSON, 422, "temperature"),
    ("temperature-high", "/generate", b'{"prompt": "hi", "temperature": 9}', JSON, 422, "temperature"),
    ("top-p-zero", "/generate", b'{"prompt": "hi", "top_p": 0}', JSON, 422, "top_p"),
    ("seed-negative", "/generate", b'{"prompt": "hi", "seed": -1}', JSON, 422, "seed"),
    ("too-many-stops", "/generate", b'{"prompt": "hi", "stop": ["a","b","c","d","e"]}', JSON, 422, "stop"),
    ("unknown-field", "/generate", b'{"prompt": "hi", "bogus": 1}', JSON, 422, "bogus: Extra inputs"),
    ("bad-level", "/generate", b'{"prompt": "hi", "level": "olympian"}', JSON, 422, "level"),
    ("bad-equipment", "/generate", b'{"prompt": "hi", "equipment": ["jetpack"]}', JSON, 422, "equipment"),
    ("text-plain", "/generate", b'{"prompt": "hi"}', {"Content-Type": "text/plain"}, 415, "application/json"),
    (
        "form-encoded",
        "/generate",
        b"prompt=hi",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "application/json",
    ),
    ("body-too-large", "/generate", b'{"prompt": "' + b"a" * (1 << 20) + b'"}', JSON, 413, "exceeds"),
    (
        "prompt-over-context",
        "/generate",
        ('{"raw": true, "prompt": "' + LONG_WORDS + '"}').encode(),
        JSON,
        413,
        "context",
    ),
    (
        "request-bad-goal",
        "/generate",
        b'{"prompt": "hi", "request": {"goal": "flying"}}',
        JSON,
        422,
        "request.goal",
    ),
    (
        "request-bad-minutes",
        "/generate",
        b'{"prompt": "hi", "request": {"minutes": 5}}',
        JSON,
        422,
        "request.minutes",
    ),
    (
        "request-unknown-field",
        "/generate",
        b'{"prompt": "hi", "request": {"mood": 1}}',
        JSON,
        422,
        "request.mood",
    ),
    ("request-wrong-type", "/generate", b'{"prompt": "hi", "request": [1]}', JSON, 422, "request"),
    (
        "request-empty-equipment",
        "/generate",
        b'{"prompt": "hi", "request": {"equipment": []}}',
        JSON,
        422,
        "equipment",
    ),
    ("raw-wrong-type", "/generate", b'{"prompt": "hi", "raw": "maybe"}', JSON, 422, "raw"),
    ("chat-no-messages", "/v1/chat/completions", b'{"messages": []}', JSON, 400, "user message"),
    ("chat-messages-wrong-type", "/v1/chat/completions", b'{"messages": "hi"}', JSON, 422, "messages"),
    (
        "chat-only-system",
        "/v1/chat/completions",
        b'{"messages": [{"role": "system", "content": "x"}]}',
        JSON,
        400,
        "user message",
    ),
    (
        "chat-empty-user",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": " "}]}',
        JSON,
        400,
        "empty",
    ),
    (
        "chat-bad-role",
        "/v1/chat/completions",
        b'{"messages": [{"role": "tool", "content": "x"}]}',
        JSON,
        400,
        "role",
    ),
    (
        "chat-n",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "n": 2}',
        JSON,
        400,
        "n=2",
    ),
    (
        "chat-temperature",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": 3}',
        JSON,
        422,
        "temperature",
    ),
    (
        "chat-max-tokens",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
        JSON,
        422,
        "max_tokens",
    ),
    (
        "chat-image",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "http://x/y.png"}]}]}',
        JSON,
        400,
        "text",
    ),
    ("chat-invalid-json", "/v1/chat/completions", b"{nope", JSON, 400, "not valid JSON"),
    (
        "chat-text-plain",
        "/v1/chat/completions",
        b"{}",
        {"Content-Type": "text/plain"},
        415,
        "application/json",
    ),
]


@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_clear_4xx(
    server: ServerProcess, case: tuple[str, str, bytes, dict[str, str], int, str]
):
    _, path, body, headers, expected, needle = case
    r = httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=60)
    assert r.status_code == expected, (r.status_code, r.text[:500])
    detail = r.json()["detail"]
    assert needle in (detail if isinstance(detail, str) else str(detail)), detail
    assert len(r.content) < 5000  # no echo of a megabyte body / prompt


@pytest.mark.integration
def test_wrong_method_and_unknown_path(server: ServerProcess):
    assert httpx.get(f"{server.url}/generate").status_code == 405
    assert httpx.post(f"{server.url}/nope", json={}).status_code == 404


@pytest.mark.integration
def test_server_stays_healthy_and_bad_rows_do_not_fail_their_batch(server: ServerProcess):
    """After the battery: still healthy; a bad row batched with good ones fails alone."""
    assert httpx.get(f"{server.url}/health").status_code == 200
    good = {"prompt": "hello", "max_tokens": 8}
    bad = {"prompt": LONG_WORDS, "max_tokens": 8, "raw": True}

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{server.url}/generate", json=body, timeout=120)

    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(post, [good, bad, good, good]))
    assert [r.status_code for r in results] == [200, 413, 200, 200], [r.text[:200] for r in results]
    info = httpx.get(f"{server.url}/info").json()
    assert info["metrics"]["generate"]["item_errors"] >= 1
    assert "Traceback" not in server.log_text()
    # A huge plain-language prompt is read, not fed to the model: no context overflow.
    plan = httpx.post(f"{server.url}/generate", json={"prompt": LONG_WORDS, "max_tokens": 4}, timeout=120)
    assert plan.status_code == 200 and plan.json()["request"]["defaults_used"][0] == "goal"
    assert httpx.get(f"{server.url}/health").status_code == 200


# ------------------------------------------------------------------------------------------
# Overload: bounded queue → 503 + Retry-After; per-request timeout → 504
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve-small")
    srv = start_server(
        [
            "--model-path",
            str(tiny_model_dir),
            "--threads",
            "1",
            "--max-batch-size",
            "1",
            "--max-queue",
            "2",
            "--timeout",
            "1",
            "--poll-interval",
            "0",
        ],
        log_path=tmp / "server.log",
        env={"PUMPL_DATA_ROOT": str(tmp / "data")},
    )
    yield srv
    srv.stop()


@pytest.mark.integration
def test_queue_full_503_with_retry_after_and_timeout_504(small_server: ServerProcess):
    slow = {
        "prompt": "hello",
        "max_tokens": 2048,
        "temperature": 1.0,
        "seed": 1,
        "raw": True,
    }  # ~1000 tokens: > 1 s

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{small_server.url}/generate", json=slow, timeout=60)

    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {200, 503, 504}, codes
    busy = [r for r in results if r.status_code == 503]
    assert busy, codes
    for r in busy:
        assert r.headers["retry-after"].isdigit()
        assert "retry" in r.json()["detail"]
    timed_out = [r for r in results if r.status_code == 504]
    assert timed_out, codes
    assert "timeout" in timed_out[0].json()["detail"]

    info = httpx.get(f"{small_server.url}/info").json()["metrics"]["http"]
    assert info["rejected_queue_full"] >= len(busy) and info["timed_out"] >= len(timed_out)
    # The server recovers: healthy, and a short request succeeds once the backlog drained.
    assert httpx.get(f"{small_server.url}/health").status_code == 200
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        status = httpx.post(
            f"{small_server.url}/generate", json={"prompt": "hi", "max_tokens": 4}, timeout=30
        )
        if status.status_code == 200:
            break
        time.sleep(1.0)
    assert status is not None and status.status_code == 200, status.text if status else None
