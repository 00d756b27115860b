"""A real local HTTP server speaking enough of Anthropic's Messages API for teacher tests.

``POST /v1/messages`` answers with proper Messages-API JSON (``id``, ``type``,
``role``, ``model``, ``content``, ``stop_reason``, ``usage``) or proper error bodies
(``{"type": "error", "error": {"type": ..., "message": ...}}``). By default it answers
with a valid plan: it parses the request back from the first line of the first user message (the
teacher writes :func:`prompts.request_to_prompt` there; :func:`request_text.parse_request` reads that
canonical layout exactly) and runs the offline coach on it.

Tests script the next replies, consumed one per HTTP request in order::

    with FakeMessagesAPI(catalogue) as api:
        api.script("rate_limit", "overloaded", "ok")
        ...
        assert api.count == 3

Actions: ``ok``, ``rate_limit`` (429 + retry-after), ``overloaded`` (529),
``server_error`` (500), ``auth`` (401), ``bad_request`` (400), ``delay`` (sleeps
``delay_s`` then answers ok — longer than a short client timeout), ``no_tool_use`` (a
text-only reply), ``invalid_json`` (a tool_use whose input / a text block that is
not JSON), ``schema_invalid`` (JSON that is not a plan), ``domain_invalid`` (a
schema-valid plan whose every session is about twice too long).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.request_text import parse_request
from pumpl_assets.core.schemas import RequestSpec, dump_plan
from pumpl_assets.core.teachers.offline import PlanningError, plan_for_request

ACTIONS = (
    "ok",
    "rate_limit",
    "overloaded",
    "server_error",
    "auth",
    "bad_request",
    "delay",
    "no_tool_use",
    "invalid_json",
    "schema_invalid",
    "domain_invalid",
)


class FakeMessagesAPI:
    def __init__(
        self, catalogue: ExerciseCatalogue, *, retry_after_s: float = 0.05, delay_s: float = 1.5
    ) -> None:
        self.catalogue = catalogue
        self.retry_after_s = retry_after_s
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._n = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------

    def script(self, *actions: str) -> None:
        for a in actions:
            if a not in ACTIONS:
                raise ValueError(f"unknown action {a!r}; choose from {ACTIONS}")
        with self._lock:
            self._script.extend(actions)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeMessagesAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                api._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeMessagesAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- protocol ----------------------------------------------------------------------------------

    def _next_action(self) -> str:
        with self._lock:
            return self._script.popleft() if self._script else "ok"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = None
        with self._lock:
            self.requests.append({"path": h.path, "headers": dict(h.headers.items()), "body": body})
            self._n += 1
            n = self._n
        if h.path.split("?")[0] != "/v1/messages" or not isinstance(body, dict):
            self._send(h, 404, _error("not_found_error", f"no route {h.path}"))
            return
        action = self._next_action()
        if action == "rate_limit":
            self._send(
                h,
                429,
                _error("rate_limit_error", "Number of requests has exceeded your rate limit"),
                {"retry-after": str(self.retry_after_s)},
            )
        elif action == "overloaded":
            self._send(h, 529, _error("overloaded_error", "Overloaded"))
        elif action == "server_error":
            self._send(h, 500, _error("api_error", "Internal server error"))
        elif action == "auth":
            self._send(h, 401, _error("authentication_error", "invalid x-api-key"))
        elif action == "bad_request":
            self._send(h, 400, _error("invalid_request_error", "messages: field required"))
        else:
            if action == "delay":
                time.sleep(self.delay_s)
            self._send(h, 200, self._message(body, action, n))

    def _message(self, body: dict[str, Any], action: str, n: int) -> dict[str, Any]:
        tool_mode = bool(body.get("tools"))
        messages = body.get("messages") or []
        first = messages[0]["content"] if messages else ""
        prompt = first if isinstance(first, str) else json.dumps(first)
        answer: Any
        request = _request_of(prompt)
        if request is None:
            answer = {"error": "could not parse the request"}
        else:
            try:
                plan = json.loads(dump_plan(plan_for_request(request, self.catalogue)))
            except PlanningError as e:
                plan = {"error": f"cannot plan: {e}"}
            if action == "domain_invalid" and "sessions" in plan:
                for session in plan["sessions"]:
                    for ex in session["main"]:
                        ex["sets"] = min(8, ex["sets"] * 2 + 2)
            answer = plan
        if action == "schema_invalid":
            answer = {"title": "x", "sessions": "not a list of sessions"}
        content: list[dict[str, Any]]
        if action == "no_tool_use":
            content = [{"type": "text", "text": "Here is a great plan for you: do some squats."}]
            stop = "end_turn"
        elif tool_mode:
            tool_input: Any = "{not valid json" if action == "invalid_json" else answer
            content = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{n:06d}",
                    "name": body["tools"][0]["name"],
                    "input": tool_input,
                }
            ]
            stop = "tool_use"
        else:
            text = "{not valid json" if action == "invalid_json" else json.dumps(answer)
            content = [{"type": "text", "text": text}]
            stop = "end_turn"
        return {
            "id": f"msg_fake_{n:06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 100 + len(json.dumps(messages)) // 4,
                "output_tokens": len(json.dumps(content)) // 4,
            },
        }

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        with self._lock:
            self.statuses.append(status)
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            h.send_header("request-id", f"req_fake_{len(self.statuses)}")
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


def _request_of(prompt: str) -> RequestSpec | None:
    """The request in the prompt's first line (``Goal: ... Limitations: ...[ Focus: ...]``)."""
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    if not first_line.startswith("Goal:"):
        return None
    understood = parse_request(first_line)
    # the canonical layout sets every field but an absent focus; anything else fell back to defaults
    return None if set(understood.defaults_used) - {"focus"} else understood.spec


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}
