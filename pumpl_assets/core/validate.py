"""Validation of workout plans against their requests (the ``validated`` data layer).

Three stages, each with reasons that name the field or exercise at fault:

1. ``json``   — the answer is not parseable JSON;
2. ``schema`` — it is JSON but not a :class:`~pumpl_assets.core.schemas.WorkoutPlanResponse`;
3. ``domain`` — it is a plan but does not fit the request or the catalogue.

Domain rules (reasons are ``"<rule>: <detail>"``; ``<rule>`` is one of :data:`DOMAIN_RULES`):

* ``duration``         — the duration COMPUTED from the content (sets × (work + rest) + transitions,
  :meth:`WorkoutPlanResponse.computed_minutes`) is within ±:data:`DURATION_TOLERANCE` of the request.
  The declared ``total_minutes`` proves nothing on its own;
* ``declared_minutes`` — the declared ``total_minutes`` is within the same tolerance too;
* ``days_per_week``    — equals the request's;
* ``unknown_exercise`` — every exercise exists in the catalogue (normalized-name lookup);
* ``equipment``        — every exercise needs only the request's equipment ("body only" is always
  available), and an optional declared ``equipment`` agrees with the catalogue;
* ``level``            — no exercise's catalogue level is above the request's level;
* ``limitations``      — every exercise suits every limitation (:meth:`CatalogueExercise.suits`);
* ``ranges``           — sets / rest / work seconds are sane for the block (:data:`BLOCK_LIMITS`;
  the main block's minimum rest applies between sets of non-stretching, non-cardio exercises);
* ``duplicate``        — no exercise appears twice in one block.

A plan is rejected with ALL reasons found, not just the first. :func:`validate_rows` applies this to a
frame and never drops a row silently: ``len(rows) == len(accepted) + len(quarantine)``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from pydantic import ValidationError

from pumpl_assets.core.exercises import ExerciseCatalogue, normalize_name
from pumpl_assets.core.schemas import (
    DURATION_TOLERANCE,
    EQUIPMENT,
    LEVELS,
    RequestSpec,
    TimedExercise,
    WorkoutPlanResponse,
    dump_plan,
    parse_plan,
)

STAGES = ("request", "json", "schema", "domain", "ok")
DOMAIN_RULES = (
    "duration",
    "declared_minutes",
    "days_per_week",
    "unknown_exercise",
    "equipment",
    "level",
    "limitations",
    "ranges",
    "duplicate",
)
# Every key validate_rows counts (zero-filled, so metadata has a stable shape).
REASON_KEYS = ("request", "json", "schema", *DOMAIN_RULES)
MAX_SCHEMA_REASONS = 8


@dataclass(frozen=True)
class BlockLimits:
    """Sane prescription ranges for one block (on top of the schema's hard bounds)."""

    max_sets: int
    min_rest_s: int
    max_rest_s: int
    max_work_s: int


# The minimum rest is recovery between working sets: it does not apply to a single set (rest after
# the last set is moot) nor to stretching / steady cardio, where short or no pauses are normal.
REST_EXEMPT_CATEGORIES = frozenset({"stretching", "cardio"})
BLOCK_LIMITS: dict[str, BlockLimits] = {
    "warmup": BlockLimits(max_sets=3, min_rest_s=0, max_rest_s=90, max_work_s=300),
    "main": BlockLimits(max_sets=6, min_rest_s=15, max_rest_s=300, max_work_s=600),
    "cooldown": BlockLimits(max_sets=3, min_rest_s=0, max_rest_s=90, max_work_s=300),
}


@dataclass
class Adherence:
    """Does a (schema-valid) plan fit its request? Unknown exercises only fail ``exercises_known``."""

    duration_ok: bool  # plan.computed_minutes() within ±DURATION_TOLERANCE of request.minutes
    exercises_known: bool  # every exercise name exists in the catalogue
    equipment_ok: bool  # every exercise needs only the request's equipment (body only always ok)
    level_ok: bool  # no exercise above the request's level
    limitations_ok: bool
    computed_minutes: float

    @property
    def ok(self) -> bool:
        return (
            self.duration_ok
            and self.exercises_known
            and self.equipment_ok
            and self.level_ok
            and self.limitations_ok
        )


@dataclass
class ValidationOutcome:
    ok: bool
    stage: str  # "json" | "schema" | "domain" | "ok"
    reasons: list[str] = field(default_factory=list)
    plan: WorkoutPlanResponse | None = None
    adherence: Adherence | None = None


def minutes_within(value: float, requested: int, tolerance: float = DURATION_TOLERANCE) -> bool:
    """``value`` within ±``tolerance`` (a fraction) of ``requested`` minutes (bounds inclusive)."""
    return abs(value - requested) <= tolerance * requested + 1e-9


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _domain_reasons(
    request: RequestSpec, plan: WorkoutPlanResponse, catalogue: ExerciseCatalogue
) -> tuple[Adherence, list[str]]:
    reasons: list[str] = []
    computed = plan.computed_minutes()
    lo, hi = request.minutes * (1 - DURATION_TOLERANCE), request.minutes * (1 + DURATION_TOLERANCE)
    duration_ok = minutes_within(computed, request.minutes)
    if not duration_ok:
        reasons.append(
            f"duration: content computes to {_fmt(computed)} min, request asks {request.minutes} min "
            f"(allowed {_fmt(lo)}-{_fmt(hi)})"
        )
    if not minutes_within(plan.total_minutes, request.minutes):
        reasons.append(
            f"declared_minutes: total_minutes={plan.total_minutes} outside {_fmt(lo)}-{_fmt(hi)} "
            f"for a {request.minutes}-min request"
        )
    if plan.days_per_week != request.days_per_week:
        reasons.append(f"days_per_week: plan has {plan.days_per_week}, request asks {request.days_per_week}")

    available = set(request.equipment) | {"body only"}
    req_level = LEVELS.index(request.level)
    known = equipment_ok = level_ok = limitations_ok = True
    for block, items in plan.session.blocks().items():
        limits = BLOCK_LIMITS[block]
        seen: set[str] = set()
        for ex in items:
            where = f"{block} '{ex.name}'"
            key = normalize_name(ex.name)
            if key in seen:
                reasons.append(f"duplicate: {where} appears more than once in {block}")
            seen.add(key)

            if ex.sets > limits.max_sets:
                reasons.append(f"ranges: {where} sets={ex.sets} > {limits.max_sets}")
            cat = catalogue.get(ex.name)
            if (
                ex.sets > 1
                and ex.rest_s < limits.min_rest_s
                and (cat is None or cat.category not in REST_EXEMPT_CATEGORIES)
            ):
                reasons.append(f"ranges: {where} rest_s={ex.rest_s} < {limits.min_rest_s} between sets")
            if ex.rest_s > limits.max_rest_s:
                reasons.append(f"ranges: {where} rest_s={ex.rest_s} > {limits.max_rest_s}")
            if isinstance(ex, TimedExercise) and ex.work_s > limits.max_work_s:
                reasons.append(f"ranges: {where} work_s={ex.work_s} > {limits.max_work_s}")

            if cat is None:
                known = False
                reasons.append(f"unknown_exercise: {where} is not in the exercise catalogue")
                continue
            if cat.equipment not in available:
                equipment_ok = False
                reasons.append(f"equipment: {where} needs {cat.equipment!r}, request has {sorted(available)}")
            if ex.equipment is not None and ex.equipment != cat.equipment:
                equipment_ok = False
                reasons.append(
                    f"equipment: {where} declares {ex.equipment!r}, catalogue says {cat.equipment!r}"
                )
            if LEVELS.index(cat.level) > req_level:
                level_ok = False
                reasons.append(f"level: {where} is {cat.level}, above the request's {request.level}")
            for lim in request.limitations:
                if not cat.suits("expert", EQUIPMENT, [lim]):
                    limitations_ok = False
                    reasons.append(
                        f"limitations: {where} ({cat.category}; {', '.join(cat.primary_muscles) or 'no muscles'}) "
                        f"is unsuitable with a {lim} limitation"
                    )
    adh = Adherence(
        duration_ok=duration_ok,
        exercises_known=known,
        equipment_ok=equipment_ok,
        level_ok=level_ok,
        limitations_ok=limitations_ok,
        computed_minutes=computed,
    )
    return adh, reasons


def adherence(request: RequestSpec, plan: WorkoutPlanResponse, catalogue: ExerciseCatalogue) -> Adherence:
    """Request adherence of a schema-valid plan (the evaluation metric's per-example facts)."""
    return _domain_reasons(request, plan, catalogue)[0]


def _schema_reasons(err: ValidationError) -> list[str]:
    errors = err.errors(include_url=False)
    out = [
        f"schema: {'.'.join(str(p) for p in e.get('loc', ())) or '<root>'}: {e.get('msg', '')}"
        for e in errors[:MAX_SCHEMA_REASONS]
    ]
    if len(errors) > MAX_SCHEMA_REASONS:
        out.append(f"schema: ... and {len(errors) - MAX_SCHEMA_REASONS} more errors")
    return out


def validate_example(request: RequestSpec, plan_text: str, catalogue: ExerciseCatalogue) -> ValidationOutcome:
    """Validate one answer text against its request: JSON, then schema, then every domain rule."""
    try:
        json.loads(plan_text)
    except (json.JSONDecodeError, TypeError) as exc:
        return ValidationOutcome(ok=False, stage="json", reasons=[f"json: invalid JSON: {exc}"])
    try:
        plan = parse_plan(plan_text)
    except ValidationError as exc:
        return ValidationOutcome(ok=False, stage="schema", reasons=_schema_reasons(exc))
    adh, reasons = _domain_reasons(request, plan, catalogue)
    if reasons:
        return ValidationOutcome(ok=False, stage="domain", reasons=reasons, plan=plan, adherence=adh)
    return ValidationOutcome(ok=True, stage="ok", reasons=[], plan=plan, adherence=adh)


def canonical_plan(plan: WorkoutPlanResponse, catalogue: ExerciseCatalogue) -> WorkoutPlanResponse:
    """A copy with every known exercise renamed to its exact catalogue spelling.

    Constrained decoding enumerates exact catalogue names, so training targets use them too.
    """
    out = plan.model_copy(deep=True)
    for ex in out.session.all_exercises():
        cat = catalogue.get(ex.name)
        if cat is not None:
            ex.name = cat.name
    return out


def reason_key(reason: str) -> str:
    """The rule a reason string belongs to (its ``"<rule>:"`` prefix)."""
    return reason.split(":", 1)[0].strip()


def _as_row_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def validate_rows(
    rows: pl.DataFrame, catalogue: ExerciseCatalogue
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Validate a frame of (``request_json``, ``plan_json``, ``source``, ...) rows.

    Returns ``(accepted, quarantine, counts)``:

    * ``accepted`` — the input columns (carried through) with ``plan_json`` replaced by the canonical
      form (:func:`canonical_plan` + :func:`schemas.dump_plan`) and ``computed_minutes`` added;
    * ``quarantine`` — the input rows unchanged plus ``stage`` (``request`` | ``json`` | ``schema`` |
      ``domain``), ``reason`` (all reasons, ``"; "``-joined) and ``computed_minutes`` (null unless the
      plan parsed);
    * ``counts`` — ``rows_in``, ``accepted``, ``quarantined`` and, per rule in :data:`REASON_KEYS`, the
      number of rows with at least one reason of that rule (a row can count under several).

    A ``request_json`` that is not a valid :class:`RequestSpec` quarantines the row at stage ``request``.
    Invariant (asserted): ``rows_in == accepted + quarantined``.
    """
    missing = {"request_json", "plan_json"} - set(rows.columns)
    if missing:
        raise ValueError(f"validate_rows needs columns request_json and plan_json; missing {sorted(missing)}")
    reserved = {"stage", "reason", "computed_minutes"} & set(rows.columns)
    if reserved:
        raise ValueError(f"validate_rows input must not already have columns {sorted(reserved)}")

    acc_idx: list[int] = []
    acc_plan: list[str] = []
    acc_minutes: list[float] = []
    q_idx: list[int] = []
    q_stage: list[str] = []
    q_reason: list[str] = []
    q_minutes: list[float | None] = []
    counter: Counter[str] = Counter()

    for i, (req_text, plan_text) in enumerate(
        zip(rows.get_column("request_json").to_list(), rows.get_column("plan_json").to_list(), strict=True)
    ):
        req_s, plan_s = _as_row_text(req_text), _as_row_text(plan_text)
        try:
            if req_s is None:
                raise ValueError("request_json is null")
            request = RequestSpec.model_validate_json(req_s)
        except (ValidationError, ValueError) as exc:
            msg = str(exc).replace("\n", " ")[:300]
            q_idx.append(i)
            q_stage.append("request")
            q_reason.append(f"request: invalid request_json: {msg}")
            q_minutes.append(None)
            counter["request"] += 1
            continue
        if plan_s is None:
            outcome = ValidationOutcome(ok=False, stage="json", reasons=["json: plan_json is null"])
        else:
            outcome = validate_example(request, plan_s, catalogue)
        if outcome.ok and outcome.plan is not None and outcome.adherence is not None:
            acc_idx.append(i)
            acc_plan.append(dump_plan(canonical_plan(outcome.plan, catalogue)))
            acc_minutes.append(outcome.adherence.computed_minutes)
            continue
        q_idx.append(i)
        q_stage.append(outcome.stage)
        q_reason.append("; ".join(outcome.reasons))
        q_minutes.append(outcome.adherence.computed_minutes if outcome.adherence else None)
        for key in {reason_key(r) for r in outcome.reasons}:
            counter[key] += 1

    accepted = rows[acc_idx].with_columns(
        pl.Series("plan_json", acc_plan, dtype=pl.String),
        pl.Series("computed_minutes", acc_minutes, dtype=pl.Float64),
    )
    quarantine = rows[q_idx].with_columns(
        pl.Series("stage", q_stage, dtype=pl.String),
        pl.Series("reason", q_reason, dtype=pl.String),
        pl.Series("computed_minutes", q_minutes, dtype=pl.Float64),
    )
    counts: dict[str, int] = {
        "rows_in": rows.height,
        "accepted": accepted.height,
        "quarantined": quarantine.height,
    }
    counts.update({k: counter.get(k, 0) for k in REASON_KEYS})
    if counts["rows_in"] != counts["accepted"] + counts["quarantined"]:  # pragma: no cover - invariant
        raise AssertionError(f"validation lost rows: {counts}")
    return accepted, quarantine, counts
