"""hotpaths: the two CPU hot-path fixes against the stock transformers paths they replace, same run.

* **training step, packed attention** — the project's trainer (catalogue recipe: packed rows,
  answer-only LM head, bf16 autocast) on offline-teacher plans, with attention per packed example
  (:mod:`pumpl_assets.core.training.packed_attention`, recipe ``packed_attention=True``) vs the stock ``sdpa`` path
  over the whole row with transformers' block-diagonal mask (baseline). Same examples, steps and
  seed; runs alternate. ``value`` = training tokens/s; the final losses are recorded.
* **served-plan decode, in-place KV cache** — full constrained plans (the request-aware grammar
  and no-repeat guard, greedy, budget ``plan_tokens``) for held-out requests, batched as the
  evaluation batches them, through :class:`~pumpl_assets.core.generation.HFEngine` with the
  in-place cache (:mod:`pumpl_assets.core.kv_cache`, the default) vs transformers'
  ``DynamicCache`` (baseline, which re-copies the cache every step). Runs alternate;
  ``same tokens`` = fraction of plans decoded token-for-token identically (expected 1.0).

The baselines are reached by switching the new path off in this process (the recipe flag; for the
cache, the function the engine calls is swapped for one that declines), not by a second code copy.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    BenchResult,
    Context,
    Metric,
    build_examples,
    median,
    ratio,
    render_prompts,
    test_requests,
)

NAME = "hotpaths"
BASELINE = "stock transformers path (same run)"
SIZES = {
    "quick": {"train_examples": 12, "train_steps": 2, "plans": 2, "batch": 2, "plan_tokens": 48},
    "full": {"train_examples": 120, "train_steps": 12, "plans": 16, "batch": 16, "plan_tokens": 1024},
}


@contextlib.contextmanager
def _stock_cache() -> Iterator[None]:
    from pumpl_assets.core import kv_cache

    real = kv_cache.preallocated_cache
    kv_cache.preallocated_cache = lambda model, capacity: None  # type: ignore[assignment]
    try:
        yield
    finally:
        kv_cache.preallocated_cache = real  # type: ignore[assignment]


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


def _decode(
    engine: Any, prompts: list[str], schemas: list[dict], batch: int, budget: int
) -> tuple[list, float]:
    import time

    from pumpl_assets.core.generation import GenerationParams

    params = GenerationParams(max_new_tokens=budget, temperature=0.0)
    out: list[list[int]] = []
    t0 = time.perf_counter()
    for b in range(0, len(prompts), batch):
        gens = engine.generate(
            prompts[b : b + batch], [params] * len(prompts[b : b + batch]), schemas[b : b + batch]
        )
        out.extend(g.token_ids for g in gens)
    return out, time.perf_counter() - t0


def run(ctx: Context) -> BenchResult:
    from bench.bench_eval import _find_model
    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_assets.core.generation import load_engine
    from pumpl_assets.core.grammar import request_plan_schema

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

    # -- served-plan decode ----------------------------------------------------------------
    model, which = _find_model(ctx)
    catalogue = ExerciseCatalogue.from_json_file(ctx.catalogue_path)
    requests = test_requests(sizes["plans"], ctx.seed)
    engine: Any = load_engine("transformers", model, device="cpu", dtype="auto")
    try:
        from pumpl_assets.core.catalogue import get_spec

        prompts = render_prompts(engine.tokenizer, requests, get_spec(ctx.partition).prompt_style)
        schemas = [request_plan_schema(r, catalogue) for r in requests]
        ctx.log("hotpaths: decode warm-up (excluded)")
        _decode(engine, prompts[:1], schemas[:1], 1, 8)
        fast_runs: list[float] = []
        stock_runs: list[float] = []
        same: list[float] = []
        tokens = 0
        for i in range(ctx.repeats):
            ctx.log(f"hotpaths: decode run {i + 1}/{ctx.repeats}: in-place cache, then DynamicCache")
            fast, fast_s = _decode(engine, prompts, schemas, sizes["batch"], sizes["plan_tokens"])
            with _stock_cache():
                slow, slow_s = _decode(engine, prompts, schemas, sizes["batch"], sizes["plan_tokens"])
            tokens = sum(len(t) for t in fast)
            fast_runs.append(tokens / fast_s)
            stock_runs.append(sum(len(t) for t in slow) / slow_s)
            same.append(sum(a == b for a, b in zip(fast, slow, strict=True)) / len(fast))
        dtype = engine.dtype
    finally:
        engine.close()
    fast_tps, slow_tps = median(fast_runs), median(stock_runs)
    result.metrics.append(
        Metric(
            "served-plan decode, in-place KV cache",
            fast_tps,
            "tokens/s",
            baseline_name="transformers DynamicCache",
            baseline_value=slow_tps,
            ratio=ratio(fast_tps, slow_tps),
            runs=fast_runs,
            baseline_runs=stock_runs,
            details={
                "model": which,
                "dtype": dtype,
                "plans": len(prompts),
                "batch": sizes["batch"],
                "budget_tokens": sizes["plan_tokens"],
                "completion_tokens": tokens,
                "same_tokens": same,
            },
        )
    )
    return result
