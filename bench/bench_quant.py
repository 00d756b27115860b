"""quant: the AWQ model vs the merged (full-precision) model — size, decode speed, schema validity.

Models: the materialized artifacts ``<data>/artifacts/<partition>/{merged_model,awq_model}/model``
when both exist (the pipeline's fine-tuned model); otherwise the base model is the "merged"
side and this benchmark AWQ-quantizes it itself with
:class:`pumpl_assets.core.quantize.LLMCompressorQuantizer` (W4A16, the catalogue's group size,
calibration = rendered offline-teacher examples) into ``<out>/work/quant/awq_model`` (reused by
later runs when its marker names the same source; quantization time is not a measured figure).

* **size** — weights files on disk (:func:`pumpl_assets.core.quantize.model_size_bytes`);
  baseline the merged model; goal = the catalogue gate ``max_awq_size_ratio``.
* **decode tokens/s** — batch-1 greedy decode-only tokens/s, measured exactly like the decode
  benchmark (:func:`bench.bench_decode.decode_rate`), both engines loaded, runs alternating.
* **batched decode tokens/s** — that same batch, full unconstrained plans (``awq_model``'s own
  workload), through the AWQ engine (decompressed on load, plain ``nn.Linear`` forward:
  :func:`pumpl_assets.core.generation.dense_compressed_tensors`) against the same folder as
  ``from_pretrained`` leaves it (compressed-tensors' offload cache and per-Linear shim), with the
  number of rows whose greedy tokens are identical.
* **schema-valid rate** — greedy, unconstrained answers to test prompts (one batch per
  model) that :func:`pumpl_assets.core.schemas.parse_plan` accepts; goal = the gate
  ``max_awq_schema_drop``. With the base-model fallback both rates are expected to be ~0 (the
  base model was never taught the format), which the report says.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
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

NAME = "quant"
SIZES = {
    "quick": {"n_calibration": 4, "decode_tokens": 12, "n_valid_prompts": 2, "valid_max_new_tokens": 24},
    "full": {"n_calibration": 8, "decode_tokens": 48, "n_valid_prompts": 24, "valid_max_new_tokens": 0},
}  # valid_max_new_tokens 0 = the catalogue's eval_max_new_tokens


def find_models(ctx: Context) -> tuple[Path, Path, str]:
    """(merged dir, awq dir, source description); quantizes the base model when no artifacts exist."""
    from pumpl_assets.core import settings

    merged = settings.artifacts_dir(ctx.partition, "merged_model") / "model"
    awq = settings.artifacts_dir(ctx.partition, "awq_model") / "model"
    if not ctx.model_given and (merged / "config.json").is_file() and (awq / "config.json").is_file():
        return merged, awq, "materialized artifacts"
    return (
        ctx.model_dir,
        quantize_base(ctx),
        "base model quantized by the benchmark (no materialized artifacts)",
    )


def quantize_base(ctx: Context) -> Path:
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.prompts import render_example
    from pumpl_assets.core.quantize import QUANT_MARKER, LLMCompressorQuantizer, group_size_for
    from pumpl_assets.core.training.data import example_system

    sizes = SIZES["quick" if ctx.quick else "full"]
    out = ctx.work_dir(NAME) / "awq_model"
    marker = out / QUANT_MARKER
    if marker.is_file():
        meta = json.loads(marker.read_text())
        if (
            meta.get("source") == str(ctx.model_dir)
            and meta.get("n_calibration", 0) >= sizes["n_calibration"]
        ):
            ctx.log(f"quant: reusing {out}")
            return out
    spec = get_spec(ctx.partition)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ctx.model_dir)
    examples, _ = build_examples(sizes["n_calibration"], ctx.seed, ctx.catalogue_path)
    texts = [
        render_example(tok, ex.user, ex.assistant, system=example_system(ex, None), style=spec.prompt_style)[
            1
        ]
        for ex in examples
    ]
    group = group_size_for(ctx.model_dir, preferred=spec.awq_group_size)
    ctx.log(f"quant: AWQ-quantizing {ctx.model_dir} (group {group}, {len(texts)} calibration texts)")
    res = LLMCompressorQuantizer("cpu", max_calibration=sizes["n_calibration"]).quantize(
        ctx.model_dir, out, texts, group_size=group, max_seq_len=spec.max_seq_len
    )
    ctx.log(f"quant: quantized in {res.wall_s:.0f} s")
    return out


@dataclass
class BatchPass:
    valid_rate: float
    texts: list[str]
    token_ids: list[list[int]]
    tokens: int
    seconds: float


def batch_pass(engine: Any, prompts: list[str], max_new: int) -> BatchPass:
    """Greedy, unconstrained, all prompts in one continuously batched call: what ``awq_model`` decodes."""
    from pumpl_assets.core.generation import GenerationParams
    from pumpl_assets.core.schemas import parse_plan

    t0 = time.perf_counter()
    gens = engine.generate(prompts, GenerationParams(max_new_tokens=max_new))
    seconds = time.perf_counter() - t0
    ok = 0
    for g in gens:
        try:
            parse_plan(g.text.strip())
            ok += 1
        except ValueError:
            pass
    return BatchPass(
        ok / len(prompts),
        [g.text for g in gens],
        [g.token_ids for g in gens],
        sum(g.completion_tokens for g in gens),
        seconds,
    )


def load_awq_as_transformers_loads_it(awq_dir: Path) -> Any:
    """The AWQ engine without :func:`dense_compressed_tensors`: compressed-tensors' offload cache and
    per-Linear quantize-dequantize shim left in place, as ``from_pretrained`` leaves them (the baseline)."""
    from unittest import mock

    from pumpl_assets.core import generation

    with mock.patch.object(generation, "dense_compressed_tensors", lambda model: 0):
        return generation.load_engine("awq", awq_dir, device="cpu")


def run(ctx: Context) -> BenchResult:
    from bench.bench_decode import decode_rate
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.generation import load_engine
    from pumpl_assets.core.quantize import model_size_bytes

    sizes = SIZES["quick" if ctx.quick else "full"]
    spec = get_spec(ctx.partition)
    merged_dir, awq_dir, source = find_models(ctx)
    result = BenchResult(
        NAME, details={"sizes": sizes, "merged": str(merged_dir), "awq": str(awq_dir), "source": source}
    )
    m_size, a_size = model_size_bytes(merged_dir), model_size_bytes(awq_dir)
    size_ratio = a_size / m_size
    result.metrics.append(
        Metric(
            "quant_size",
            a_size / 2**20,
            "MiB on disk",
            baseline_name="merged model on disk (full precision)",
            baseline_value=m_size / 2**20,
            ratio=size_ratio,
            goal=f"≤ {spec.gates.max_awq_size_ratio}× (gate max_awq_size_ratio)",
            goal_met=size_ratio <= spec.gates.max_awq_size_ratio,
        )
    )

    engines: dict[str, Any] = {}
    try:
        engines["merged"] = load_engine("transformers", merged_dir, device="cpu")  # same auto dtype as awq
        engines["awq"] = load_engine("awq", awq_dir, device="cpu")
        tok = engines["merged"].tokenizer
        prompt = render_prompts(tok, test_requests(1, ctx.seed), spec.prompt_style)[0]
        ctx.log("quant: decode warm-up (excluded)")
        for eng in engines.values():
            decode_rate(eng, prompt, sizes["decode_tokens"])
        rates: dict[str, list[float]] = {"merged": [], "awq": []}
        for i in range(ctx.repeats):
            for key, eng in engines.items():
                ctx.log(f"quant: decode run {i + 1}/{ctx.repeats} ({key})")
                r = decode_rate(eng, prompt, sizes["decode_tokens"])
                if r["decode_tokens_per_s"] is not None:
                    rates[key].append(r["decode_tokens_per_s"])
        if rates["merged"] and rates["awq"]:
            ma, mm = median(rates["awq"]), median(rates["merged"])
            result.metrics.append(
                Metric(
                    "quant_decode_tokens_per_s",
                    ma,
                    "tokens/s",
                    baseline_name="merged model, same decode loop and dtype",
                    baseline_value=mm,
                    ratio=ratio(ma, mm),
                    runs=rates["awq"],
                    baseline_runs=rates["merged"],
                    details={"batch": 1, "new_tokens": sizes["decode_tokens"]},
                )
            )
        else:
            result.notes.append(
                "a model stopped after one token in every decode run; decode speed not reported"
            )

        max_new = sizes["valid_max_new_tokens"] or spec.eval_max_new_tokens
        prompts = render_prompts(tok, test_requests(sizes["n_valid_prompts"], ctx.seed), spec.prompt_style)
        ctx.log(f"quant: schema-valid rate on {len(prompts)} prompts (max_new_tokens {max_new})")
        passes = {key: batch_pass(eng, prompts, max_new) for key, eng in engines.items()}
        engines["awq_as_loaded"] = load_awq_as_transformers_loads_it(awq_dir)
        ctx.log("quant: the same batch through the AWQ folder as transformers loads it (the baseline)")
        passes["awq_as_loaded"] = batch_pass(engines["awq_as_loaded"], prompts, max_new)
    finally:
        for eng in engines.values():
            eng.close()
    valid = {key: p.valid_rate for key, p in passes.items()}
    samples = {key: p.texts for key, p in passes.items()}
    dense, loaded = passes["awq"], passes["awq_as_loaded"]
    dense_tps, loaded_tps = dense.tokens / dense.seconds, loaded.tokens / loaded.seconds
    result.metrics.append(
        Metric(
            "quant_batch_decode_tokens_per_s",
            dense_tps,
            "tokens/s",
            baseline_name="the same AWQ folder as transformers loads it (compressed-tensors shim + offload cache)",
            baseline_value=loaded_tps,
            ratio=ratio(dense_tps, loaded_tps),
            details={
                "rows": len(prompts),
                "max_new_tokens": max_new,
                "tokens": dense.tokens,
                "identical_rows": sum(a == b for a, b in zip(dense.token_ids, loaded.token_ids, strict=True)),
                "merged_tokens_per_s": passes["merged"].tokens / passes["merged"].seconds,
            },
        )
    )
    drop = valid["merged"] - valid["awq"]
    result.metrics.append(
        Metric(
            "quant_schema_valid",
            100 * valid["awq"],
            "% schema-valid (unconstrained)",
            baseline_name="merged model (full precision)",
            baseline_value=100 * valid["merged"],
            ratio=ratio(valid["awq"], valid["merged"]),
            goal=f"drop ≤ {100 * spec.gates.max_awq_schema_drop:.0f} points (gate max_awq_schema_drop)",
            goal_met=drop <= spec.gates.max_awq_schema_drop,
            details={"n_prompts": len(prompts), "max_new_tokens": max_new, "drop_points": 100 * drop},
        )
    )
    result.details["sample_answers"] = {k: [t[:300] for t in v[:2]] for k, v in samples.items()}
    if source.startswith("base"):
        result.notes.append(
            "No materialized merged/AWQ artifacts: the base model (not fine-tuned) was quantized here, so the "
            "schema-valid rates say little (the base model does not know the plan format)."
        )
    return result
