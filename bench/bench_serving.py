"""serving: the real LitServe server with dynamic batching vs a batch-1 server, plus HTTP overhead.

Two real ``python -m pumpl_serving`` subprocesses (:func:`pumpl_serving.testing.start_server`)
serve the same model folder on 127.0.0.1 with the same ``--threads``:

* **value** — ``--max-batch-size 8`` (default ``--batch-timeout`` 0.05 s: the served config);
* **baseline "batch-1 server (--max-batch-size 1)"**.

Both run at once (an idle server costs ~nothing) so the timed runs can alternate between them.
At each concurrency level (1, 8, 32 closed-loop clients, each with its own keep-alive
``httpx.Client``) a run sends ``clients × per_client`` identical-shape requests (a rendered plan
request, greedy, ``constrained: false``, small ``max_tokens``); requests/s = successful requests
/ run wall time, median over runs; p50/p99 latency pool every request of the level's runs
(client-side wall time; with few requests p99 is close to the max). Ratios: req/s value /
baseline (higher is better); latency value / baseline (lower is better).

HTTP overhead = p50 of a sequential tiny ``POST /generate`` (``max_tokens`` 1) against the
batch-1 server minus p50 of in-process ``engine.generate`` of the same rendered prompt and
``max_new_tokens=1`` (same threads, loaded after the servers stop). The same figure against the
batch-8 server (which waits up to ``--batch-timeout`` for a batch to fill) is in the details.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import BenchResult, Context, Metric, median, percentile, ratio, test_requests

NAME = "serving"
BASELINE = "batch-1 server (--max-batch-size 1)"
GOAL_RPS = 2.0
GOAL_OVERHEAD_MS = 15.0
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"levels": {1: 1, 8: 1, 32: 1}, "max_tokens": 4, "overhead_requests": 3},
    "full": {"levels": {1: 4, 8: 2, 32: 1}, "max_tokens": 16, "overhead_requests": 12},
}


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


def _one_client(url: str, body: dict[str, Any], n: int, headers: dict[str, str]) -> list[tuple[int, float]]:
    import httpx

    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=600.0) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post("/generate", json=body)
            out.append((r.status_code, time.perf_counter() - t0))
    return out


def load_run(url: str, body: dict[str, Any], clients: int, per_client: int) -> dict[str, Any]:
    """``clients`` closed-loop clients × ``per_client`` requests; req/s and every latency (s)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(_one_client, url, body, per_client, {}) for _ in range(clients)]
        rows = [row for f in futures for row in f.result()]
    wall = time.perf_counter() - t0
    ok = [lat for status, lat in rows if status == 200]
    return {
        "clients": clients,
        "requests": len(rows),
        "ok": len(ok),
        "errors": {str(s): sum(1 for st, _ in rows if st == s) for s in {st for st, _ in rows if st != 200}},
        "wall_s": wall,
        "rps": len(ok) / wall if wall > 0 else 0.0,
        "latencies_s": ok,
    }


def sequential_latencies(url: str, body: dict[str, Any], n: int) -> list[float]:
    rows = _one_client(url, body, n, {})
    bad = [s for s, _ in rows if s != 200]
    if bad:
        raise RuntimeError(f"tiny requests failed with HTTP {sorted(set(bad))}")
    return [lat for _, lat in rows]


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
    body = {
        "prompt": user_prompt,
        "max_tokens": sizes["max_tokens"],
        "temperature": 0.0,
        "constrained": False,
    }
    tiny = {"prompt": user_prompt, "max_tokens": 1, "temperature": 0.0, "constrained": False}
    env = {
        "PUMPL_DATA_ROOT": str(work / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "OMP_NUM_THREADS": str(ctx.threads),
    }
    servers: dict[str, Any] = {}
    result = BenchResult(
        NAME, details={"sizes": {**sizes, "levels": {str(k): v for k, v in sizes["levels"].items()}}}
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
            load_run(srv.url, body, 8, 1)
            sequential_latencies(srv.url, tiny, 1)
        for clients, per_client in sizes["levels"].items():
            for i in range(ctx.repeats):
                for key, srv in servers.items():
                    ctx.log(f"serving: {clients} clients × {per_client}, run {i + 1}/{ctx.repeats}, {key}")
                    per_level[key].setdefault(clients, []).append(
                        load_run(srv.url, body, clients, per_client)
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
        b_rps, s_rps = [r["rps"] for r in b_runs], [r["rps"] for r in s_runs]
        b_lat = [x for r in b_runs for x in r["latencies_s"]]
        s_lat = [x for r in s_runs for x in r["latencies_s"]]
        rr = ratio(median(b_rps), median(s_rps))
        goal = f"≥ {GOAL_RPS:.0f}×" if clients == 8 else ""
        result.metrics.append(
            Metric(
                f"serving_rps_c{clients}",
                median(b_rps),
                "requests/s",
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
                    f"serving_p{q}_ms_c{clients}",
                    bv,
                    "ms (lower is better)",
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
