"""One pure-ASGI gate in front of every route: auth, body checks, queue bound, timeout.

In order, for each HTTP request:

1. **Auth** — when a bearer token is configured (``PUMPL_SERVE_TOKEN``), every path except
   ``/health`` needs ``Authorization: Bearer <token>`` (compared in constant time); else 401.
   The token is never logged or echoed.
2. **Body** — on the model routes (POST ``/generate``, ``/v1/chat/completions``): a declared
   content type other than JSON → 415; a body over ``max_body_bytes`` → 413.
3. **Queue bound** — at most ``max_queue`` model requests in flight (queued or generating,
   across all HTTP server processes: a shared counter); one more → 503 with ``Retry-After``.
4. **Timeout** — a model request that has not started its response within ``timeout``
   seconds → 504 with a message saying so (a streaming response, once started, runs on).

Error bodies are JSON ``{"detail": ..., "error": {"message": ..., "type": ...}}`` so both
FastAPI-style and OpenAI-style clients read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("pumpl_serving")

# Shared counters (multiprocessing.Array('q', N)); indices:
IN_FLIGHT, REJECTED_QUEUE_FULL, TIMED_OUT, UNAUTHORIZED, MODEL_REQUESTS = range(5)
N_COUNTERS = 5
COUNTER_NAMES = {
    IN_FLIGHT: "in_flight",
    REJECTED_QUEUE_FULL: "rejected_queue_full",
    TIMED_OUT: "timed_out",
    UNAUTHORIZED: "unauthorized",
    MODEL_REQUESTS: "model_requests",
}

OPEN_PATHS = frozenset({"/health"})


async def send_error(
    send: Send, status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(
        {"detail": message, "error": {"message": message, "type": kind, "code": status}}
    ).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class GateMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        counters: Any,
        model_paths: frozenset[str],
        max_queue: int,
        timeout: float,
        max_body_bytes: int,
        token: str | None = None,
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
        self.counters = counters
        self.model_paths = model_paths
        self.max_queue = max_queue
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self._token = token.encode() if token else None
        self.retry_after_s = retry_after_s

    def _bump(self, idx: int, delta: int = 1) -> int:
        with self.counters.get_lock():
            self.counters[idx] += delta
            return int(self.counters[idx])

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None:
            return True
        auth = _header(scope, b"authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path not in OPEN_PATHS and not self._authorized(scope):
            self._bump(UNAUTHORIZED)
            await send_error(
                send,
                401,
                "missing or invalid bearer token: send 'Authorization: Bearer <PUMPL_SERVE_TOKEN>'",
                "authentication_error",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        if path not in self.model_paths or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        await self._model_request(scope, receive, send)

    async def _model_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctype = _header(scope, b"content-type")
        if ctype is not None:
            main = ctype.split(";")[0].strip().lower()
            if not (
                main == "application/json" or (main.startswith("application/") and main.endswith("+json"))
            ):
                await send_error(
                    send,
                    415,
                    f"Content-Type {main!r} is not supported; send 'application/json'",
                    "invalid_request_error",
                )
                return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_error(
                send,
                413,
                f"request body of {declared} bytes exceeds {self.max_body_bytes} bytes",
                "invalid_request_error",
            )
            return
        # Read the (small) body here so its size is enforced also without Content-Length.
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await send_error(
                    send, 413, f"request body exceeds {self.max_body_bytes} bytes", "invalid_request_error"
                )
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if self._bump(IN_FLIGHT) > self.max_queue:
            self._bump(IN_FLIGHT, -1)
            self._bump(REJECTED_QUEUE_FULL)
            await send_error(
                send,
                503,
                f"server busy: {self.max_queue} requests are already queued or running; retry in "
                f"{self.retry_after_s} s",
                "server_overloaded",
                {"Retry-After": str(self.retry_after_s)},
            )
            return
        self._bump(MODEL_REQUESTS)
        try:
            await self._with_timeout(scope, replay, send)
        finally:
            self._bump(IN_FLIGHT, -1)

    async def _with_timeout(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = asyncio.Event()

        async def tracked_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                started.set()
            await send(msg)

        task = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        waiter = asyncio.ensure_future(started.wait())
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if not done and not started.is_set():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self._bump(TIMED_OUT)
            log.warning("%s timed out after %.1f s", scope.get("path"), self.timeout)
            await send_error(
                send,
                504,
                f"the model did not answer within the server's {self.timeout:g} s timeout; retry later, "
                "lower max_tokens, or ask the operator to raise --timeout",
                "timeout",
            )
            return
        await task
