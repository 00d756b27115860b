"""hotpaths: per-example attention in training against the stock transformers path, same run.

* **training step, packed attention** — the project's trainer (catalogue recipe: packed rows,
  answer-only LM head, bf16 autocast) on offline-teacher plans, with attention per packed example
  (:mod:`pumpl_assets.core.training.packed_attention`, recipe ``packed_attention=True``) vs the stock
  ``sdpa`` path over the whole row with transformers' block-diagonal mask (baseline). Same examples,
  steps and seed; runs alternate. ``value`` = training tokens/s; the final losses are recorded.

(An in-place KV cache for decoding was tried on 2026-12-01 and removed: token-identical, but the full
graph's evaluation ran 7-11% fewer tokens/s with it than with ``DynamicCache``.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.common import (
    BenchResult,
    Context,
    Metric,
    build_examples,
    median,
    ratio,
)

NAME = "hotpaths"
BASELINE = "stock transformers path (same run)"
SIZES = {
    "quick": {"train_examples": 12, "train_steps": 2},
    "full": {"train_examples": 120, "train_steps": 12},
}


def _train(ctx: Context, train: list[Any], steps: int, out_dir: Path, *, packed: bool) -> dict[str, Any]:
    """One fresh run of the project's trainer (bench_train's "ours"), attention per example or stock."""
    from bench import bench_train

    shutil.rmtree(out_dir, ignore_errors=True)
    real = bench_train._cfg
    bench_train._cfg = lambda c, n: real(c, n).model_copy(update={"packed_attention": packed})  # type: ignore[assignment]
    try:
        return bench_train.run_ours(ctx, train, steps, out_dir)
    finally:
        bench_train._cfg = real  # type: ignore[assignment]


def run(ctx: Context) -> BenchResult:
    sizes = SIZES["quick" if ctx.quick else "full"]
    result = BenchResult(NAME)
    work = ctx.work_dir(NAME)

    # -- training step ---------------------------------------------------------------------
    train, failed = build_examples(sizes["train_examples"], ctx.seed, ctx.catalogue_path)
    ctx.log(f"hotpaths: training warm-up ({len(train)} examples, {failed} unplannable requests left out)")
    _train(ctx, train, 1, work / "warm", packed=True)
    ours: list[dict[str, Any]] = []
    stock: list[dict[str, Any]] = []
    for i in range(ctx.repeats):
        ctx.log(f"hotpaths: training run {i + 1}/{ctx.repeats}: packed attention, then stock sdpa")
        ours.append(_train(ctx, train, sizes["train_steps"], work / "packed", packed=True))
        stock.append(_train(ctx, train, sizes["train_steps"], work / "stock", packed=False))
    ours_tps, stock_tps = (
        median([r["tokens_per_s"] for r in ours]),
        median([r["tokens_per_s"] for r in stock]),
    )
    result.metrics.append(
        Metric(
            "training step, packed attention",
            ours_tps,
            "tokens/s",
            baseline_name="stock sdpa over the whole packed row (block-diagonal mask)",
            baseline_value=stock_tps,
            ratio=ratio(ours_tps, stock_tps),
            runs=[r["tokens_per_s"] for r in ours],
            baseline_runs=[r["tokens_per_s"] for r in stock],
            details={
                "steps": sizes["train_steps"],
                "final_loss": [r["final_loss"] for r in ours],
                "baseline_final_loss": [r["final_loss"] for r in stock],
            },
        )
    )

    return result
