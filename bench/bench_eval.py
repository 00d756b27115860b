"""eval: batched (batch 8) vs sequential (batch 1) greedy generation over N test prompts.

The same engine (:func:`pumpl_assets.core.generation.load_engine`, transformers, fp32, cpu),
the same rendered test prompts (requests disjoint from training's), greedy, unconstrained, the
same ``max_new_tokens``. Prompts are sorted by length before batching, as
:mod:`pumpl_assets.core.evaluate` does. Each timed run does the sequential pass and then the
batched pass (alternating, so load drift hits both); one small warm-up is excluded.

* **value** — completion tokens/s of the batched pass (batch = the catalogue's
  ``eval_batch_size``, 8 for SmolLM2).
* **baseline "sequential batch-1 generation"** — completion tokens/s generating one prompt at
  a time. ``ratio`` = batched / sequential tokens/s (the same tokens when outputs agree).
* **same outputs** — the fraction of prompts whose batched text equals the sequential text
  (left padding can flip a near-tied greedy argmax in fp32; reported, not hidden).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import BenchResult, Context, Metric, median, ratio, render_prompts, test_requests

NAME = "eval"
BASELINE = "sequential batch-1 generation"
GOAL = 3.0
SIZES = {"quick": {"n_prompts": 4, "new_tokens": 12}, "full": {"n_prompts": 16, "new_tokens": 48}}


def _pass(engine: Any, prompts: list[str], batch: int, new_tokens: int) -> tuple[list[str], int, float]:
    from pumpl_assets.core.generation import GenerationParams

    params = GenerationParams(max_new_tokens=new_tokens)
    texts: list[str] = []
    tokens = 0
    t0 = time.perf_counter()
    for b in range(0, len(prompts), batch):
        for g in engine.generate(prompts[b : b + batch], params):
            texts.append(g.text)
            tokens += g.completion_tokens
    return texts, tokens, time.perf_counter() - t0


def run(ctx: Context) -> BenchResult:
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.generation import load_engine

    spec = get_spec(ctx.partition)
    batch = spec.eval_batch_size
    sizes = SIZES["quick" if ctx.quick else "full"] | {"batch": batch}
    engine: Any = load_engine("transformers", ctx.model_dir, device="cpu", dtype="float32")
    try:
        prompts = render_prompts(
            engine.tokenizer, test_requests(sizes["n_prompts"], ctx.seed), spec.prompt_style
        )
        lengths = [len(engine.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        prompts = [p for _, p in sorted(zip(lengths, prompts, strict=True), key=lambda x: x[0])]
        ctx.log("eval: warm-up (excluded)")
        _pass(engine, prompts[:2], 2, 4)
        _pass(engine, prompts[:1], 1, 4)
        seq_tps: list[float] = []
        bat_tps: list[float] = []
        agree: list[float] = []
        walls: list[dict[str, float]] = []
        for i in range(ctx.repeats):
            ctx.log(f"eval: run {i + 1}/{ctx.repeats}: sequential then batched")
            s_texts, s_tok, s_wall = _pass(engine, prompts, 1, sizes["new_tokens"])
            b_texts, b_tok, b_wall = _pass(engine, prompts, batch, sizes["new_tokens"])
            seq_tps.append(s_tok / s_wall)
            bat_tps.append(b_tok / b_wall)
            agree.append(sum(a == b for a, b in zip(s_texts, b_texts, strict=True)) / len(prompts))
            walls.append(
                {"sequential_s": s_wall, "batched_s": b_wall, "seq_tokens": s_tok, "batched_tokens": b_tok}
            )
    finally:
        engine.close()
    m_b, m_s = median(bat_tps), median(seq_tps)
    r = ratio(m_b, m_s)
    result = BenchResult(NAME, details={"sizes": sizes, "runs": walls, "same_output_fraction": agree})
    result.metrics.append(
        Metric(
            "eval_batched_tokens_per_s",
            m_b,
            "tokens/s",
            baseline_name=BASELINE,
            baseline_value=m_s,
            ratio=r,
            goal=f"≥ {GOAL:.0f}× with the same outputs",
            goal_met=None if r is None else (r >= GOAL and min(agree) == 1.0),
            runs=bat_tps,
            baseline_runs=seq_tps,
            details={"batch": batch, "n_prompts": sizes["n_prompts"], "new_tokens": sizes["new_tokens"]},
        )
    )
    result.metrics.append(
        Metric("eval_same_outputs", 100 * min(agree), "% of prompts identical (worst run)", runs=agree)
    )
    return result
