"""Assemble and run the LitServe server.

Routes: ``POST /generate``, ``POST /v1/chat/completions`` (OpenAI, stream and non-stream),
``GET /health`` (LitServe's: 200 once every worker's ``setup`` — the model load — finished),
``GET /info`` (what answers now: model name/version/alias, engine, quantization, path, and
the batching / queue counters), LitServe's own ``/litserve/info``, ``/docs``.

Processes: this (main) process → LitServe forks the HTTP server process(es) and spawns the
inference workers (one ``/generate`` worker per ``--workers`` per device, one chat worker).
Workers publish their state to a per-run temp folder that ``/info`` reads.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from pumpl_serving.config import CHAT_PATH, GENERATE_PATH, MODEL_PATHS, ServeConfig
from pumpl_serving.middleware import COUNTER_NAMES, N_COUNTERS, GateMiddleware

log = logging.getLogger("pumpl_serving")


def _error_body(status: int, message: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"detail": message, "error": {"message": message, "type": kind, "code": status}, **extra}


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without echoing inputs back (prompts may hold secrets); bad JSON → 400."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        reason = (bad_json.get("ctx") or {}).get("error", "parse error")
        pos = bad_json.get("loc", ("body", "?"))[-1]
        msg = f"request body is not valid JSON ({reason} at position {pos})"
        return JSONResponse(status_code=400, content=_error_body(400, msg, "invalid_request_error"))
    parts, slim = [], []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
        slim.append({"loc": loc, "msg": e.get("msg"), "type": e.get("type")})
    msg = "invalid request: " + "; ".join(parts)
    return JSONResponse(status_code=422, content=_error_body(422, msg, "invalid_request_error", errors=slim))


def read_worker_states(state_dir: str | Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(Path(state_dir).glob("*.json")):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # being replaced right now; the next call sees it
    return out


def _aggregate(states: list[dict[str, Any]]) -> dict[str, Any]:
    agg: dict[str, Any] = {
        "requests": 0,
        "batches": 0,
        "max_batch": 0,
        "batch_sizes": {},
        "item_errors": 0,
        "completion_tokens": 0,
        "constrained": 0,
    }
    for s in states:
        m = s.get("metrics") or {}
        for k in ("requests", "batches", "item_errors", "completion_tokens", "constrained"):
            agg[k] += int(m.get(k, 0))
        agg["max_batch"] = max(agg["max_batch"], int(m.get("max_batch", 0)))
        for size, n in (m.get("batch_sizes") or {}).items():
            agg["batch_sizes"][size] = agg["batch_sizes"].get(size, 0) + int(n)
    agg["batched_requests"] = sum(int(k) * v for k, v in agg["batch_sizes"].items() if int(k) > 1)
    return agg


def info_payload(cfg: ServeConfig, counters: Any) -> tuple[int, dict[str, Any]]:
    states = read_worker_states(cfg.state_dir)
    gen = sorted((s for s in states if s.get("api") == "generate"), key=lambda s: str(s.get("worker_id")))
    chat = [s for s in states if s.get("api") == "chat"]
    primary = gen[0] if gen else (chat[0] if chat else None)
    http = {name: int(counters[i]) for i, name in COUNTER_NAMES.items()}
    if primary is None:
        return 503, _error_body(503, "no worker has loaded the model yet", "not_ready")
    return 200, {
        "model": primary["model"],
        "engine": primary["engine"],
        "quantization": primary["quantization"],
        "model_path": primary["model_path"],
        "partition": cfg.partition,
        "source": cfg.source().describe(),
        "prompt_style": primary.get("prompt_style"),
        "catalogue": primary.get("catalogue"),
        "device": primary.get("device"),
        "endpoints": [GENERATE_PATH, CHAT_PATH, "/health", "/info"],
        "workers": [
            {
                k: s.get(k)
                for k in (
                    "api",
                    "worker_id",
                    "pid",
                    "model",
                    "model_path",
                    "engine",
                    "swaps",
                    "load_seconds",
                    "last_error",
                )
            }
            for s in states
        ],
        "metrics": {"generate": _aggregate(gen), "chat": _aggregate(chat), "http": http},
        "config": cfg.public(),
    }


def build_server(cfg: ServeConfig, token: str | None) -> tuple[Any, Any]:
    """The LitServer (not started) and its shared HTTP counters."""
    import litserve as ls

    from pumpl_serving.api import ChatAPI, GenerateAPI

    if cfg.max_batch_size > 1 and cfg.batch_timeout >= cfg.timeout:
        raise ValueError(f"--batch-timeout ({cfg.batch_timeout}) must be below --timeout ({cfg.timeout})")
    counters = mp.Array("q", N_COUNTERS, lock=True)
    gate = (
        GateMiddleware,
        {
            "counters": counters,
            "model_paths": MODEL_PATHS,
            "max_queue": cfg.max_queue,
            "timeout": cfg.timeout,
            "max_body_bytes": cfg.max_body_bytes,
            "token": token,
        },
    )
    server = ls.LitServer(
        [GenerateAPI(cfg), ChatAPI(cfg)],
        accelerator="auto",
        devices="auto",
        workers_per_device={GENERATE_PATH: cfg.workers, CHAT_PATH: 1},
        timeout=cfg.timeout,
        info_path="/litserve/info",
        middlewares=[gate],
    )
    server.app.add_exception_handler(RequestValidationError, validation_error_handler)

    async def info(request: Request) -> JSONResponse:
        status, body = info_payload(cfg, counters)
        return JSONResponse(status_code=status, content=body)

    server.app.add_api_route("/info", info, methods=["GET"], include_in_schema=True)
    return server, counters


def run(cfg: ServeConfig, token: str | None, *, api_servers: int = 1) -> int:
    """Start the server and block until it stops. Returns a process exit code."""
    state_dir = tempfile.mkdtemp(prefix="pumpl-serve-")
    cfg.state_dir = state_dir
    cfg.auth_enabled = bool(token)
    owner = os.getpid()

    def _cleanup() -> None:
        if os.getpid() == owner:  # not in forked HTTP processes
            shutil.rmtree(state_dir, ignore_errors=True)

    atexit.register(_cleanup)

    def _term(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked HTTP process re-raising after uvicorn's own shutdown
            os._exit(0)
        raise KeyboardInterrupt  # main process: LitServe's graceful shutdown path

    signal.signal(signal.SIGTERM, _term)
    server, _ = build_server(cfg, token)
    try:
        server.run(
            host=cfg.host,
            port=cfg.port,
            num_api_servers=api_servers,
            log_level=cfg.log_level,
            generate_client_file=False,
        )
    except RuntimeError as exc:
        log.error("%s: a worker could not load the model (see the log above)", exc)
        for p in getattr(server, "inference_workers", []) or []:
            if p.is_alive():
                p.terminate()
        manager = getattr(getattr(server, "transport_config", None), "manager", None)
        if manager is not None:
            manager.shutdown()
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
