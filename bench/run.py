"""Run the benchmarks and write ``<out>/report.md`` + ``<out>/report.json``.

    .venv/bin/python -m bench.run                       # full run (median of 3 timed runs each)
    .venv/bin/python -m bench.run --quick               # 1 run, tiny sizes (smoke / development)
    .venv/bin/python -m bench.run --only train,decode   # a subset
    .venv/bin/python -m bench.run --model /path/to/hf   # another model folder (tests use a tiny one)

Benchmarks (``bench/bench_<name>.py``, each ``run(ctx) -> BenchResult``): train, decode, eval,
attention, batching, hotpaths, serving, quant, orchestration. Each prints ``NAME: value unit (ratio X.XX× vs BASELINE; goal ...)``
lines. Every ratio is against a baseline measured in the same run and named in the report.
A benchmark that fails is recorded with its error and the others still run; the exit code is 1
if any benchmark errored (a missed goal is reported, not an error). The report is rewritten after
every benchmark, so an interrupted run still leaves what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import (
    REPO_ROOT,
    BenchResult,
    Context,
    fix_threads,
    fmt,
    machine_info,
    set_seeds,
    write_json,
)

BENCHMARKS: tuple[str, ...] = (
    "train", "decode", "eval", "attention", "batching", "hotpaths", "serving", "quant", "orchestration"
)  # fmt: skip
REPORT_VERSION = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 timed run per benchmark, tiny sizes")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out", help="report folder")
    p.add_argument("--model", type=Path, default=None, help="base model folder (default: the partition's)")
    p.add_argument("--partition", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default min(2, cores))")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs per measurement (default 3, quick 1)"
    )
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress log on stderr")
    return p.parse_args(argv)


def select(only: str) -> list[str]:
    if not only.strip():
        return list(BENCHMARKS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return names


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def build_report(
    command: str, ctx: Context, machine: dict[str, Any], results: list[BenchResult], t0: float, done: bool
) -> dict[str, Any]:
    return {
        "report_version": REPORT_VERSION,
        "command": command,
        "complete": done,
        "quick": ctx.quick,
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": machine,
        "settings": {
            "threads": ctx.threads,
            "seed": ctx.seed,
            "repeats": ctx.repeats,
            "model_dir": str(ctx.model_dir),
            "partition": ctx.partition,
        },
        "benchmarks": {r.name: r.to_json() for r in results},
        "summary": [m.line() for r in results for m in r.metrics]
        + [f"{r.name}: {r.status.upper()} {r.error or ''}".rstrip() for r in results if r.status != "ok"],
    }


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["settings"]
    out = [
        "# Pumpl benchmark report",
        "",
        f"Command: `{report['command']}`  ",
        f"Mode: {'quick (1 run, tiny sizes: not for claims)' if report['quick'] else 'full'}; "
        f"complete: {report['complete']}; wall {report['wall_s']} s",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']} ({m['nproc']} usable cores) |",
        f"| torch threads | {s['threads']} |",
        f"| load average at start / end | {m['loadavg_start']} / {m.get('loadavg_end', '-')} |",
        f"| torch / transformers / peft / trl | {m['torch']} / {m['transformers']} / {m['peft']} / {m['trl']} |",
        f"| python | {m['python']} |",
        f"| git commit | {m['git_commit']} |",
        f"| model | {s['model_dir']} |",
        f"| seed / timed runs per measurement | {s['seed']} / {s['repeats']} (warm-up excluded) |",
        "",
        "## Summary",
        "",
        "```",
        *report["summary"],
        "```",
        "",
    ]
    for name, b in report["benchmarks"].items():
        out += [f"## {name} ({b['status']}, {b['wall_s']:.0f} s)", ""]
        if b.get("error"):
            out += [f"**Error:** `{b['error']}`", ""]
        if b["metrics"]:
            out += [
                "| metric | value | unit | baseline | baseline value | ratio | goal | met | runs |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for mt in b["metrics"]:
                runs = ", ".join(fmt(x) for x in mt["runs"])
                if mt["baseline_runs"]:
                    runs += " / baseline: " + ", ".join(fmt(x) for x in mt["baseline_runs"])
                out.append(
                    "| {name} | {val} | {unit} | {bn} | {bv} | {r} | {goal} | {met} | {runs} |".format(
                        name=mt["name"],
                        val="n/a" if mt["value"] is None else fmt(mt["value"]),
                        unit=mt["unit"],
                        bn=mt["baseline_name"] or "-",
                        bv="-" if mt["baseline_value"] is None else fmt(mt["baseline_value"]),
                        r="-" if mt["ratio"] is None else f"{mt['ratio']:.2f}×",
                        goal=mt["goal"] or "-",
                        met={True: "yes", False: "**no**", None: "-"}[mt["goal_met"]],
                        runs=runs or "-",
                    )
                )
            out.append("")
        for note in b.get("notes", []):
            out.append(f"- {note}")
        if b.get("notes"):
            out.append("")
    return "\n".join(out) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    from pumpl_assets.core.io import write_text_atomic

    write_json(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = select(args.only)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars (TRL, datasets, llm-compressor) off
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    threads = args.threads or default_threads()
    fix_threads(threads)
    set_seeds(args.seed)
    command = "python -m bench.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.model is None:
        from pumpl_assets.core.basemodel import ensure_base_model
        from pumpl_assets.core.catalogue import get_spec

        model_dir = Path(ensure_base_model(get_spec(args.partition)))
    else:
        model_dir = args.model.resolve()
        if not (model_dir / "config.json").is_file():
            raise SystemExit(f"--model {model_dir} is not a Hugging Face model folder (no config.json)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        quick=args.quick,
        out_dir=out,
        model_dir=model_dir,
        threads=threads,
        seed=args.seed,
        repeats=args.repeats or (1 if args.quick else 3),
        partition=args.partition,
        verbose=not args.quiet,
        model_given=args.model is not None,
    )
    machine = machine_info(threads)
    t0 = time.perf_counter()
    results: list[BenchResult] = []
    for name in names:
        mod = importlib.import_module(f"bench.bench_{name}")
        ctx.log(f"=== {name} ===")
        t_b = time.perf_counter()
        try:
            fix_threads(threads)
            set_seeds(args.seed)
            res: BenchResult = mod.run(ctx)
        except Exception as exc:  # recorded, the other benchmarks still run
            res = BenchResult(
                name,
                status="error",
                error=f"{type(exc).__name__}: {exc}"[:2000],
                details={"traceback": traceback.format_exc()[-6000:]},
            )
            ctx.log(f"{name} failed:\n{res.details['traceback']}")
        res.wall_s = round(time.perf_counter() - t_b, 1)
        results.append(res)
        for m in res.metrics:
            print(m.line(), flush=True)
        if res.status != "ok":
            print(
                f"{name}: {res.status.upper()} {res.error or ''} {'; '.join(res.notes)}".rstrip(), flush=True
            )
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        write_report(out, build_report(command, ctx, machine, results, t0, done=False))
    report = build_report(command, ctx, machine, results, t0, done=True)
    write_report(out, report)
    print(f"report: {out / 'report.md'} and {out / 'report.json'}", flush=True)
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
