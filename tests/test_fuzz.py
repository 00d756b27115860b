"""Schemathesis fuzz of the real LitServe server (tiny model) from its own OpenAPI schema.

Every operation in ``/openapi.json`` (``/generate``, ``/v1/chat/completions``, ``/info``,
``/health``, ``/``, ``/litserve/info``) is fuzzed with schemathesis 4 strategies:

* **as served** — positive and negative cases from the schema exactly as the server
  publishes it (bad types, missing fields, out-of-range numbers, non-JSON bytes, ...);
* **model-reaching** — positive cases from a *tightened copy* of the schema (a prompt /
  user message with non-blank text, OpenAI fields inside the ranges the server accepts), so
  a large share of cases really runs the model instead of stopping at validation. The
  server's own chat schema is far looser than what it accepts (any role, any temperature),
  so without this copy almost no chat case would get past ``validate_chat_request``.

Generation length is bounded so ~1,300 cases finish in minutes on two shared CPU cores: any
*valid* ``max_tokens`` / ``max_completion_tokens`` (1..2048) is mapped into 1..8 and chat
and ``/generate`` cases without one get 8; invalid values (0, negative, > 2048, strings) are sent unchanged.

Pass criteria: >= 1,000 cases sent, no response >= 500 (schemathesis's
``not_a_server_error`` check plus our own status check; the queue is sized so 503 cannot
happen), every 200 from ``/generate`` matches :class:`GenerateResponse`, both model routes
answered 200 many times, the server log holds no request error, and ``/health`` is still 200.
The status histogram is printed and attached to the report (``record_property``).

Cases are generated with a fixed Hypothesis seed (``PUMPL_FUZZ_SEED`` overrides it), so a
failure reproduces; each failure is reported as a curl command.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import copy
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from pumpl_serving.api import GenerateResponse
from pumpl_serving.testing import ServerProcess, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FUZZ_SEED = int(os.environ.get("PUMPL_FUZZ_SEED", "20251125"))
MIN_CASES = 1000
MAX_NEW_TOKENS = 8  # generation bound applied to valid max_tokens values
CLIENT_THREADS = 8  # < --max-batch-size * 2 and far below --max-queue: no 503 by construction
MAX_QUEUE = 256
REQUEST_TIMEOUT_S = 90.0

GENERATE = "/generate"
CHAT = "/v1/chat/completions"

# (schema variant, operation label, generation mode, max_examples)
PLAN: list[tuple[str, str, str, int]] = [
    ("served", f"POST {GENERATE}", "positive", 250),
    ("served", f"POST {GENERATE}", "negative", 250),
    ("served", f"POST {CHAT}", "positive", 100),
    ("served", f"POST {CHAT}", "negative", 250),
    ("tightened", f"POST {GENERATE}", "positive", 200),
    ("tightened", f"POST {CHAT}", "positive", 250),
    # Parameterless operations: Hypothesis can only make one distinct case each.
    ("served", "GET /health", "positive", 5),
    ("served", "GET /info", "positive", 5),
    ("served", "GET /", "positive", 5),
    ("served", "GET /litserve/info", "positive", 5),
    ("served", f"OPTIONS {CHAT}", "positive", 5),
]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve-fuzz")
    srv = start_server(
        [
            "--model-path",
            str(tiny_model_dir),
            "--threads",
            "1",
            "--max-batch-size",
            "8",
            "--batch-timeout",
            "0.02",
            "--max-queue",
            str(MAX_QUEUE),
            "--timeout",
            "120",
            "--poll-interval",
            "0",
        ],
        log_path=tmp / "server.log",
        env={"PUMPL_DATA_ROOT": str(tmp / "data")},
    )
    yield srv
    srv.stop()
    assert srv.proc.poll() is not None
    assert not srv.group_alive(), "LitServe processes outlived the fuzz server"


# ------------------------------------------------------------------------------------------
# Schema variants
# ------------------------------------------------------------------------------------------

NON_BLANK = r"\S"  # unanchored: the string contains at least one non-whitespace character


def tightened_schema(openapi: dict[str, Any]) -> dict[str, Any]:
    """A copy of the served schema whose positive cases pass the server's own validation.

    Only narrows what the server publishes (never widens it): non-blank prompts, one to three
    chat messages of known roles with at least one non-blank user message, OpenAI sampling
    fields inside the ranges ``validate_chat_request`` accepts, small ``max_tokens``.
    """
    doc = copy.deepcopy(openapi)
    comps = doc["components"]["schemas"]

    gen = comps["GenerateRequest"]["properties"]
    gen["prompt"] = {**gen["prompt"], "pattern": NON_BLANK, "maxLength": 400}
    gen["max_tokens"] = {"type": "integer", "minimum": 1, "maximum": MAX_NEW_TOKENS}
    gen["system_prompt"] = {"anyOf": [{"type": "string", "maxLength": 400}, {"type": "null"}]}

    comps["ChatMessage"] = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant"]},
            "content": {
                "anyOf": [
                    {"type": "string", "maxLength": 400},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 2,
                        "items": {
                            "type": "object",
                            "required": ["type", "text"],
                            "properties": {
                                "type": {"const": "text"},
                                "text": {"type": "string", "maxLength": 200},
                            },
                        },
                    },
                ]
            },
        },
    }
    user_msg = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"const": "user"},
            "content": {"type": "string", "minLength": 1, "maxLength": 400, "pattern": NON_BLANK},
        },
    }
    chat = comps["ChatCompletionRequest"]["properties"]
    small = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_NEW_TOKENS}, {"type": "null"}]}
    chat["messages"] = {
        "type": "array",
        "minItems": 1,
        "maxItems": 3,
        "items": {"$ref": "#/components/schemas/ChatMessage"},
        "contains": user_msg,
    }
    chat["temperature"] = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 2}, {"type": "null"}]}
    chat["top_p"] = {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 1}, {"type": "null"}]}
    chat["n"] = {"anyOf": [{"const": 1}, {"type": "null"}]}
    chat["max_tokens"] = small
    chat["max_completion_tokens"] = small
    chat["stop"] = {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "maxItems": 4, "items": {"type": "string"}},
            {"type": "null"},
        ]
    }
    chat["tools"] = {"type": "null"}
    chat.pop("tool_choice", None)
    comps["ChatCompletionRequest"]["required"] = ["messages", "max_tokens"]
    return doc


def bound_generation(case: Any) -> None:
    """Keep generation short: map a *valid* token budget into 1..8; give chat a budget of 8.

    Invalid values (0, negative, > 2048, strings, floats with a fraction) are left alone so the
    server still has to reject them.
    """
    body = case.body
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if v == int(v) and MAX_NEW_TOKENS < v <= 2048:
            body[key] = type(v)(1 + int(v) % MAX_NEW_TOKENS)
    if case.path == CHAT and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_NEW_TOKENS
    # Every /generate prompt is now a plan request decoded under its grammar: without a budget the
    # default (a whole plan: PLAN_MAX_TOKENS) would decode a long plan per case.
    if case.path == GENERATE and "max_tokens" not in body:
        body["max_tokens"] = MAX_NEW_TOKENS


# ------------------------------------------------------------------------------------------
# Generation and sending
# ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    variant: str
    case: Any
    mode: str
    status: int
    seconds: float
    failure: str | None
    body: str

    @property
    def label(self) -> str:
        return str(self.case.operation.label)


def generate_cases(schema: Any, label: str, mode: str, n: int) -> list[Any]:
    """Up to ``n`` schemathesis cases for one operation (fewer when the space is smaller)."""
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    op = schema.find_operation_by_label(label)
    assert op is not None, f"{label} is not in the server's OpenAPI schema"
    out: list[Any] = []

    @seed(FUZZ_SEED)
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
    def collect(case: Any) -> None:
        out.append(case)

    with contextlib.suppress(Unsatisfiable):  # no distinct input left (parameterless operation)
        collect()
    return out


def send_cases(url: str, items: list[tuple[str, str, Any]]) -> list[Outcome]:
    """Send every case (thread pool, one requests.Session per thread) and run the 5xx check."""
    from schemathesis.checks import not_a_server_error

    local = threading.local()

    def one(item: tuple[str, str, Any]) -> Outcome:
        variant, mode, case = item
        bound_generation(case)
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        t0 = time.perf_counter()
        resp = case.call(base_url=url, session=session, timeout=REQUEST_TIMEOUT_S)
        dt = time.perf_counter() - t0
        failure = None
        try:
            case.validate_response(resp, checks=[not_a_server_error])
        except BaseException as exc:  # schemathesis raises a FailureGroup (a BaseExceptionGroup)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failure = f"schemathesis {type(exc).__name__} (status {resp.status_code})"
        if resp.status_code >= 500 and failure is None:
            failure = f"status {resp.status_code}"
        if failure is None and case.path == GENERATE and resp.status_code == 200:
            try:
                GenerateResponse.model_validate(resp.json())
            except Exception as exc:
                failure = f"200 body does not match GenerateResponse: {exc}"
        return Outcome(variant, case, mode, resp.status_code, dt, failure, resp.text[:300])

    with cf.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        return list(pool.map(one, items))


def curl(case: Any, url: str) -> str:
    """A curl command reproducing the case."""
    parts = [f"curl -X {case.method.upper()} '{url}{case.formatted_path}'"]
    body = case.body
    if isinstance(body, bytes | str):
        parts.append(f"-H 'Content-Type: {case.media_type}' --data-binary {body!r}")
    elif isinstance(body, dict | list) or (body is None and case.media_type):
        parts.append(f"-H 'Content-Type: {case.media_type}' -d '{json.dumps(body)}'")
    return " ".join(parts)


def explain_failures(url: str, failures: list[Outcome], total: int, limit: int = 40) -> str:
    """Re-send failed cases one at a time: a case that fails alone is a root cause; one that
    passes alone only failed because a batch-mate broke the whole dynamic batch."""
    alone_fail: list[tuple[Outcome, int]] = []
    alone_ok: list[tuple[Outcome, int]] = []
    by_label: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in failures:
        by_label[o.label].append(o)
    queues = list(by_label.values())
    picked = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)][:limit]  # round robin
    with requests.Session() as session:
        for o in picked:
            status = o.case.call(base_url=url, session=session, timeout=REQUEST_TIMEOUT_S).status_code
            (alone_fail if status >= 500 else alone_ok).append((o, status))
    lines = [
        f"{len(failures)} of {total} fuzz cases failed; of {len(picked)} re-sent one at a time (round robin "
        f"over operations), {len(alone_fail)} fail again (root causes) and {len(alone_ok)} pass (they failed only "
        "because another request in the same dynamic batch broke it):"
    ]
    lines.append(
        "  failures per operation: " + ", ".join(f"{k}: {len(v)}" for k, v in sorted(by_label.items()))
    )
    for o, status in alone_fail[:10]:
        lines.append(f"- ROOT {o.label} [{o.status}, alone {status}] {o.failure}: {o.body[:120]}")
        lines.append(f"    {curl(o.case, url)}")
    for o, status in alone_ok[:3]:
        lines.append(f"- COLLATERAL {o.label} [{o.status}, alone {status}]: {curl(o.case, url)}")
    return "\n".join(lines)


def request_errors_in_log(log: str) -> list[str]:
    needles = ("Error while handling request", "Traceback (most recent call last)", "Internal Server Error")
    return [line for line in log.splitlines() if any(n in line for n in needles)]


# ------------------------------------------------------------------------------------------
# The test
# ------------------------------------------------------------------------------------------


def test_fuzz_openapi_no_server_errors(server: ServerProcess, record_property: Any) -> None:
    import schemathesis

    t_start = time.perf_counter()
    served = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    paths = served["paths"]
    assert "post" in paths[GENERATE] and "post" in paths[CHAT], sorted(paths)
    for path in (GENERATE, CHAT):  # the custom bodies are described, so real bodies get generated
        body_schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body_schema.get("$ref"), f"{path} has no request body schema"
    variants = {
        "served": schemathesis.openapi.from_dict(served),
        "tightened": schemathesis.openapi.from_dict(tightened_schema(served)),
    }
    for loaded in variants.values():
        # Sanitization masks (in place!) any body key containing "token", e.g. max_tokens.
        loaded.config.output.sanitization.update(enabled=False)

    items: list[tuple[str, str, Any]] = []
    for variant, label, mode, n in PLAN:
        items += [(variant, mode, c) for c in generate_cases(variants[variant], label, mode, n)]
    t_generated = time.perf_counter()
    outcomes = send_cases(server.url, items)
    t_sent = time.perf_counter()

    hist = collections.Counter((o.label, o.variant, o.mode, o.status) for o in outcomes)
    by_status = collections.Counter(o.status for o in outcomes)
    lines = [
        f"{label:<32} {variant:<9} {mode:<8} {status}: {n}"
        for (label, variant, mode, status), n in sorted(hist.items())
    ]
    lat = sorted(o.seconds for o in outcomes)
    summary = (
        f"fuzz: {len(outcomes)} cases (seed {FUZZ_SEED}); generated in {t_generated - t_start:.1f} s, "
        f"sent in {t_sent - t_generated:.1f} s; statuses {dict(sorted(by_status.items()))}; "
        f"slowest {lat[-1]:.2f} s"
    )
    print("\n" + summary + "\n" + "\n".join(lines))
    record_property("fuzz_cases", len(outcomes))
    record_property("fuzz_status_histogram", json.dumps({str(k): v for k, v in sorted(by_status.items())}))
    record_property("fuzz_histogram_by_operation", "\n".join(lines))

    failures = [o for o in outcomes if o.failure is not None]
    assert not failures, explain_failures(server.url, failures, len(outcomes))
    assert len(outcomes) >= MIN_CASES, summary
    assert all(o.status < 500 for o in outcomes)
    ok = collections.Counter(o.label for o in outcomes if o.status == 200)
    rejected = collections.Counter(o.label for o in outcomes if 400 <= o.status < 500)
    # The model really ran for many cases on both model routes, and bad input was rejected.
    assert ok[f"POST {GENERATE}"] >= 200 and ok[f"POST {CHAT}"] >= 100, dict(ok)
    assert rejected[f"POST {GENERATE}"] >= 100 and rejected[f"POST {CHAT}"] >= 100, dict(rejected)
    assert not request_errors_in_log(server.log_text()), "\n".join(
        request_errors_in_log(server.log_text())[:10]
    )
    info = httpx.get(f"{server.url}/info", timeout=10).json()
    assert info["metrics"]["http"]["rejected_queue_full"] == 0 and info["metrics"]["http"]["timed_out"] == 0
    assert info["metrics"]["http"]["in_flight"] == 0
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
