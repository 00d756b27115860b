"""Distillation: sample workout requests, ask a teacher for plans, keep the good ones.

* :func:`sample_requests` — a seeded, stratified, prefix-stable request sample.
* :func:`distill` — one teacher pass; every request ends up in exactly one of
  ``rows`` (a plan that parses and passes :func:`pumpl_assets.core.validate.validate_example`)
  or ``quarantine`` (with the reason). ``len(requests) == rows.height + quarantine.height``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import polars as pl

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.prompts import request_to_prompt
from pumpl_assets.core.request_text import phrase_request
from pumpl_assets.core.schemas import (
    FOCUSES,
    GOALS,
    LEVELS,
    LIMITATIONS,
    MINUTES_CHOICES,
    Equipment,
    RequestSpec,
    dump_plan,
)
from pumpl_assets.core.teachers.base import Teacher, TeacherResult, estimate_cost_usd
from pumpl_assets.core.validate import canonical_plan, validate_example

# Equipment sets people actually own (body only is always implied by RequestSpec).
EQUIPMENT_SETS: tuple[tuple[Equipment, ...], ...] = (
    ("body only",),
    ("dumbbell",),
    ("kettlebells",),
    ("bands",),
    ("dumbbell", "bands"),
    ("barbell", "dumbbell", "cable", "machine"),
)
LIMITATION_RATE = 0.3
FOCUS_RATE = 0.25
GRID_SIZE = len(GOALS) * len(LEVELS) * len(EQUIPMENT_SETS)  # 108

ROW_COLUMNS = {
    "request_json": pl.String,
    "request_text": pl.String,
    "prompt": pl.String,
    "plan_json": pl.String,
    "teacher": pl.String,
    "model": pl.String,
    "cache_hit": pl.Boolean,
}
QUARANTINE_COLUMNS = {"request_json": pl.String, "reason": pl.String}


def max_minutes(goal: str, level: str) -> int:
    """Longest session the sampler draws for a goal × level ([ACSM09]: novices train in short
    sessions; HIIT circuits rarely run past an hour, flexibility sessions past 45 minutes)."""
    if goal == "mobility":
        return 45
    if goal == "fat_loss" or level == "beginner":
        return 60
    return 90 if level == "intermediate" else 120


def _cell(i: int) -> tuple[int, int, int]:
    """Index → (goal, level, equipment) indices: a bijection on each block of 108 consecutive indices
    (every grid cell once); any 6 consecutive indices cover all goals."""
    j = i % GRID_SIZE
    return j % 6, (j // 6) % 3, (j // 18) % 6


def _request_at(i: int, seed: int) -> RequestSpec:
    rnd = i // GRID_SIZE
    perm_rng = random.Random(f"pumpl-distill-perm:{seed}:{rnd}")
    goals, levels, eqs = list(GOALS), list(LEVELS), list(EQUIPMENT_SETS)
    for xs in (goals, levels, eqs):
        perm_rng.shuffle(xs)  # type: ignore[arg-type]
    g, lvl, e = _cell(i)
    rng = random.Random(f"pumpl-distill-row:{seed}:{i}")
    # Session lengths people of that level and goal realistically train (see max_minutes).
    cap = max_minutes(goals[g], levels[lvl])
    limitations: list[str] = []
    if rng.random() < LIMITATION_RATE:
        limitations = rng.sample(list(LIMITATIONS), rng.choice((1, 1, 2)))
    focus = rng.choice(FOCUSES) if rng.random() < FOCUS_RATE else None
    return RequestSpec.model_validate(
        {
            "goal": goals[g],
            "minutes": rng.choice([m for m in MINUTES_CHOICES if m <= cap]),
            "level": levels[lvl],
            "equipment": list(eqs[e]),
            "days_per_week": rng.choice((2, 3, 3, 4, 4, 5, 6)),
            "limitations": limitations,
            "focus": focus,
        }
    )


def sample_requests(n: int, seed: int) -> list[RequestSpec]:
    """``n`` requests, stratified over goals × levels × EQUIPMENT_SETS.

    Deterministic in ``(n, seed)``; request ``i`` depends only on ``(i, seed)``, so
    ``sample_requests(n, s)`` is a prefix of ``sample_requests(m, s)`` for ``n < m``.
    Every 108 requests cover the grid once (with seed-dependent order); minutes are drawn from
    MINUTES_CHOICES up to :func:`max_minutes`; days per week 2-6; ~30% carry one or two
    limitations, ~25% a focus. No request appears twice (exact repeats are skipped).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out: list[RequestSpec] = []
    seen: set[str] = set()
    i = 0
    while len(out) < n:  # exact repeats are skipped (they would leak across splits and add nothing)
        req = _request_at(i, seed)
        i += 1
        if req.key() not in seen:
            seen.add(req.key())
            out.append(req)
    return out


