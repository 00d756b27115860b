"""Evaluation of the base model and the LoRA adapter on the test split, check by check.

For every model in {"base", "adapter"} × mode in {"unconstrained", "served"} (served = the request-aware
grammar of :mod:`pumpl_assets.core.grammar`, exactly what the server applies), on the SAME rows:

* ``json_valid`` / ``schema_valid``;
* one rate per domain check of :mod:`pumpl_assets.core.validate` (``duration``, ``goal_fidelity``,
  ``safety``, ``split``, ``focus``, …) — a row whose answer is not a valid plan fails every check;
* ``adherence`` — every check passed; ``model_adherence`` — every check the mode does NOT guarantee
  passed (unconstrained: all of them; served: all but :data:`grammar.GUARANTEED_CHECKS`), judged on
  what the model decided;
* served answers go through the served post-step (:func:`finalize.finalize_plan`: order, length
  fitting inside the standard's ranges, declared figures), exactly as the server applies it: the
  per-check rates and ``adherence`` score what the person gets, ``decided.<check>`` and
  ``model_adherence`` score the model's own answer before that step, and ``finalized`` is the share of
  plans the step changed;
* ``tokens_per_s``, ``latency_p50_ms`` / ``latency_p95_ms`` (per example: its wall time from entering
  the batch to finishing; decoding is continuously batched, ``batch_size`` rows at once);

plus ``<model>.test_loss`` (mean token NLL of the reference answers, prompt masked) and its perplexity.

The model sees the request AS UNDERSTOOD from the row's free-text ``request_text`` (the split parses it
with the serving parser and stores it as ``understood_json``; rows without it fall back to the request
itself), and every answer is scored against the row's TRUE request (``request_json``): a parser
mistake costs the plan its checks, as it would in production. Every row of every model and mode gets
the same generation budget, ``max_new_tokens`` (the partition's ``eval_max_new_tokens``): a served plan
request that sets no ``max_tokens`` gets up to 2,048 tokens (``pumpl_serving.api.PLAN_MAX_TOKENS``), so
a plan is scored as a person would receive it. (Until 2026-12-01 each row got 1.5 × its reference
answer + 32 tokens; when the offline coach began writing fewer, longer-rest exercises, 10 of 60 served
plans of a model that wrote a few more were cut mid-JSON and scored as no plan, though a served request
would have finished them.) Greedy decoding; one model is loaded and
the base runs go through ``model.disable_adapter()``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pumpl_assets.core import artifacts as A
from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.finalize import finalize_plan
from pumpl_assets.core.generation import GenerationParams, HFEngine, load_engine
from pumpl_assets.core.grammar import (
    GUARANTEED_CHECKS,
    NoSuitableExercisesError,
    request_plan_rules,
    request_plan_schema,
)
from pumpl_assets.core.io import atomic_path, write_json_atomic, write_parquet_atomic
from pumpl_assets.core.prompts import render_example, render_prompt, request_to_prompt
from pumpl_assets.core.schemas import RequestSpec, WorkoutPlanResponse, dump_plan
from pumpl_assets.core.validate import DOMAIN_CHECKS, validate_example

MODES: tuple[str, ...] = ("unconstrained", "served")
# The loss pass holds [batch, length, vocab] fp32 logits (SmolLM2's 49k vocabulary: ~0.4 GB per
# 2k-token row), so it runs in batches of at most this many, whatever the decode batch.
LOSS_BATCH = 8
GUARANTEED_BY_MODE: dict[str, tuple[str, ...]] = {"unconstrained": (), "served": GUARANTEED_CHECKS}
RATE_METRICS: tuple[str, ...] = (
    "json_valid",
    "schema_valid",
    "adherence",
    "model_adherence",
    "plan_safety",
    *DOMAIN_CHECKS,
)
DECIDED_METRICS: tuple[str, ...] = tuple(f"decided.{c}" for c in DOMAIN_CHECKS)
MODE_METRICS: tuple[str, ...] = (*RATE_METRICS, "tokens_per_s", "latency_p50_ms", "latency_p95_ms")
REQUIRED_COLUMNS = ("example_id", "request_json", "plan_json")

PER_EXAMPLE_SCHEMA: dict[str, Any] = {
    "model": pl.String,
    "mode": pl.String,
    "example_id": pl.String,
    "request_json": pl.String,
    "understood_json": pl.String,
    "text": pl.String,
    "plan_text": pl.String,
    "adjustments": pl.List(pl.String),
    "finish_reason": pl.String,
    "json_valid": pl.Boolean,
    "schema_valid": pl.Boolean,
    "adherent": pl.Boolean,
    "model_adherent": pl.Boolean,
    "failed_checks": pl.List(pl.String),
    "decided_failed_checks": pl.List(pl.String),
    "computed_minutes": pl.Float64,
    "reasons": pl.List(pl.String),
    "latency_ms": pl.Float64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
}


@dataclass
class EvalReport:
    summary: dict[str, float]
    per_example: pl.DataFrame
    # The last engine's compiled grammars (generation.GrammarCache; None unconstrained): another
    # evaluation with the same tokenizer passes it on as ``grammars`` instead of compiling them again.
    grammars: Any = field(default=None, repr=False, compare=False)


@dataclass
class _Example:
    example_id: str
    request_json: str
    request: RequestSpec  # the true request (scoring)
    understood: RequestSpec  # what the model is told (prompt and grammar)
    reference: str
    prompt: str
    budget: int
    reference_tokens: int


def _parse_rows(
    test_rows: pl.DataFrame, limit: int | None
) -> list[tuple[str, str, RequestSpec, RequestSpec, str]]:
    missing = [c for c in REQUIRED_COLUMNS if c not in test_rows.columns]
    if missing:
        raise ValueError(f"test_rows lacks column(s) {missing}; it has {test_rows.columns}")
    rows = test_rows.head(limit) if limit is not None else test_rows
    if rows.height == 0:
        raise ValueError("test_rows is empty; nothing to evaluate")
    has_understood = "understood_json" in rows.columns
    out, bad = [], []
    for r in rows.iter_rows(named=True):
        eid = str(r["example_id"])
        try:
            req = RequestSpec.model_validate_json(r["request_json"])
            seen = (
                RequestSpec.model_validate_json(r["understood_json"])
                if has_understood and r["understood_json"]
                else req
            )
        except (ValueError, TypeError) as exc:
            bad.append(f"{eid}: {str(exc).splitlines()[0]}")
            continue
        if not isinstance(r["plan_json"], str) or not r["plan_json"]:
            bad.append(f"{eid}: empty plan_json")
            continue
        out.append((eid, r["request_json"], req, seen, r["plan_json"]))
    if bad:
        raise ValueError(f"{len(bad)} test row(s) are malformed (fix the split): " + "; ".join(bad[:5]))
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _adapter_toggle(engine: HFEngine, model: str) -> contextlib.AbstractContextManager[Any]:
    if model == "base" and hasattr(engine.model, "disable_adapter"):
        return engine.model.disable_adapter()  # type: ignore[no-any-return]
    return contextlib.nullcontext()


def _as_hf(engine: Any) -> HFEngine:
    if not isinstance(engine, HFEngine):
        raise TypeError(f"evaluate_models needs a transformers-based engine, got {type(engine).__name__}")
    return engine


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """(decoder, LM head) of a causal LM, PEFT-wrapped or not (LoRA layers stay in place, so an
    unmerged adapter and ``disable_adapter()`` still apply); (None, None) for another layout."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = getattr(causal_lm, "model", None), getattr(causal_lm, "lm_head", None)
    return (decoder, head) if decoder is not None and head is not None else (None, None)


