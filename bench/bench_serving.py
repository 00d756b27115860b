"""serving: full served plans from plain-language requests, batching server vs a batch-1 server; HTTP overhead.

Two real ``python -m pumpl_serving`` subprocesses (:func:`pumpl_serving.testing.start_server`)
serve the same model folder on 127.0.0.1 with the same ``--threads``:

* **value** — ``--max-batch-size 8`` (default ``--batch-timeout`` 0.05 s: the served config);
* **baseline "batch-1 server (--max-batch-size 1)"**.

Both run at once (an idle server costs ~nothing) so the timed runs can alternate between them.
The workload is the product's: at each concurrency level (1, 8, 32 closed-loop clients, each
with its own keep-alive ``httpx.Client``) a run sends ``clients × per_client`` plan requests
written in plain language (the hand-written held-out requests, ``tests/data/heldout_requests.jsonl``,
in a fixed order so both servers get the same texts), greedy, request-aware grammar on (the
default), ``max_tokens`` large enough for a whole plan. The server parses each text, renders
the canonical prompt and decodes the FULL plan. plans/s = responses holding a parsed plan /
run wall time, median over runs; p50/p99 latency per plan pool every request of the level's
runs (client-side wall time; with few requests p99 is close to the max). Ratios: plans/s value /
baseline (higher is better); latency value / baseline (lower is better). Details carry the
completion tokens per plan, the share of responses that held a plan and that stopped by
themselves (``X-Finish-Reason: stop``).

HTTP overhead = p50 of a sequential tiny ``POST /generate`` (``raw``, ``max_tokens`` 1) against the
batch-1 server minus p50 of in-process ``engine.generate`` of the same rendered prompt and
``max_new_tokens=1`` (same threads, loaded after the servers stop). The same figure against the
batch-8 server (which waits up to ``--batch-timeout`` for a batch to fill) is in the details.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchResult, Context, Metric, median, percentile, ratio, test_requests

NAME = "serving"
BASELINE = "batch-1 server (--max-batch-size 1)"
GOAL_RPS = 2.0
GOAL_OVERHEAD_MS = 15.0
# max_tokens bounds a whole plan (the grammar closes it well before; the server clips to the context).
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"levels": {1: 1, 8: 1, 32: 1}, "max_tokens": 1024, "overhead_requests": 3},
    "full": {"levels": {1: 4, 8: 2, 32: 1}, "max_tokens": 1024, "overhead_requests": 12},
}
REQUESTS_FILE = REPO_ROOT / "tests" / "data" / "heldout_requests.jsonl"


def plain_language_requests(path: Path = REQUESTS_FILE) -> list[str]:
    """The plain-language plan requests the load sends (hand-written, as people type them)."""
    texts = [
        json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if not texts:
        raise RuntimeError(f"no requests in {path}")
    return texts


def _server_args(ctx: Context, max_batch: int) -> list[str]:
    return [
        "--model-path",
        str(ctx.model_dir),
        "--partition",
        ctx.partition,
        "--threads",
        str(ctx.threads),
        "--max-batch-size",
        str(max_batch),
        "--max-queue",
        "256",
        "--timeout",
        "600",
        "--poll-interval",
        "0",
        "--log-level",
        "warning",
    ]


class _Bodies:
    """Thread-safe cycle over request bodies (both servers start the cycle at the same place)."""

    def __init__(self, bodies: list[dict[str, Any]]):
        self._it = itertools.cycle(bodies)
        self._lock = threading.Lock()

    def next(self) -> dict[str, Any]:
        with self._lock:
            return next(self._it)


def _one_client(url: str, bodies: _Bodies, n: int, headers: dict[str, str]) -> list[dict[str, Any]]:
    import httpx

    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=600.0) as c:
        for _ in range(n):
            body = bodies.next()
            t0 = time.perf_counter()
            r = c.post("/generate", json=body)
            lat = time.perf_counter() - t0
            row: dict[str, Any] = {"status": r.status_code, "latency_s": lat, "plan": False}
            if r.status_code == 200:
                data = r.json()
                row["plan"] = data.get("plan") is not None
                row["completion_tokens"] = data["usage"]["completion_tokens"]
                row["stopped"] = r.headers.get("x-finish-reason") == "stop"
            out.append(row)
    return out


def load_run(url: str, bodies: list[dict[str, Any]], clients: int, per_client: int) -> dict[str, Any]:
    """``clients`` closed-loop clients × ``per_client`` requests; plans/s and every plan's latency (s)."""
    cycle = _Bodies(bodies)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(_one_client, url, cycle, per_client, {}) for _ in range(clients)]
        rows = [row for f in futures for row in f.result()]
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["status"] == 200]
    plans = [r for r in ok if r["plan"]]
    statuses = {r["status"] for r in rows if r["status"] != 200}
    return {
        "clients": clients,
        "requests": len(rows),
        "ok": len(ok),
        "plans": len(plans),
        "stopped": sum(1 for r in ok if r.get("stopped")),
        "completion_tokens": sum(r.get("completion_tokens", 0) for r in ok),
        "errors": {str(s): sum(1 for r in rows if r["status"] == s) for s in statuses},
        "wall_s": wall,
        "rps": len(plans) / wall if wall > 0 else 0.0,
        "tokens_per_s": sum(r.get("completion_tokens", 0) for r in ok) / wall if wall > 0 else 0.0,
        "latencies_s": [r["latency_s"] for r in plans],
    }