@dataclass
class DistillResult:
    rows: pl.DataFrame
    quarantine: pl.DataFrame
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cache_hits: int
    teacher: str
    model: str

    @property
    def total(self) -> int:
        return self.rows.height + self.quarantine.height


def _check(result: TeacherResult, catalogue: ExerciseCatalogue) -> tuple[str | None, str]:
    """(canonical plan JSON, "") when the result is usable, else (None, reason)."""
    if result.plan_text is None:
        return None, result.error or "teacher returned no plan and no reason"
    outcome = validate_example(result.request, result.plan_text, catalogue)
    if not outcome.ok or outcome.plan is None:
        return None, "; ".join(outcome.reasons or [f"{outcome.stage}: invalid plan"])
    plan = canonical_plan(outcome.plan, catalogue)
    for ex in plan.all_exercises():  # compact training form: derivable facts omitted
        ex.equipment, ex.muscles, ex.notes = None, None, None
    return dump_plan(plan), ""


def distill(requests: list[RequestSpec], teacher: Teacher, catalogue: ExerciseCatalogue) -> DistillResult:
    """Ask ``teacher`` for every request; validate; split into rows and quarantine.

    Assumes the teacher returns one result per request in order (checked: a
    missing result quarantines its request rather than losing it). Cost is
    estimated from the teacher's reported tokens, excluding cache hits (those cost
    nothing this run).
    """
    results = teacher.generate(list(requests), catalogue)
    rows: list[dict[str, object]] = []
    quarantine: list[dict[str, object]] = []
    in_tok = out_tok = hits = 0
    for i, req in enumerate(requests):
        res = results[i] if i < len(results) else None
        if res is None:
            quarantine.append(
                {"request_json": req.key(), "reason": "teacher returned no result for this request"}
            )
            continue
        if res.cache_hit:
            hits += 1
        else:
            in_tok += res.input_tokens
            out_tok += res.output_tokens
        plan_json, reason = _check(res, catalogue)
        if plan_json is None:
            quarantine.append({"request_json": req.key(), "reason": reason})
            continue
        rows.append(
            {
                "request_json": req.key(),
                # How a person might have typed it (varied phrasings; the split reads it back with the
                # serving parser), seeded by the request so a rerun writes the same text.
                "request_text": phrase_request(req, random.Random(f"pumpl-phrase:{req.key()}")),
                "prompt": request_to_prompt(req),
                "plan_json": plan_json,
                "teacher": teacher.name,
                "model": teacher.model,
                "cache_hit": res.cache_hit,
            }
        )
    out = DistillResult(
        rows=pl.DataFrame(rows, schema=ROW_COLUMNS),
        quarantine=pl.DataFrame(quarantine, schema=QUARANTINE_COLUMNS),
        input_tokens=in_tok,
        output_tokens=out_tok,
        cost_usd=estimate_cost_usd(teacher.model, in_tok, out_tok),
        cache_hits=hits,
        teacher=teacher.name,
        model=teacher.model,
    )
    if out.total != len(requests):  # pragma: no cover - invariant
        raise RuntimeError(f"distill accounted for {out.total} of {len(requests)} requests")
    return out