def answer_loss(
    engine: HFEngine,
    examples: list[tuple[str, str]],
    *,
    style: str,
    system_prompt: str | None,
    batch_size: int = 8,
) -> tuple[float, int]:
    """(mean token NLL of the answers, answer-token count) for (user, answer) pairs.

    Each example is rendered exactly as in training (:func:`render_example`), the prompt
    part is masked, and the loss is summed over answer tokens (end-of-turn included) and
    divided by their total count.
    """
    import torch

    tok = engine.tokenizer
    seqs: list[tuple[list[int], int]] = []
    for user, answer in examples:
        prompt, full = render_example(tok, user, answer, system=system_prompt, style=style)
        ids = tok(full, add_special_tokens=False).input_ids
        n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
        seqs.append((ids, n_prompt))
    # Batches of similar length (the split's order mixed 300- and 1,900-token rows, so most of a
    # batch's width was padding); the sum over answer tokens does not depend on the order.
    seqs.sort(key=lambda s: len(s[0]))
    decoder, lm_head = _decoder_and_head(engine.model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for chunk in _batches(seqs, batch_size):
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), engine.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for i, (ids, n_prompt) in enumerate(chunk):
                t = torch.tensor(ids, dtype=torch.long)
                input_ids[i, : len(ids)] = t
                mask[i, : len(ids)] = 1
                labels[i, n_prompt : len(ids)] = t[n_prompt:]
            inputs = {"input_ids": input_ids.to(engine.device), "attention_mask": mask.to(engine.device)}
            shift_labels = labels[:, 1:].to(engine.device)
            scored = shift_labels != -100
            # The 49k-vocabulary head only on answer positions (as the training loss does): prompt
            # and padding positions were a batch x width x vocabulary tensor scored only to be ignored.
            if decoder is not None:
                hidden = decoder(**inputs, use_cache=False).last_hidden_state[:, :-1]
                logits = lm_head(hidden[scored]).float()
            else:  # an unknown layout: full logits
                logits = engine.model(**inputs).logits[:, :-1, :][scored].float()
            nll = torch.nn.functional.cross_entropy(logits, shift_labels[scored], reduction="sum")
            total += float(nll)
            count += int(scored.sum())
    if count == 0:
        raise ValueError("no answer tokens to score (every reference answer was empty after masking)")
    return total / count, count


