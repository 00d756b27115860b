"""Served plans over HTTP: a llama.cpp server (GGUF) against the transformers server (bf16), issue #11.

Two real ``python -m pumpl_serving`` subprocesses on 127.0.0.1, the same ``--threads``,
``--max-batch-size`` and exercise catalogue:

* **value** — ``--engine llamacpp --model-path GGUF_DIR`` (the export folder's default quant);
* **baseline "transformers server (bf16)"** — ``--engine transformers --model-path MERGED_DIR``
  (the CPU default: bf16 where the CPU has native bf16).

Both are started at once (an idle server costs nothing) and the timed runs alternate between them,
so both see the same machine. The workload is :mod:`bench.bench_serving`'s: plain-language plan
requests (``tests/data/heldout_requests.jsonl``, same order for both), greedy, request-aware grammar,
``max_tokens`` large enough for a whole plan; ``clients`` closed-loop clients × ``per_client``
requests per run. plans/s = responses holding a plan / run wall time (median over runs); p50/p99 pool
every plan's client-side latency of the level. Ratios are llama.cpp / transformers (plans/s: higher
is better; latency: lower is better). Goal (#11): ≥ 2× plans/s.

    PYTHONPATH=. .venv/bin/python bench/bench_serving_engines.py --merged $A/merged_model/model \\
        --gguf $A/gguf_model/model --exercises $A/raw/exercises.parquet \\
        --out bench/results/2026-12-04-serving-llamacpp.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.bench_serving import load_run, plain_language_requests
from bench.common import median, percentile, ratio

GOAL_RPS_RATIO = 2.0
BASELINE = "transformers server (bf16)"


def _args(engine: str, model: Path, a: argparse.Namespace) -> list[str]:
    return [
        "--engine", engine, "--model-path", str(model), "--partition", a.partition,
        "--threads", str(a.threads), "--max-batch-size", str(a.max_batch), "--max-queue", "256",
        "--timeout", "900", "--poll-interval", "0", "--log-level", "warning",
        *(["--exercises", str(a.exercises)] if a.exercises else []),
    ]  # fmt: skip


def parse_levels(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in text.split(","):
        clients, per_client = part.split(":")
        out[int(clients)] = int(per_client)
    return out


def main(argv: list[str] | None = None) -> int:
    from pumpl_serving.testing import start_server

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--merged", type=Path, required=True, help="merged HF model folder (the baseline)")
    ap.add_argument("--gguf", type=Path, required=True, help="GGUF export folder or .gguf file")
    ap.add_argument("--exercises", type=Path, default=None, help="catalogue both servers constrain to")
    ap.add_argument("--partition", default="smollm2-135m")
    ap.add_argument("--levels", default="1:4,8:2", help="clients:requests-per-client, comma-separated")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=Path("bench/out/work/serving_engines"))
    ap.add_argument("--out", type=Path, default=None, help="markdown report (a .json beside it)")
    a = ap.parse_args(argv)

    levels = parse_levels(a.levels)
    texts = plain_language_requests()
    bodies = [{"prompt": t, "max_tokens": a.max_tokens, "temperature": 0.0} for t in texts]
    a.work.mkdir(parents=True, exist_ok=True)
    env = {
        "PUMPL_DATA_ROOT": str(a.work / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{a.work / 'mlflow.db'}",
        "OMP_NUM_THREADS": str(a.threads),
    }
    engines = {"llamacpp": a.gguf, "transformers": a.merged}
    servers: dict[str, Any] = {}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {k: {} for k in engines}
    info: dict[str, Any] = {}

    def log(msg: str) -> None:
        print(f"[serving-engines {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        for key, model in engines.items():
            servers[key] = start_server(
                _args(key, model, a), log_path=a.work / f"server-{key}.log", env=env, wait=False
            )
        for srv in servers.values():
            srv.wait_healthy(timeout=600.0)
        for key, srv in servers.items():
            with srv.client() as c:
                got = c.get("/info").json()
                info[key] = {k: got.get(k) for k in ("engine", "quantization", "model_path", "device")}
        log("warm-up (excluded)")
        for srv in servers.values():
            load_run(srv.url, bodies[-2:], 2, 1)
        for clients, per_client in levels.items():
            for i in range(a.repeats):
                for key, srv in servers.items():
                    log(f"{clients} clients × {per_client}, run {i + 1}/{a.repeats}, {key}")
                    r = load_run(srv.url, bodies, clients, per_client)
                    runs[key].setdefault(clients, []).append(r)
                    log(
                        f"  {r['plans']}/{r['requests']} plans, {r['rps']:.3f} plans/s, {r['tokens_per_s']:.1f} tok/s"
                    )
    finally:
        for srv in servers.values():
            srv.stop()

    rows: list[dict[str, Any]] = []
    for clients in levels:
        row: dict[str, Any] = {"clients": clients, "per_client": levels[clients]}
        for key in engines:
            rs = runs[key][clients]
            lat = [x for r in rs for x in r["latencies_s"]]
            plans = sum(r["plans"] for r in rs)
            row[key] = {
                "plans_per_s": median([r["rps"] for r in rs]),
                "tokens_per_s": median([r["tokens_per_s"] for r in rs]),
                "p50_s": percentile(lat, 50) if lat else None,
                "p99_s": percentile(lat, 99) if lat else None,
                "plans": plans,
                "requests": sum(r["requests"] for r in rs),
                "stopped": sum(r["stopped"] for r in rs),
                "tokens_per_plan": sum(r["completion_tokens"] for r in rs) / plans if plans else None,
                "errors": [r["errors"] for r in rs if r["errors"]],
            }
        v, b = row["llamacpp"], row["transformers"]
        row["ratio_plans_per_s"] = ratio(v["plans_per_s"], b["plans_per_s"])
        row["ratio_p50"] = ratio(v["p50_s"], b["p50_s"]) if v["p50_s"] and b["p50_s"] else None
        row["goal_met"] = row["ratio_plans_per_s"] is not None and row["ratio_plans_per_s"] >= GOAL_RPS_RATIO
        rows.append(row)

    lines = [
        "# Served plans over HTTP: llama.cpp server vs transformers server (issue #11)",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"--threads {a.threads}, --max-batch-size {a.max_batch}, max_tokens {a.max_tokens}",
        f"- Value: `--engine llamacpp --model-path {a.gguf}`; baseline: {BASELINE}, `--model-path {a.merged}`",
        f"- Servers: {json.dumps(info)}",
        f"- Workload: {len(texts)} plain-language requests (tests/data/heldout_requests.jsonl), greedy, "
        f"request-aware grammar, full plans; {a.repeats} run(s) per level, alternating servers",
        "",
        "| clients × requests | server | plans/s | tokens/s | p50 s | p99 s | plans | tokens/plan |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for key in engines:
            s = row[key]
            lines.append(
                f"| {row['clients']} × {row['per_client']} | {key} | {s['plans_per_s']:.3f} | "
                f"{s['tokens_per_s']:.1f} | {s['p50_s'] or 0:.1f} | {s['p99_s'] or 0:.1f} | "
                f"{s['plans']}/{s['requests']} | {s['tokens_per_plan'] or 0:.0f} |"
            )
    lines.append("")
    for row in rows:
        lines.append(
            f"- {row['clients']} client(s): plans/s llama.cpp / transformers = "
            f"**{row['ratio_plans_per_s']:.2f}×** (goal ≥ {GOAL_RPS_RATIO:.0f}×: "
            f"{'met' if row['goal_met'] else 'not met'}); p50 latency ratio {row['ratio_p50'] or 0:.2f}"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report, encoding="utf-8")
        a.out.with_suffix(".json").write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(a).items()}, "servers": info, "levels": rows}, indent=2
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
