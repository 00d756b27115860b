"""decode: batch-1 greedy decode tokens/s (transformers engine) vs the memory-bandwidth bound.

* **value** — :func:`pumpl_assets.core.generation.load_engine` ``("transformers", fp32, cpu)``
  and, where the CPU has native bf16, the same in bf16 (the engines' default there), each against
  the bound for its own weight bytes;
  one rendered test prompt, greedy, unconstrained. Decode-only tokens/s =
  ``(n - 1) / (t(max_new_tokens=T) - t(max_new_tokens=1))``: the 1-token call is the prefill, so
  the difference is the ``n - 1`` decode steps. End-to-end tokens/s (prefill included) is a
  second metric against the same bound.
* **baseline "memory-bandwidth bound"** — measured copy bandwidth (a large fp32 tensor copy with
  the same torch threads, at least as large as the weights so caches cannot flatter it, bytes read
  + written per second, best of several) divided by the bytes
  of weights one decode step reads (every unique parameter once: with tied embeddings the LM
  head reads the whole embedding matrix). KV-cache reads are left out, so the bound is slightly
  optimistic (~50 KB per context token for SmolLM2 in fp32).
"""

from __future__ import annotations

from typing import Any

from bench.common import (
    BenchResult,
    Context,
    Metric,
    median,
    mem_bandwidth,
    param_stats,
    ratio,
    render_prompts,
    test_requests,
    timed,
)

NAME = "decode"
BASELINE = "memory-bandwidth bound (measured copy bandwidth / weight bytes per token)"
GOAL = 0.5
SIZES = {"quick": {"new_tokens": 16, "bandwidth_mb": 256}, "full": {"new_tokens": 64, "bandwidth_mb": 512}}


def decode_rate(engine: Any, prompt: str, new_tokens: int) -> dict[str, Any]:
    """One timed measurement: prefill (1 token) then ``new_tokens``; decode-only and end-to-end tokens/s."""
    from pumpl_assets.core.generation import GenerationParams

    _, t1 = timed(lambda: engine.generate([prompt], GenerationParams(max_new_tokens=1)))
    gt, tt = timed(lambda: engine.generate([prompt], GenerationParams(max_new_tokens=new_tokens)))
    n = gt[0].completion_tokens
    decode_s = tt - t1
    return {
        "prefill_s": t1,
        "total_s": tt,
        "completion_tokens": n,
        "prompt_tokens": gt[0].prompt_tokens,
        "finish_reason": gt[0].finish_reason,
        "decode_tokens_per_s": (n - 1) / decode_s if n > 1 and decode_s > 0 else None,
        "e2e_tokens_per_s": n / tt if tt > 0 else None,
    }


def _measure(ctx: Context, dtype: str, sizes: dict[str, int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.generation import load_engine

    engine: Any = load_engine("transformers", ctx.model_dir, device="cpu", dtype=dtype)
    try:
        prompt = render_prompts(
            engine.tokenizer, test_requests(1, ctx.seed), get_spec(ctx.partition).prompt_style
        )[0]
        ctx.log(f"decode[{dtype}]: warm-up (excluded)")
        decode_rate(engine, prompt, sizes["new_tokens"])
        runs = []
        for i in range(ctx.repeats):
            ctx.log(f"decode[{dtype}]: run {i + 1}/{ctx.repeats}")
            runs.append(decode_rate(engine, prompt, sizes["new_tokens"]))
        return runs, param_stats(engine.model)
    finally:
        engine.close()


def run(ctx: Context) -> BenchResult:
    from pumpl_assets.core.generation import cpu_has_native_bf16

    sizes = SIZES["quick" if ctx.quick else "full"]
    # fp32 always; bf16 too where this CPU runs it natively (the engines' "auto" dtype there).
    dtypes = ["float32", "bfloat16"] if cpu_has_native_bf16() else ["float32"]
    measured = {dt: _measure(ctx, dt, sizes) for dt in dtypes}
    # A copy at least as large as the fp32 weights, so caches cannot flatter the bound.
    mbytes = max(sizes["bandwidth_mb"], measured["float32"][1]["bytes"] >> 20)
    bw = mem_bandwidth(ctx.threads, mbytes=mbytes)
    result = BenchResult(
        NAME,
        details={
            "sizes": sizes,
            "bandwidth": bw,
            **{f"runs_{dt}": runs for dt, (runs, _) in measured.items()},
            **{f"weights_{dt}": w for dt, (_, w) in measured.items()},
        },
    )
    for dt, (runs, weights) in measured.items():
        suffix = "" if dt == "float32" else "_bf16"
        bound = bw["best_bytes_per_s"] / weights["bytes"]
        dec = [r["decode_tokens_per_s"] for r in runs if r["decode_tokens_per_s"] is not None]
        e2e = [r["e2e_tokens_per_s"] for r in runs if r["e2e_tokens_per_s"] is not None]
        if not dec:
            result.status = "error"
            result.error = f"[{dt}] the model stopped after one token in every run; no decode steps to time"
            return result
        m = median(dec)
        r = ratio(m, bound)
        result.metrics.append(
            Metric(
                f"decode_tokens_per_s{suffix}",
                m,
                "tokens/s",
                baseline_name=f"{BASELINE}, {dt} weights",
                baseline_value=bound,
                ratio=r,
                goal=f"≥ {GOAL:.0%} of bound",
                goal_met=None if r is None else r >= GOAL,
                runs=dec,
                details={
                    "batch": 1,
                    "greedy": True,
                    "dtype": dt,
                    "new_tokens": sizes["new_tokens"],
                    "weight_bytes": weights["bytes"],
                },
            )
        )
        me = median(e2e)
        result.metrics.append(
            Metric(
                f"decode_e2e_tokens_per_s{suffix}",
                me,
                "tokens/s",
                baseline_name=f"{BASELINE}, {dt} weights",
                baseline_value=bound,
                ratio=ratio(me, bound),
                runs=e2e,
                details={"includes": "prefill + decode + detokenization", "dtype": dt},
            )
        )
        if any(r["completion_tokens"] < sizes["new_tokens"] for r in runs):
            result.notes.append(
                f"[{dt}] the model stopped early in some run (EOS): fewer decode steps than asked"
            )
    return result