def score_answer(request: RequestSpec, text: str, catalogue: ExerciseCatalogue, mode: str) -> dict[str, Any]:
    """Per-example facts for one answer: validity, each check, adherence and model-decided adherence."""
    out = validate_example(request, text, catalogue)
    adh = out.adherence
    checks = adh.checks if adh is not None else dict.fromkeys(DOMAIN_CHECKS, False)
    failed = [c for c in DOMAIN_CHECKS if not checks[c]]
    guaranteed = set(GUARANTEED_BY_MODE[mode])
    return {
        "json_valid": out.stage != "json",
        "schema_valid": out.stage in ("domain", "ok"),
        "adherent": adh is not None and adh.ok,
        "model_adherent": adh is not None and not [c for c in failed if c not in guaranteed],
        "failed_checks": failed,
        "computed_minutes": adh.computed_minutes if adh else None,
        "reasons": list(out.reasons),
    }


def score_served(
    request: RequestSpec, understood: RequestSpec, text: str, catalogue: ExerciseCatalogue
) -> dict[str, Any]:
    """A served answer scored twice: before the post-step (what the model decided: ``model_adherent``,
    ``decided_failed_checks``) and after it (what the person gets: every other field). The post-step
    works from the request the server understood; scoring uses the true one."""
    decided = score_answer(request, text, catalogue, "served")
    final_text, adjustments = text, []
    try:
        plan = WorkoutPlanResponse.model_validate_json(text)
    except ValueError:
        plan = None
    if plan is not None:
        done = finalize_plan(understood, plan, catalogue)
        final_text, adjustments = dump_plan(done.plan), done.adjustments
    final = score_answer(request, final_text, catalogue, "served") if adjustments else dict(decided)
    final["model_adherent"] = decided["model_adherent"]
    return {
        **final,
        "plan_text": final_text,
        "adjustments": adjustments,
        "decided_failed_checks": decided["failed_checks"],
    }