def sequential_latencies(url: str, body: dict[str, Any], n: int) -> list[float]:
    rows = _one_client(url, _Bodies([body]), n, {})
    bad = [r["status"] for r in rows if r["status"] != 200]
    if bad:
        raise RuntimeError(f"tiny requests failed with HTTP {sorted(set(bad))}")
    return [r["latency_s"] for r in rows]


def _per_plan(runs: list[dict[str, Any]]) -> float | None:
    plans = sum(r["plans"] for r in runs)
    return sum(r["completion_tokens"] for r in runs) / plans if plans else None


def _share(runs: list[dict[str, Any]], key: str) -> float | None:
    ok = sum(r["ok"] for r in runs)
    return sum(r[key] for r in runs) / ok if ok else None


def engine_latencies(ctx: Context, user_prompt: str, n: int) -> list[float]:
    """In-process ``engine.generate`` of the prompt exactly as the server renders it, ``max_new_tokens=1``."""
    import torch

    from pumpl_assets.core import prompts
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.generation import GenerationParams, load_engine

    torch.set_num_threads(ctx.threads)
    engine: Any = load_engine("transformers", ctx.model_dir, device="cpu")
    try:
        style = prompts.resolve_style(get_spec(ctx.partition).prompt_style)
        text = prompts.render_prompt(engine.tokenizer, user_prompt, system=None, style=style)
        params = GenerationParams(max_new_tokens=1)
        engine.generate([text], params)  # warm-up
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            engine.generate([text], params)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        engine.close()


