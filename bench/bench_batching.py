"""batching: full served plans, continuous batching vs consecutive fixed batches, same engine.

The real evaluation workload: held-out requests (disjoint from training's), rendered as serving
renders them, each decoded under its own request grammar (``request_plan_schema``), greedy, up to the
eval's token cap — full constrained plans. More requests than one batch holds (the eval decodes 60
test rows at the catalogue's ``eval_batch_size``, 16 for SmolLM2), so how a batch drains matters:
plans end at very different lengths, and a fixed batch keeps stepping for its longest row while the
places of the finished rows stay empty. Each timed run decodes the same prompts both ways with the
same loaded engine (alternating, so load drift hits both); one small warm-up is excluded.

* **value** — completion tokens/s of ``engine.generate(prompts, ..., max_batch=batch)``: at most
  ``batch`` rows at once, a finished row's place taken by the next request at once (what
  :mod:`pumpl_assets.core.evaluate` runs).
* **baseline "consecutive batches"** — the same prompts in consecutive ``generate`` calls of
  ``batch`` prompts each (what the eval ran before).
* **same outputs** — the fraction of plans identical between the two (in fp32 they are identical
  by construction — tests/test_continuous_batching.py —; in bf16 a row's neighbours change the
  kernels' blocking, so a near-tied argmax can flip; reported, not hidden).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import BenchResult, Context, Metric, median, ratio, render_prompts, test_requests

NAME = "batching"
BASELINE = "consecutive batches"
GOAL = 1.3
SIZES = {
    "quick": {"n_prompts": 6, "max_new_tokens": 48, "batch": 2},
    "full": {"n_prompts": 48, "max_new_tokens": 1920},
}


def _pass(
    engine: Any, prompts: list[str], schemas: list[dict | None], batch: int, max_new: int, continuous: bool
) -> tuple[list[str], int, float, dict[str, float]]:
    from pumpl_assets.core.generation import GenerationParams

    params = GenerationParams(max_new_tokens=max_new, temperature=0.0)
    steps = 0.0
    t0 = time.perf_counter()
    if continuous:
        gens = engine.generate(prompts, params, schemas, max_batch=batch)
        steps = engine.last_stats["steps"]
    else:
        gens = []
        for b in range(0, len(prompts), batch):
            gens.extend(engine.generate(prompts[b : b + batch], params, schemas[b : b + batch]))
            steps += engine.last_stats["steps"]
    wall = time.perf_counter() - t0
    tokens = sum(g.completion_tokens for g in gens)
    return [g.text for g in gens], tokens, wall, {"steps": steps, "tokens": float(tokens), "wall_s": wall}


def run(ctx: Context) -> BenchResult:
    from bench.bench_eval import _find_model
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_assets.core.generation import load_engine
    from pumpl_assets.core.grammar import request_plan_schema

    spec = get_spec(ctx.partition)
    sizes = {"batch": spec.eval_batch_size} | SIZES["quick" if ctx.quick else "full"]
    model, source = _find_model(ctx)
    cat = ExerciseCatalogue.from_json_file(ctx.catalogue_path)
    engine: Any = load_engine("transformers", model, device="cpu")
    try:
        requests = test_requests(sizes["n_prompts"], ctx.seed)
        prompts = render_prompts(engine.tokenizer, requests, spec.prompt_style)
        schemas: list[dict | None] = [request_plan_schema(r, cat) for r in requests]
        ctx.log("batching: warm-up (excluded)")
        _pass(engine, prompts[:3], schemas[:3], 2, 4, True)
        tps: dict[str, list[float]] = {"consecutive": [], "continuous": []}
        agree: list[float] = []
        runs: list[dict[str, dict[str, float]]] = []
        for i in range(ctx.repeats):
            texts: dict[str, list[str]] = {}
            run_stats: dict[str, dict[str, float]] = {}
            for way in ("consecutive", "continuous"):
                ctx.log(f"batching[{way}]: run {i + 1}/{ctx.repeats}")
                texts[way], tok, wall, run_stats[way] = _pass(
                    engine, prompts, schemas, sizes["batch"], sizes["max_new_tokens"], way == "continuous"
                )
                tps[way].append(tok / wall)
            agree.append(
                sum(a == b for a, b in zip(texts["consecutive"], texts["continuous"], strict=True))
                / len(prompts)
            )
            runs.append(run_stats)
        dtype = engine.dtype
    finally:
        engine.close()
    m_c, m_b = median(tps["continuous"]), median(tps["consecutive"])
    r = ratio(m_c, m_b)
    result = BenchResult(
        NAME,
        details={"sizes": sizes, "model": str(model), "model_source": source, "dtype": dtype, "runs": runs},
    )
    result.metrics.append(
        Metric(
            "continuous_batching_tokens_per_s",
            m_c,
            "tokens/s",
            baseline_name=f"{BASELINE} of {sizes['batch']} ({dtype})",
            baseline_value=m_b,
            ratio=r,
            goal=f"≥ {GOAL}×",
            goal_met=None if r is None else r >= GOAL,
            runs=tps["continuous"],
            baseline_runs=tps["consecutive"],
            details={"batch": sizes["batch"], "n_prompts": sizes["n_prompts"], "dtype": dtype},
        )
    )
    result.metrics.append(
        Metric(
            "continuous_batching_same_output_fraction",
            median(agree),
            "fraction",
            details={"note": "identical plan texts, continuous vs consecutive batches, same prompts"},
        )
    )
    return result