def mode_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Rates over ``rows`` (one model × mode): validity, adherence, and each check's pass rate."""
    n = len(rows)
    if n == 0:
        raise ValueError("no rows to summarise")
    out = {
        "json_valid": sum(r["json_valid"] for r in rows) / n,
        "schema_valid": sum(r["schema_valid"] for r in rows) / n,
        "adherence": sum(r["adherent"] for r in rows) / n,
        "model_adherence": sum(r["model_adherent"] for r in rows) / n,
    }
    for c in DOMAIN_CHECKS:
        out[c] = sum(r["schema_valid"] and c not in r["failed_checks"] for r in rows) / n
    if all(r.get("decided_failed_checks") is not None for r in rows):
        for c in DOMAIN_CHECKS:
            out[f"decided.{c}"] = (
                sum(r["schema_valid"] and c not in r["decided_failed_checks"] for r in rows) / n
            )
        out["finalized"] = sum(bool(r.get("adjustments")) for r in rows) / n
    # Safety of what a person would receive: among the answers that ARE plans (a cut-off answer is
    # not served as a plan), the share with no contraindicated exercise; NaN when there is no plan.
    plans = [r for r in rows if r["schema_valid"]]
    out["n_plans"] = float(len(plans))
    out["plan_safety"] = (
        sum("safety" not in r["failed_checks"] for r in plans) / len(plans) if plans else float("nan")
    )
    return out


def longest_first(requests: list[RequestSpec]) -> list[int]:
    """Admission order for the continuously batched decode: the longest expected plans first.

    A plan's length grows with its sessions (``days_per_week``) and each session's length
    (``minutes``): on the 62 test rows of the 2026-12-03 CI model the product correlates with the
    answer's tokens at 0.71-0.88. Rows admitted in split order left the longest plans (the base model's
    6-day weeks run to the 1,920-token budget) decoding alone at the end, where a step costs nearly as
    much as a full batch's. Admitting them first (longest-processing-time-first scheduling) lets short
    rows fill the slots around them: replaying that run's per-row token counts through the measured
    step costs gives base served 298 -> 258 s, adapter served 145 -> 134 s, unconstrained 134 -> 120 s.
    Stable: rows with the same key keep their split order. Greedy answers do not depend on the order
    beyond the rounding of a differently shaped batch.
    """
    return sorted(range(len(requests)), key=lambda i: (-requests[i].days_per_week, -requests[i].minutes, i))


