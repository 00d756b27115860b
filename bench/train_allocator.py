"""LoRA training step time per memory allocator, on the main job's workload (issue #11, CI time).

    .venv/bin/python bench/train_allocator.py                 # 60 steps per allocator
    .venv/bin/python bench/train_allocator.py --steps 200     # a whole catalogue run each
    .venv/bin/python bench/train_allocator.py --jemalloc      # also jemalloc (libjemalloc2), if installed

Each allocator trains the catalogue recipe of ``--partition`` (packed rows, bf16 autocast, the same
seed, so the same batches) from step 0 in a fresh child process, with torch on ``--threads``
threads, one after another (the box runs nothing else meanwhile: a shared box skews the later
runs). Data: the main job's train split (``data/artifacts/<partition>/split/train.parquet``) when
it exists, else ``--examples`` offline-teacher rows.

* **baseline "glibc, retained heap"** -- what training children ran on before tcmalloc
  (:func:`pumpl_assets.core.heap.retain_freed_memory`: mmap off, heap never trimmed).
* ``glibc`` -- glibc's defaults (``PUMPL_RETAIN_HEAP=0``).
* ``tcmalloc`` -- ``libtcmalloc_minimal`` through ``LD_PRELOAD`` (:func:`~pumpl_assets.core.heap.preload_env`),
  what training children run on now.

Printed per allocator: mean s/step over the first and the last window of ``--window`` steps
(the first step, which loads kernels, excluded), the mean over all, the ratio of the baseline's
mean to this one's (> 1 = faster), peak RSS, and whether every step's loss equals the baseline's
(an allocator must not change the arithmetic). Writes ``--out`` (JSON + Markdown).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASELINE = "glibc, retained heap"
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")


def child(args: argparse.Namespace) -> None:
    """Train ``--steps`` steps in this process; print one JSON line with step times, losses, RSS."""
    import resource

    from pumpl_assets.core import heap

    if args.retain:
        heap.retain_freed_memory()
    import polars as pl

    from pumpl_assets.core.basemodel import ensure_base_model
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.dataset import to_training_examples
    from pumpl_assets.core.settings import system_prompt
    from pumpl_assets.core.training import base
    from pumpl_assets.core.training.model_peft import PeftLoader
    from pumpl_assets.core.training.recipe_plain import PlainRecipe

    spec = get_spec(args.partition)
    cfg = spec.recipe.model_copy(update={"max_steps": args.steps, "checkpoint_every": 10**6, "epochs": None})
    split = REPO / "data" / "artifacts" / args.partition / "split" / "train.parquet"
    if split.is_file():
        train = list(to_training_examples(pl.read_parquet(split), system_prompt()))
        source = str(split.relative_to(REPO))
    else:
        from bench.common import build_examples

        train, _ = build_examples(args.examples, args.seed)
        source = f"{len(train)} offline-teacher examples"
    out = Path(args.work) / args.name
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    session = PeftLoader("cpu").load(
        ensure_base_model(spec), cfg, out, style=spec.prompt_style, system_prompt=system_prompt()
    )
    recipe = PlainRecipe(session)
    recipe._evaluate = lambda examples: None  # type: ignore[method-assign]  # step time only
    marks: list[float] = []
    after = base.ThreadGovernor.after_step

    def timed(self: base.ThreadGovernor, step: int) -> None:
        marks.append(time.perf_counter())
        after(self, step)

    base.ThreadGovernor.after_step = timed  # type: ignore[method-assign]
    result = recipe.train(train, [])
    print(
        "RESULT "
        + json.dumps(
            {
                "step_s": [b - a for a, b in itertools.pairwise(marks)],
                "losses": [loss for _, loss in result.train_loss],
                "allocator": heap.allocator(),
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "threads": result.extra.get("threads"),
                "data": source,
            }
        ),
        flush=True,
    )


def run_child(args: argparse.Namespace, name: str, env: dict[str, str], retain: bool) -> dict[str, Any]:
    base_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PUMPL_RETAIN_HEAP")}
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--work", str(args.work)]
    cmd += ["--partition", args.partition, "--examples", str(args.examples), "--seed", str(args.seed)]
    if retain:
        cmd.append("--retain")
    full_env = {**base_env, **env, "PUMPL_TORCH_THREADS": str(args.threads)}
    if not retain:
        full_env["PUMPL_RETAIN_HEAP"] = "0"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name}: child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    out["wall_s"] = time.perf_counter() - t0
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--partition", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--jemalloc", action="store_true")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "train_allocator")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "train_allocator" / "report")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--retain", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.name = args.child
        child(args)
        return 0

    from pumpl_assets.core import heap

    runs: list[tuple[str, dict[str, str], bool]] = [(BASELINE, {}, True), ("glibc", {}, False)]
    tcmalloc = heap.find_tcmalloc()
    if tcmalloc is None:
        print(
            "tcmalloc not installed (apt-get install libtcmalloc-minimal4): measuring glibc only",
            file=sys.stderr,
        )
    else:
        runs.append(("tcmalloc", {"LD_PRELOAD": str(tcmalloc)}, False))
    if args.jemalloc and JEMALLOC.is_file():
        runs.append(("jemalloc", {"LD_PRELOAD": str(JEMALLOC)}, False))
    results: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()[0]
    for name, env, retain in runs:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {args.steps} steps ...", file=sys.stderr, flush=True)
        results[name] = run_child(args, name, env, retain)
    base_steps = results[BASELINE]["step_s"]
    lines = [
        f"# LoRA step time per allocator ({args.partition}, {args.steps} steps, {args.threads} threads)",
        "",
        f"Command: `python bench/train_allocator.py --steps {args.steps}`; data: {results[BASELINE]['data']}; "
        f"1-min load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f} (the runs themselves).",
        "",
        f"| allocator | first {args.window} s/step | last {args.window} s/step | mean s/step | "
        f"ratio vs {BASELINE} | peak RSS GiB | losses = baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        steps = r["step_s"]
        first, last = mean(steps[: args.window]), mean(steps[-args.window :])
        r.update(first_s=first, last_s=last, mean_s=mean(steps), ratio=mean(base_steps) / mean(steps))
        r["losses_equal"] = r["losses"] == results[BASELINE]["losses"]
        line = (
            f"{name}: {r['mean_s']:.2f} s/step (first {first:.2f}, last {last:.2f}; ratio {r['ratio']:.2f}x "
            f"vs {BASELINE}); peak RSS {r['peak_rss_gib']:.1f} GiB; losses equal: {r['losses_equal']}"
        )
        print(line)
        lines.append(
            f"| {name} ({r['allocator']}) | {first:.2f} | {last:.2f} | {r['mean_s']:.2f} | {r['ratio']:.2f}x | "
            f"{r['peak_rss_gib']:.1f} | {r['losses_equal']} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    from pumpl_assets.core.io import write_text_atomic

    write_text_atomic(args.out / "report.md", "\n".join(lines) + "\n")
    write_text_atomic(
        args.out / "report.json", json.dumps({"baseline": BASELINE, "results": results}, indent=1)
    )
    print(f"wrote {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
