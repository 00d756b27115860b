"""attention: full served plans with the grouped decode steps vs transformers' stock ``sdpa`` + cache.

The real evaluation/serving workload: held-out requests (disjoint from training's), rendered as
serving renders them, each decoded under its own request grammar (``request_plan_schema``), greedy,
up to the eval's token cap, in batches of the catalogue's ``eval_batch_size`` — full constrained
plans, not short replies. The same model (the materialized merged model when there is one, else
the base), the same dtype (the eval's auto: bf16 where the CPU has it), the same prompts; each
timed run decodes with the stock engine and then with the grouped one (alternating, so load
drift hits both); one small warm-up is excluded.

* **value** — completion tokens/s with ``decode_attention="grouped"``
  (:mod:`pumpl_assets.core.decode_attention`, the engines' CPU default: one SDPA per key/value
  head over a KV cache that grows in place).
* **baseline "stock sdpa decode"** — the same with ``decode_attention="stock"`` (transformers'
  ``sdpa_attention_forward`` — ``repeat_kv`` copies + one flash call per query head — over a
  ``DynamicCache``, which concatenates the whole cache every step).
* **same outputs** — the fraction of plans whose text is identical between the two (the two
  kernels sum in a different order, so a near-tied bf16 argmax can flip; reported, not hidden).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import BenchResult, Context, Metric, median, ratio, render_prompts, test_requests

NAME = "attention"
BASELINE = "stock sdpa decode"
GOAL = 2.0
SIZES = {"quick": {"n_prompts": 4, "max_new_tokens": 96}, "full": {"n_prompts": 16, "max_new_tokens": 1920}}


def _pass(
    engine: Any, prompts: list[str], schemas: list[dict | None], batch: int, max_new: int
) -> tuple[list[str], int, float]:
    from pumpl_assets.core.generation import GenerationParams

    params = GenerationParams(max_new_tokens=max_new, temperature=0.0)
    texts: list[str] = []
    tokens = 0
    t0 = time.perf_counter()
    for b in range(0, len(prompts), batch):
        for g in engine.generate(prompts[b : b + batch], params, schemas[b : b + batch]):
            texts.append(g.text)
            tokens += g.completion_tokens
    return texts, tokens, time.perf_counter() - t0


def run(ctx: Context) -> BenchResult:
    from bench.bench_eval import _find_model
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_assets.core.generation import load_engine
    from pumpl_assets.core.grammar import request_plan_schema

    spec = get_spec(ctx.partition)
    sizes = SIZES["quick" if ctx.quick else "full"] | {"batch": spec.eval_batch_size}
    model, source = _find_model(ctx)
    cat = ExerciseCatalogue.from_json_file(ctx.catalogue_path)
    engines: dict[str, Any] = {
        att: load_engine("transformers", model, device="cpu", decode_attention=att)  # type: ignore[arg-type]
        for att in ("stock", "grouped")
    }
    try:
        stock = engines["stock"]
        requests = test_requests(sizes["n_prompts"], ctx.seed)
        prompts = render_prompts(stock.tokenizer, requests, spec.prompt_style)
        schemas: list[dict | None] = [request_plan_schema(r, cat) for r in requests]
        for att, eng in engines.items():
            ctx.log(f"attention[{att}]: warm-up (excluded)")
            _pass(eng, prompts[:2], schemas[:2], 2, 4)
        tps: dict[str, list[float]] = {"stock": [], "grouped": []}
        agree: list[float] = []
        walls: list[dict[str, float]] = []
        for i in range(ctx.repeats):
            texts: dict[str, list[str]] = {}
            wall: dict[str, float] = {}
            for att, eng in engines.items():
                ctx.log(f"attention[{att}]: run {i + 1}/{ctx.repeats}")
                texts[att], tok, wall[att] = _pass(
                    eng, prompts, schemas, sizes["batch"], sizes["max_new_tokens"]
                )
                tps[att].append(tok / wall[att])
                wall[f"{att}_tokens"] = float(tok)
            agree.append(
                sum(a == b for a, b in zip(texts["stock"], texts["grouped"], strict=True)) / len(prompts)
            )
            walls.append(wall)
        dtype = stock.dtype
        attention = {att: eng.attention for att, eng in engines.items()}
    finally:
        for eng in engines.values():
            eng.close()
    m_g, m_s = median(tps["grouped"]), median(tps["stock"])
    r = ratio(m_g, m_s)
    result = BenchResult(
        NAME,
        details={
            "sizes": sizes,
            "model": str(model),
            "model_source": source,
            "dtype": dtype,
            "attention_implementations": attention,
            "runs": walls,
            "same_output_fraction": agree,
        },
    )
    result.metrics.append(
        Metric(
            "served_plan_tokens_per_s",
            m_g,
            "tokens/s",
            baseline_name=f"{BASELINE} ({dtype})",
            baseline_value=m_s,
            ratio=r,
            goal=f"≥ {GOAL:.0f}×",
            goal_met=None if r is None else r >= GOAL,
            runs=tps["grouped"],
            baseline_runs=tps["stock"],
            details={"batch": sizes["batch"], "n_prompts": sizes["n_prompts"], "dtype": dtype},
        )
    )
    result.metrics.append(
        Metric(
            "same_output_fraction",
            median(agree),
            "fraction",
            details={"note": "identical plan texts, grouped vs stock, same prompts"},
        )
    )
    return result