def _run_mode(
    engine: HFEngine,
    model: str,
    mode: str,
    examples: list[_Example],
    catalogue: ExerciseCatalogue,
    *,
    batch_size: int,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows: list[dict[str, Any]] = []
    schemas: list[dict | None] | None = None
    if mode == "served":
        schemas = []
        for ex in examples:
            try:
                schemas.append(request_plan_schema(ex.understood, catalogue))
            except NoSuitableExercisesError:
                schemas.append(None)  # the server answers such a request without a grammar too
    params = [
        GenerationParams(
            max_new_tokens=ex.budget,
            temperature=0.0,
            plan_rules=request_plan_rules(ex.understood, catalogue) if mode == "served" else None,
        )
        for ex in examples
    ]
    order = longest_first([ex.understood for ex in examples])
    with _adapter_toggle(engine, model):
        # Continuous batching: batch_size rows at once, a finished row replaced by the next one.
        t0 = time.perf_counter()
        decoded = engine.generate(
            [examples[i].prompt for i in order],
            [params[i] for i in order],
            [schemas[i] for i in order] if schemas is not None else None,
            max_batch=batch_size,
        )
        gen_seconds = time.perf_counter() - t0
    by_row = dict(zip(order, decoded, strict=True))
    gens = [by_row[i] for i in range(len(examples))]
    gen_tokens = 0
    for ex, g in zip(examples, gens, strict=True):
        gen_tokens += g.completion_tokens
        rows.append(
            {
                "model": model,
                "mode": mode,
                "example_id": ex.example_id,
                "request_json": ex.request_json,
                "understood_json": ex.understood.key(),
                "text": g.text,
                "finish_reason": g.finish_reason,
                **(
                    score_served(ex.request, ex.understood, g.text, catalogue)
                    if mode == "served"
                    else {
                        **score_answer(ex.request, g.text, catalogue, mode),
                        "plan_text": g.text,
                        "adjustments": [],
                        "decided_failed_checks": None,
                    }
                ),
                "latency_ms": g.seconds * 1000.0,
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens,
            }
        )
    lat = [r["latency_ms"] for r in rows]
    metrics = {
        **mode_metrics(rows),
        "tokens_per_s": gen_tokens / gen_seconds if gen_seconds > 0 else 0.0,
        "latency_p50_ms": _percentile(lat, 0.50),
        "latency_p95_ms": _percentile(lat, 0.95),
    }
    if mode == "served":
        # How often the decode guard's rules narrowed a choice, and stepped aside (name_guard module doc).
        stats = getattr(engine, "last_stats", {}) or {}
        metrics |= {k: float(stats.get(k, 0.0)) for k in ("guard_rule_bans", "guard_rule_fallbacks")}
    return rows, metrics


def evaluate_models(
    base_model: Path,
    adapter_dir: Path | None,
    test_rows: pl.DataFrame,
    catalogue: ExerciseCatalogue,
    *,
    style: str,
    system_prompt: str | None,
    batch_size: int = 8,
    max_new_tokens: int = 1536,
    modes: tuple[str, ...] | list[str] = MODES,
    include_base: bool = True,
    base_modes: tuple[str, ...] | list[str] = ("served",),
    limit: int | None = None,
    engine: HFEngine | None = None,
    dtype: str = "auto",
    tuned_model: Path | None = None,
    tuned_engine: str = "transformers",
    grammars: Any = None,
) -> EvalReport:
    """Generate, validate and score base and adapter on ``test_rows`` (see module doc).

    Every model is evaluated on exactly the same rows in every mode. ``engine`` may pass an already
    loaded :class:`HFEngine` (with the adapter applied unmerged when ``adapter_dir`` is given);
    otherwise one is loaded and closed here. ``dtype`` is the compute dtype of a loaded engine
    (``auto``: bf16 on a GPU or a CPU with native bf16, else fp32); ``dtype_bf16`` records it.
    ``base_modes``: the modes the base model is decoded in when an adapter is evaluated too (default:
    served only — the configuration ``better_than_base`` compares; an untuned base writes no valid
    plan unconstrained, which costs minutes and tells nothing).
    ``tuned_model``: a merged fine-tuned folder evaluated as the ``adapter`` rows (instead of
    ``adapter_dir`` applied unmerged) — the artifact that is quantized and served; base and tuned
    model then load one after the other, each in its own engine.
    ``tuned_engine``: the engine kind ``tuned_model`` is loaded with (``llamacpp``: a GGUF folder from
    :func:`~pumpl_assets.core.gguf.export_gguf`, decoded by llama.cpp with the same prompts, budgets,
    grammar and sampling rules). An engine without a torch forward computes no test loss (NaN).
    ``grammars``: compiled grammars of an earlier evaluation (its :attr:`EvalReport.grammars`), adopted
    when they fit the first engine's tokenizer; the ``grammar.*`` figures then count both evaluations.
    """
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes or not modes:
        raise ValueError(f"unknown mode(s) {bad_modes or modes}; use a subset of {MODES}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
    if tuned_model is not None and (adapter_dir is not None or engine is not None):
        raise ValueError("tuned_model (a merged folder) excludes adapter_dir and engine")
    if tuned_engine != "transformers" and tuned_model is None:
        raise ValueError(f"tuned_engine={tuned_engine!r} applies to tuned_model, which is not given")
    tuned = adapter_dir is not None or tuned_model is not None
    models = (["base"] if include_base or not tuned else []) + (["adapter"] if tuned else [])
    parsed = _parse_rows(test_rows, limit)

    own = engine is None
    first_is_tuned = tuned_model is not None and "base" not in models
    eng = engine or load_engine(
        tuned_engine if first_is_tuned else "transformers",
        tuned_model if first_is_tuned and tuned_model is not None else base_model,
        adapter_path=adapter_dir,
        dtype=dtype if not first_is_tuned or tuned_engine == "transformers" else "auto",
    )
    if not isinstance(eng, HFEngine):
        raise TypeError(f"evaluate_models needs a transformers-based engine, got {type(eng).__name__}")
    eng.adopt_grammars(grammars)
    if adapter_dir is not None and not hasattr(eng.model, "disable_adapter"):
        raise ValueError("adapter_dir given but the engine's model has no PEFT adapter applied")
    try:
        tok = eng.tokenizer
        examples = []
        for eid, rj, req, seen, ref in parsed:
            prompt = render_prompt(tok, request_to_prompt(seen), system=system_prompt, style=style)
            n_ref = len(tok(ref, add_special_tokens=False).input_ids)
            examples.append(_Example(eid, rj, req, seen, ref, prompt, max_new_tokens, n_ref))
        # Longest expected answers first: decoding is continuously batched, so the short rows fill the
        # places the long ones leave and the batch stays full to the end (longest-processing-time first).
        examples.sort(key=lambda e: (-e.reference_tokens, e.example_id))

        summary: dict[str, float] = {
            "n_examples": float(len(examples)),
            "n_understood_differs": float(sum(e.understood != e.request for e in examples)),
            "dtype_bf16": float(getattr(eng, "dtype", "") == "bfloat16"),
        }
        all_rows: list[dict[str, Any]] = []
        grammar_stats = []
        for model in models:
            if tuned_model is not None and model == "adapter" and not first_is_tuned:
                # The base is done: its engine gives way to the merged model's (one in memory at a time),
                # which keeps the compiled grammars when its tokenizer is the base's (it is, once merged).
                grammars = eng._grammars
                eng.close()
                tuned_dtype = dtype if tuned_engine == "transformers" else "auto"
                eng = _as_hf(load_engine(tuned_engine, tuned_model, dtype=tuned_dtype))
                if grammars is not None and not eng.adopt_grammars(grammars):
                    grammar_stats.append(grammars.stats)
            loss, n_tok = float("nan"), 0
            if eng.computes_loss:
                with _adapter_toggle(eng, model):
                    loss, n_tok = answer_loss(
                        eng,
                        [(request_to_prompt(e.understood), e.reference) for e in examples],
                        style=style,
                        system_prompt=system_prompt,
                        batch_size=min(batch_size, LOSS_BATCH),
                    )
            summary[f"{model}.test_loss"] = loss
            summary[f"{model}.perplexity"] = math.exp(min(loss, 50.0)) if loss == loss else float("nan")
            summary[f"{model}.answer_tokens"] = float(n_tok)
            summary[f"{model}.n_generated"] = float(len(examples))
            model_modes = [m for m in modes if m in base_modes] if model == "base" and tuned else modes
            for mode in model_modes:
                rows, metrics = _run_mode(eng, model, mode, examples, catalogue, batch_size=batch_size)
                all_rows.extend(rows)
                summary.update({f"{model}.{mode}.{k}": float(v) for k, v in metrics.items()})
        if eng._grammars is not None:
            grammar_stats.append(eng._grammars.stats)
        if grammar_stats:
            compiles = sum(st.compiles for st in grammar_stats)
            summary["grammar.compiles"] = float(compiles)
            summary["grammar.cache_hits"] = float(sum(st.hits for st in grammar_stats))
            summary["grammar.compile_s_mean"] = (
                sum(st.compile_seconds for st in grammar_stats) / compiles if compiles else 0.0
            )
        per_example = pl.DataFrame(all_rows, schema=PER_EXAMPLE_SCHEMA)
        return EvalReport(summary=summary, per_example=per_example, grammars=eng._grammars)
    finally:
        if own:
            eng.close()


def failure_causes(per_example: pl.DataFrame, *, top: int = 3) -> dict[str, dict[str, list[tuple[str, int]]]]:
    """``"<model>.<mode>" → check → [(reason without the exercise names, count), …]``: why checks failed."""
    import re

    out: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for (model, mode), grp in per_example.group_by(["model", "mode"], maintain_order=True):
        causes: dict[str, Counter[str]] = {}
        for reasons in grp["reasons"].to_list():
            for r in reasons or []:
                check, _, detail = r.partition(":")
                generic = re.sub(r"'[^']*'", "'…'", re.sub(r"\d+(\.\d+)?", "N", detail.strip()))
                causes.setdefault(check, Counter())[generic[:140]] += 1
        out[f"{model}.{mode}"] = {c: cnt.most_common(top) for c, cnt in causes.items()}
    return out


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def _plot_rates(summary: dict[str, float], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["schema_valid", "adherence", "model_adherence", "duration", "goal_fidelity", "safety", "split"]
    combos = sorted({k.rsplit(".", 1)[0] for k in summary if k.endswith(".schema_valid")})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics)), 4))
    width = 0.8 / max(1, len(combos))
    for j, combo in enumerate(combos):
        vals = [summary.get(f"{combo}.{m}", float("nan")) for m in metrics]
        ax.bar([i + j * width for i in range(len(metrics))], vals, width=width, label=combo)
    ax.set_xticks([i + width * (len(combos) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of test examples")
    ax.set_title("Validity and adherence by model and decoding mode")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_latency(per_example: pl.DataFrame, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if per_example.height:
        for (model, mode), grp in per_example.group_by(["model", "mode"], maintain_order=True):
            ax.scatter(grp["completion_tokens"], grp["latency_ms"], label=f"{model}.{mode}", s=14)
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("batch latency (ms)")
    ax.set_title("Latency vs completion length")
    if per_example.height:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_eval_outputs(report: EvalReport, out_dir: Path | str) -> dict[str, Path]:
    """Write per_example.parquet, summary.json and two PNG plots into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_example": write_parquet_atomic(out / A.FILE_PER_EXAMPLE, report.per_example),
        "summary": write_json_atomic(
            out / A.FILE_SUMMARY,
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.summary.items()},
        ),
    }
    _plot_rates(report.summary, out / A.FILE_RATES_PLOT)
    _plot_latency(report.per_example, out / A.FILE_LATENCY_PLOT)
    paths["rates_plot"] = out / A.FILE_RATES_PLOT
    paths["latency_plot"] = out / A.FILE_LATENCY_PLOT
    return paths


def load_summary(out_dir: Path | str) -> dict[str, float]:
    """Read back summary.json (None → NaN)."""
    raw = json.loads((Path(out_dir) / A.FILE_SUMMARY).read_text(encoding="utf-8"))
    return {k: float("nan") if v is None else float(v) for k, v in raw.items()}


@dataclass
class RateComparison:
    """Schema-valid rates of a reference and a candidate model on the same test rows."""

    n: int
    reference_rate: float
    candidate_rate: float
    regressions: int  # rows valid for the reference, invalid for the candidate
    improvements: int  # the other way round

    @property
    def drop(self) -> float:
        return self.reference_rate - self.candidate_rate

    def to_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "reference_rate": self.reference_rate,
            "candidate_rate": self.candidate_rate,
            "drop": self.drop,
            "regressions": self.regressions,
            "improvements": self.improvements,
        }


def reference_rows(per_example: pl.DataFrame, mode: str = "unconstrained") -> pl.DataFrame:
    """The fine-tuned model's rows of an eval_report ``per_example`` frame for ``mode`` (the reference
    a quantized model is compared with); an error when there are none."""
    sel = per_example.filter((pl.col("model") == "adapter") & (pl.col("mode") == mode))
    if sel.height == 0:
        raise ValueError(f"eval_report holds no fine-tuned {mode!r} rows to compare a quantized model with")
    return sel


def compare_schema_valid(
    reference: pl.DataFrame, candidate: pl.DataFrame, *, mode: str = "unconstrained"
) -> RateComparison:
    """:func:`compare_rates` of the ``schema_valid`` column."""
    return compare_rates(reference, candidate, mode=mode, column="schema_valid")


def compare_rates(
    reference: pl.DataFrame, candidate: pl.DataFrame, *, mode: str, column: str
) -> RateComparison:
    """Compare a boolean ``column`` (``schema_valid``, ``adherent``…) of two per-example frames (from
    :func:`evaluate_models`, one model each) row by row.

    Both must hold exactly the same example ids for ``mode``; a mismatch is an error, never a
    comparison of rates over different rows.
    """
    if column not in PER_EXAMPLE_SCHEMA or PER_EXAMPLE_SCHEMA[column] != pl.Boolean:
        raise ValueError(f"{column!r} is not a boolean per-example column")

    def rows(df: pl.DataFrame, name: str) -> dict[str, bool]:
        sel = df.filter(pl.col("mode") == mode)
        if sel.height == 0:
            raise ValueError(f"{name} has no {mode!r} rows to compare")
        models = sel["model"].unique().to_list()
        if len(models) != 1:
            raise ValueError(f"{name} holds several models {models}; pass one model's rows")
        return dict(zip(sel["example_id"].to_list(), sel[column].to_list(), strict=True))

    ref, cand = rows(reference, "reference"), rows(candidate, "candidate")
    if set(ref) != set(cand):
        only_ref, only_cand = sorted(set(ref) - set(cand)), sorted(set(cand) - set(ref))
        raise ValueError(
            f"reference and candidate were evaluated on different rows "
            f"(only reference: {only_ref[:5]}, only candidate: {only_cand[:5]})"
        )
    n = len(ref)
    return RateComparison(
        n=n,
        reference_rate=sum(ref.values()) / n,
        candidate_rate=sum(cand.values()) / n,
        regressions=sum(1 for k, v in ref.items() if v and not cand[k]),
        improvements=sum(1 for k, v in ref.items() if not v and cand[k]),
    )


@dataclass
class QuantEvaluation:
    """One quantized artifact decoded on a reference's rows (:func:`evaluate_against_reference`)."""

    summary: dict[str, float]
    per_example: pl.DataFrame
    comparisons: dict[str, RateComparison]  # per-example column -> comparison with the reference
    grammars: Any = field(default=None, repr=False, compare=False)  # as EvalReport.grammars


def evaluate_against_reference(
    model_path: Path,
    engine_kind: str,
    reference: pl.DataFrame,
    test_rows: pl.DataFrame,
    catalogue: ExerciseCatalogue,
    *,
    mode: str,
    columns: tuple[str, ...],
    style: str,
    system_prompt: str | None,
    batch_size: int,
    max_new_tokens: int,
    grammars: Any = None,
) -> QuantEvaluation:
    """Decode ``model_path`` with engine ``engine_kind`` on exactly the rows of ``reference`` (one
    model's ``mode`` rows of an eval_report, see :func:`reference_rows`), the same way (prompts,
    budgets, batch size, grammar in served mode, greedy), and compare ``columns`` row by row.
    ``grammars``: an earlier evaluation's compiled grammars (see :func:`evaluate_models`)."""
    ids = reference.filter(pl.col("mode") == mode)["example_id"]
    rows = test_rows.filter(pl.col("example_id").is_in(ids.implode()))
    if rows.height != ids.len():
        raise ValueError(
            f"the reference holds {ids.len()} {mode!r} rows but only {rows.height} of them are in the test split"
        )
    report = evaluate_models(
        model_path,
        None,
        rows,
        catalogue,
        style=style,
        system_prompt=system_prompt,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        modes=(mode,),
        include_base=False,
        tuned_model=model_path,
        tuned_engine=engine_kind,
        grammars=grammars,
    )
    comparisons = {c: compare_rates(reference, report.per_example, mode=mode, column=c) for c in columns}
    return QuantEvaluation(report.summary, report.per_example, comparisons, report.grammars)