def run(ctx: Context) -> BenchResult:
    from pumpl_assets.core.prompts import request_to_prompt
    from pumpl_serving.testing import start_server

    sizes = SIZES["quick" if ctx.quick else "full"]
    work = ctx.work_dir(NAME)
    user_prompt = request_to_prompt(test_requests(1, ctx.seed)[0])
    texts = plain_language_requests()
    bodies = [{"prompt": t, "max_tokens": sizes["max_tokens"], "temperature": 0.0} for t in texts]
    tiny = {"prompt": user_prompt, "max_tokens": 1, "temperature": 0.0, "constrained": False, "raw": True}
    env = {
        "PUMPL_DATA_ROOT": str(work / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "OMP_NUM_THREADS": str(ctx.threads),
    }
    servers: dict[str, Any] = {}
    result = BenchResult(
        NAME,
        details={
            "sizes": {**sizes, "levels": {str(k): v for k, v in sizes["levels"].items()}},
            "workload": f"{len(texts)} plain-language plan requests from {REQUESTS_FILE.name}, full plans, "
            "request-aware grammar, greedy",
        },
    )
    per_level: dict[str, dict[int, list[dict[str, Any]]]] = {"batched": {}, "batch1": {}}
    http_tiny: dict[str, list[float]] = {}
    try:
        ctx.log("serving: starting the batch-8 and batch-1 servers")
        for key, mb in (("batched", 8), ("batch1", 1)):
            servers[key] = start_server(
                _server_args(ctx, mb), log_path=work / f"server-{key}.log", env=env, wait=False
            )
        for srv in servers.values():
            srv.wait_healthy(timeout=600.0)
        ctx.log("serving: warm-up (excluded)")
        for srv in servers.values():
            load_run(srv.url, bodies[-8:], 8, 1)  # the last texts: the timed runs start at the first
            sequential_latencies(srv.url, tiny, 1)
        for clients, per_client in sizes["levels"].items():
            for i in range(ctx.repeats):
                for key, srv in servers.items():
                    ctx.log(f"serving: {clients} clients × {per_client}, run {i + 1}/{ctx.repeats}, {key}")
                    per_level[key].setdefault(clients, []).append(
                        load_run(srv.url, bodies, clients, per_client)
                    )
        for key, srv in servers.items():
            http_tiny[key] = sequential_latencies(srv.url, tiny, sizes["overhead_requests"])
        result.details["server_info"] = {}
        for key, srv in servers.items():
            with srv.client() as c:
                info = c.get("/info")
                result.details["server_info"][key] = (
                    info.json() if info.status_code == 200 else info.status_code
                )
    finally:
        for srv in servers.values():
            srv.stop()
    ctx.log("serving: in-process engine.generate for the overhead baseline")
    eng = engine_latencies(ctx, user_prompt, sizes["overhead_requests"])

    levels_out: dict[str, Any] = {}
    for clients in sizes["levels"]:
        b_runs, s_runs = per_level["batched"][clients], per_level["batch1"][clients]
        errors = sum(r["requests"] - r["ok"] for r in b_runs + s_runs)
        no_plan = sum(r["ok"] - r["plans"] for r in b_runs + s_runs)
        b_rps, s_rps = [r["rps"] for r in b_runs], [r["rps"] for r in s_runs]
        b_lat = [x for r in b_runs for x in r["latencies_s"]]
        s_lat = [x for r in s_runs for x in r["latencies_s"]]
        rr = ratio(median(b_rps), median(s_rps))
        goal = f"≥ {GOAL_RPS:.0f}×" if clients == 8 else ""
        result.metrics.append(
            Metric(
                f"serving_plans_per_s_c{clients}",
                median(b_rps),
                "plans/s (full plans)",
                baseline_name=BASELINE,
                baseline_value=median(s_rps),
                ratio=rr,
                goal=goal,
                goal_met=(None if rr is None else rr >= GOAL_RPS) if goal else None,
                runs=b_rps,
                baseline_runs=s_rps,
                details={
                    "clients": clients,
                    "per_client": sizes["levels"][clients],
                    "failed_requests": errors,
                    "answers_without_a_plan": no_plan,
                    "completion_tokens_per_plan": _per_plan(b_runs),
                    "baseline_completion_tokens_per_plan": _per_plan(s_runs),
                    "tokens_per_s": median([r["tokens_per_s"] for r in b_runs]),
                    "baseline_tokens_per_s": median([r["tokens_per_s"] for r in s_runs]),
                    "stopped_share": _share(b_runs, "stopped"),
                },
            )
        )
        if not b_lat or not s_lat:
            result.notes.append(
                f"{clients} clients: no successful request on one server; latency not reported"
            )
            continue
        for q in (50, 99):
            bv, sv = 1000 * percentile(b_lat, q), 1000 * percentile(s_lat, q)
            result.metrics.append(
                Metric(
                    f"serving_plan_p{q}_ms_c{clients}",
                    bv,
                    "ms per plan (lower is better)",
                    baseline_name=BASELINE,
                    baseline_value=sv,
                    ratio=ratio(bv, sv),
                    details={"samples": len(b_lat), "baseline_samples": len(s_lat)},
                )
            )
        levels_out[str(clients)] = {
            "batched": [{k: v for k, v in r.items() if k != "latencies_s"} for r in b_runs],
            "batch1": [{k: v for k, v in r.items() if k != "latencies_s"} for r in s_runs],
        }
        if errors:
            result.notes.append(f"{clients} clients: {errors} request(s) failed (see details.levels)")
        if no_plan:
            result.notes.append(f"{clients} clients: {no_plan} answer(s) held no parsable plan (not counted)")
    eng_p50 = 1000 * median(eng)
    http_p50 = 1000 * median(http_tiny["batch1"])
    overhead = http_p50 - eng_p50
    result.metrics.append(
        Metric(
            "serving_http_overhead_p50_ms",
            overhead,
            "ms (HTTP p50 − in-process p50)",
            baseline_name="in-process engine.generate p50 (same tiny request)",
            baseline_value=eng_p50,
            ratio=ratio(http_p50, eng_p50),
            goal=f"≤ {GOAL_OVERHEAD_MS:.0f} ms",
            goal_met=overhead <= GOAL_OVERHEAD_MS,
            runs=[1000 * x for x in http_tiny["batch1"]],
            baseline_runs=[1000 * x for x in eng],
            details={
                "server": "batch-1",
                "http_p50_ms": http_p50,
                "batched_server_http_p50_ms": 1000 * median(http_tiny["batched"]),
                "batched_server_overhead_p50_ms": 1000 * median(http_tiny["batched"]) - eng_p50,
                "ratio_is": "HTTP p50 / in-process p50",
            },
        )
    )
    result.details["levels"] = levels_out
    result.notes.append(
        "Latency ratios are value/baseline (below 1 = the batching server answers faster). The overhead on "
        "the batch-8 server includes its --batch-timeout wait for a lone request (details)."
    )
    return result
