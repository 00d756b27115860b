"""Validation of workout plans against their requests and the coaching standard.

Three stages, each with reasons that name the field or exercise at fault:

1. ``json``   — the answer is not parseable JSON;
2. ``schema`` — it is JSON but not a :class:`~pumpl_assets.core.schemas.WorkoutPlanResponse`;
3. ``domain`` — it is a plan but breaks the request or the standard (:mod:`pumpl_assets.core.standard`).

Domain checks (reasons are ``"<check>: <detail>"``; ``<check>`` is one of :data:`DOMAIN_CHECKS`):

* ``catalogue``     — every exercise exists in the catalogue (normalized-name lookup);
* ``equipment``     — every exercise needs only the request's equipment ("body only" always available);
* ``level``         — no exercise above the request's level;
* ``safety``        — no exercise whose movement patterns the request's limitations exclude
  (:mod:`pumpl_assets.core.contraindications`);
* ``blocks``        — warm-ups are light dynamic drills or easy cardio, cool-downs static stretches, each
  timed and sized to the session;
* ``goal_fidelity`` — every main exercise has a role the goal uses and a prescription inside the
  standard's ranges for goal × level × role (reps vs seconds included);
* ``duration``      — EVERY session's length computed from its content (sets × (work + rest) +
  transitions) is within ±:data:`DURATION_TOLERANCE` of the request;
* ``split``         — the split is the standard's for the goal and days/week, with its sessions in order,
  and each main exercise belongs to its session's day (core work fits every day);
* ``focus``         — a requested focus gets ≥ 40% of the main work of every session that can train it;
* ``order``         — resistance sessions put multi-joint before single-joint and large muscles before small;
* ``balance``       — a resistance session covers its day's regions (full body: lower body, push and pull;
  upper: push and pull; lower/legs: knee- and hip-dominant), as many as its exercise count and a focus
  allow, of those the person can train (:func:`standard.balance_needed`);
* ``title``         — the title names no split other than the plan's (no "Upper/Lower" on a full-body week);
* ``proportion``    — no region of a resistance session's day holds more than twice the exercises of
  another region it trains while the person has more for that one (:func:`standard.out_of_proportion`;
  [NSCA16], [ACSM11]; focus days exempt);
* ``cooldown``      — most of a session's cool-down stretches (at least half) work muscles its main work
  trained, as far as the person's stretches allow ([ACSM-FLEX]: stretch the muscles just worked);
* ``duplicates``    — no exercise twice in one session;
* ``declared``      — the declared ``total_minutes`` and ``days_per_week`` match the request, and each
  session's ``main_count`` (when written) matches its main list.

A plan is rejected with ALL reasons found. :func:`validate_rows` applies this to a frame and never drops a
row silently: ``len(rows) == len(accepted) + len(quarantine)``.
"""

from __future__ import annotations

import itertools
import json
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from pydantic import ValidationError

from pumpl_assets.core.exercises import CatalogueExercise, ExerciseCatalogue, normalize_name
from pumpl_assets.core.schemas import (
    DURATION_TOLERANCE,
    LEVELS,
    RepsExercise,
    RequestSpec,
    TimedExercise,
    WorkoutPlanResponse,
    dump_plan,
    exercise_seconds,
    parse_plan,
)
from pumpl_assets.core.standard import (
    BALANCE_REGIONS,
    COOLDOWN,
    FOCUS_MUSCLES,
    PROPORTION_RATIO,
    RESISTANCE_GOALS,
    SPLIT_DAYS,
    WARMUP,
    balance_needed,
    cooldown_minutes,
    fits_day,
    focus_needed,
    focus_possible,
    order_rank,
    out_of_proportion,
    prescription_for,
    proportion_applies,
    region_counts,
    regions_of,
    split_for,
    warmup_minutes,
)

STAGES = ("request", "json", "schema", "domain", "ok")
DOMAIN_CHECKS = (
    "catalogue",
    "equipment",
    "level",
    "safety",
    "blocks",
    "goal_fidelity",
    "duration",
    "split",
    "focus",
    "order",
    "balance",
    "duplicates",
    "declared",
    "title",
    "cooldown",
    "proportion",
)
DOMAIN_RULES = DOMAIN_CHECKS  # kept name: validate_rows counts reasons per check
# Every key validate_rows counts (zero-filled, so metadata has a stable shape).
REASON_KEYS = ("request", "json", "schema", *DOMAIN_CHECKS)
MAX_SCHEMA_REASONS = 8


@dataclass
class Adherence:
    """Per-check verdicts for a schema-valid plan (True = the check passed)."""

    checks: dict[str, bool]
    session_minutes: list[float]

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    @property
    def computed_minutes(self) -> float:
        return sum(self.session_minutes) / len(self.session_minutes) if self.session_minutes else 0.0

    @property
    def duration_ok(self) -> bool:
        return self.checks["duration"]

    @property
    def safety_ok(self) -> bool:
        return self.checks["safety"]


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


def _timed(ex: RepsExercise | TimedExercise) -> bool:
    return isinstance(ex, TimedExercise)


# Words that name a split in a title; a title may name its own split (or none).
SPLIT_TITLE_WORDS: dict[str, tuple[str, ...]] = {
    "full_body": ("full body", "full-body", "total body", "total-body"),
    "upper_lower": ("upper/lower", "upper-lower", "upper lower", "upper & lower", "upper and lower"),
    "push_pull_legs": ("push/pull", "push-pull", "push pull", "ppl"),
}


def title_split_words(title: str, split: str) -> list[str]:
    """Split words in ``title`` that name a split other than ``split`` (empty: the title is consistent)."""
    low = " ".join(title.lower().split())
    return [w for sp, words in SPLIT_TITLE_WORDS.items() if sp != split for w in words if w in low]


# Per catalogue object (weak: a dropped catalogue drops its entries), by request and day.
_supply_cache: weakref.WeakKeyDictionary[ExerciseCatalogue, dict[tuple[Any, ...], dict[str, int]]] = (
    weakref.WeakKeyDictionary()
)


def region_supply(request: RequestSpec, day: str, catalogue: ExerciseCatalogue) -> dict[str, int]:
    """How many main exercises the request allows cover each balance region of ``day`` (the pool the
    grammar and the teachers draw from: suitable, a role the goal uses, fits the day)."""
    per_catalogue = _supply_cache.setdefault(catalogue, {})
    key = (
        request.goal,
        request.level,
        tuple(sorted(request.equipment)),
        tuple(sorted(request.limitations)),
        day,
    )
    hit = per_catalogue.get(key)
    if hit is None:
        hit = dict.fromkeys(BALANCE_REGIONS.get(day, {}), 0)
        if day in BALANCE_REGIONS:
            for e in catalogue.suitable(request.level, request.equipment, request.limitations):
                if prescription_for(request.goal, request.level, e.role) is not None and fits_day(
                    day, e.primary_muscles, e.force
                ):
                    for r in regions_of(day, e.primary_muscles):
                        hit[r] += 1
        per_catalogue[key] = hit
    return dict(hit)


def available_regions(request: RequestSpec, day: str, catalogue: ExerciseCatalogue) -> frozenset[str]:
    """The balance regions of ``day`` some main exercise the request allows can train."""
    return frozenset(r for r, n in region_supply(request, day, catalogue).items() if n > 0)


_stretch_cache: weakref.WeakKeyDictionary[
    ExerciseCatalogue, dict[tuple[Any, ...], tuple[CatalogueExercise, ...]]
] = weakref.WeakKeyDictionary()


def stretches_for(request: RequestSpec, catalogue: ExerciseCatalogue) -> tuple[CatalogueExercise, ...]:
    """The cool-down stretches the request allows (level, equipment, limitations)."""
    per_catalogue = _stretch_cache.setdefault(catalogue, {})
    key = (request.level, tuple(sorted(request.equipment)), tuple(sorted(request.limitations)))
    hit = per_catalogue.get(key)
    if hit is None:
        pool = catalogue.suitable(request.level, request.equipment, request.limitations)
        hit = per_catalogue[key] = tuple(e for e in pool if e.cooldown_ok)
    return hit


def cooldown_needed(n_cool: int, trained: set[str], stretches: Sequence[CatalogueExercise]) -> int:
    """How many of a cool-down's ``n_cool`` stretches must work a trained muscle: at least half (one
    general stretch beside them is fine), or every stretch the person has for those muscles when they
    are fewer. [ACSM-FLEX]: static stretching of the muscles just worked, while they are warm."""
    return min((n_cool + 1) // 2, sum(1 for e in stretches if set(e.primary_muscles) & trained))


def _domain_reasons(
    request: RequestSpec, plan: WorkoutPlanResponse, catalogue: ExerciseCatalogue
) -> tuple[Adherence, list[str]]:
    found: dict[str, list[str]] = {c: [] for c in DOMAIN_CHECKS}
    lo, hi = request.minutes * (1 - DURATION_TOLERANCE), request.minutes * (1 + DURATION_TOLERANCE)
    if not minutes_within(plan.total_minutes, request.minutes):
        found["declared"].append(f"total_minutes={plan.total_minutes} outside {_fmt(lo)}-{_fmt(hi)}")
    if bad_words := title_split_words(plan.title, plan.split):
        found["title"].append(
            f"title {plan.title!r} names another split ({', '.join(bad_words)}) than {plan.split}"
        )
    if plan.days_per_week != request.days_per_week:
        found["declared"].append(
            f"plan has {plan.days_per_week} days/week, request asks {request.days_per_week}"
        )
    expected = split_for(request.goal, request.days_per_week)
    if plan.split != expected:
        found["split"].append(
            f"split {plan.split} for {request.days_per_week} days/week of {request.goal}; the standard says {expected}"
        )
    want_days = list(SPLIT_DAYS[expected])
    got_days = [s.day for s in plan.sessions]
    if got_days != want_days:
        found["split"].append(f"sessions {got_days}; a {expected} week holds {want_days}")

    available = set(request.equipment) | {"body only"}
    req_level = LEVELS.index(request.level)
    minutes: list[float] = []
    for si, session in enumerate(plan.sessions):
        tag = f"session {si + 1} ({session.day})"
        if session.main_count is not None and session.main_count != len(session.main):
            found["declared"].append(
                f"{tag} declares main_count={session.main_count} but lists {len(session.main)}"
            )
        mins = sum(exercise_seconds(e) for e in session.all_exercises()) / 60.0
        minutes.append(mins)
        if not minutes_within(mins, request.minutes):
            found["duration"].append(
                f"{tag} computes to {_fmt(mins)} min, request asks {request.minutes} (allowed {_fmt(lo)}-{_fmt(hi)})"
            )
        seen: set[str] = set()
        main_ranks: list[tuple[int, str]] = []
        n_focus = 0
        covered: set[str] = set()
        for block, items in session.blocks().items():
            for ex in items:
                where = f"{tag} {block} '{ex.name}'"
                key = normalize_name(ex.name)
                if key in seen:
                    found["duplicates"].append(f"{where} appears more than once in the session")
                seen.add(key)
                cat = catalogue.get(ex.name)
                if cat is None:
                    found["catalogue"].append(f"{where} is not in the exercise catalogue")
                    continue
                if cat.equipment not in available or (
                    ex.equipment is not None and ex.equipment != cat.equipment
                ):
                    found["equipment"].append(
                        f"{where} needs {cat.equipment!r}, request has {sorted(available)}"
                    )
                if LEVELS.index(cat.level) > req_level:
                    found["level"].append(f"{where} is {cat.level}, above the request's {request.level}")
                for lim, pats in cat.contraindications(request.limitations).items():
                    found["safety"].append(
                        f"{where} involves {', '.join(pats)}, excluded with a {lim} limitation"
                    )
                if block == "warmup":
                    if not (
                        cat.warmup_ok
                        and isinstance(ex, TimedExercise)
                        and ex.sets == 1
                        and WARMUP.work_s[0] <= ex.work_s <= WARMUP.work_s[1]
                    ):
                        found["blocks"].append(
                            f"{where} is not a timed light dynamic drill or easy cardio ({WARMUP.work_s[0]}-{WARMUP.work_s[1]} s, one set)"
                        )
                elif block == "cooldown":
                    if not (
                        cat.cooldown_ok
                        and isinstance(ex, TimedExercise)
                        and COOLDOWN.sets[0] <= ex.sets <= COOLDOWN.sets[1]
                        and COOLDOWN.work_s[0] <= ex.work_s <= COOLDOWN.work_s[1]
                    ):
                        found["blocks"].append(
                            f"{where} is not a timed static stretch ({COOLDOWN.work_s[0]}-{COOLDOWN.work_s[1]} s, {COOLDOWN.sets[0]}-{COOLDOWN.sets[1]} sets)"
                        )
                else:
                    role = cat.role
                    pres = prescription_for(request.goal, request.level, role)
                    if pres is None:
                        found["goal_fidelity"].append(
                            f"{where} is {role} work, not part of a {request.goal} session"
                        )
                    else:
                        reps = ex.reps if isinstance(ex, RepsExercise) else None
                        work = ex.work_s if isinstance(ex, TimedExercise) else None
                        if pres.timed != _timed(ex):
                            found["goal_fidelity"].append(
                                f"{where} is prescribed in {'seconds' if _timed(ex) else 'reps'}; the standard prescribes {role} work for {request.goal} in {'seconds' if pres.timed else 'reps'}"
                            )
                        elif not pres.admits(ex.sets, ex.rest_s, reps, work):
                            got = f"{ex.sets}×{reps if reps is not None else f'{work} s'} rest {ex.rest_s} s"
                            found["goal_fidelity"].append(
                                f"{where} {got} is outside the {request.level} {request.goal} standard for {role} work ({pres.describe()})"
                            )
                    if not fits_day(session.day, cat.primary_muscles, cat.force):
                        found["split"].append(
                            f"{where} ({', '.join(cat.primary_muscles)}) does not belong on a {session.day} day"
                        )
                    main_ranks.append((order_rank(role, cat.primary_muscles), ex.name))
                    covered |= regions_of(session.day, cat.primary_muscles)
                    if request.focus and set(cat.primary_muscles) & FOCUS_MUSCLES[request.focus]:
                        n_focus += 1
        if request.goal in RESISTANCE_GOALS:
            for (r1, n1), (r2, n2) in itertools.pairwise(main_ranks):
                if r2 < r1:
                    found["order"].append(
                        f"{tag} main: '{n2}' should come before '{n1}' (multi-joint and large muscles first)"
                    )
                    break
        trainable = available_regions(request, session.day, catalogue)
        need = balance_needed(request.goal, session.day, len(session.main), trainable, request.focus)
        if len(covered & trainable) < need:
            missing = sorted(trainable - covered)
            found["balance"].append(
                f"{tag} main covers {len(covered & trainable)} of {session.day}'s regions; needs {need} "
                f"(missing {', '.join(missing)})"
            )
        if proportion_applies(request.goal, session.day, request.focus):
            counts = region_counts(
                session.day, [c.primary_muscles for ex in session.main if (c := catalogue.get(ex.name))]
            )
            lopsided = out_of_proportion(counts, region_supply(request, session.day, catalogue))
            if lopsided:
                big, small = max(lopsided, key=lambda p: counts[p[0]] / counts[p[1]])  # the worst pair
                found["proportion"].append(
                    f"{tag} main has {counts[big]} {big} exercise(s) to {counts[small]} {small}; "
                    f"at most {PROPORTION_RATIO}× (more {small} exercises are available)"
                )
        if request.focus and focus_possible(session.day, request.focus) and main_ranks:
            need = focus_needed(len(session.main))
            if n_focus < need:
                found["focus"].append(
                    f"{tag} has {n_focus} {request.focus} exercise(s) in its main work; needs ≥ {need}"
                )
        trained = {m for ex in session.main if (c := catalogue.get(ex.name)) for m in c.primary_muscles}
        on_target = [
            ex.name
            for ex in session.cooldown
            if (c := catalogue.get(ex.name)) is not None and set(c.primary_muscles) & trained
        ]
        need = cooldown_needed(len(session.cooldown), trained, stretches_for(request, catalogue))
        if len(on_target) < need:
            off = [ex.name for ex in session.cooldown if ex.name not in on_target]
            found["cooldown"].append(
                f"{tag} cool-down stretches {len(on_target)} of {len(session.cooldown)} on the muscles the "
                f"main work trained; needs {need} ({', '.join(repr(n) for n in off)} stretch other muscles)"
            )
        warm_min = sum(exercise_seconds(e) for e in session.warmup) / 60.0
        cool_min = sum(exercise_seconds(e) for e in session.cooldown) / 60.0
        w_lo, w_hi = warmup_minutes(request.minutes)
        c_lo, c_hi = cooldown_minutes(request.minutes)
        if not w_lo - 1e-9 <= warm_min <= w_hi + 1e-9:
            found["blocks"].append(
                f"{tag} warm-up lasts {_fmt(warm_min)} min; a {request.minutes}-min session needs {_fmt(w_lo)}-{_fmt(w_hi)}"
            )
        if not c_lo - 1e-9 <= cool_min <= c_hi + 1e-9:
            found["blocks"].append(
                f"{tag} cool-down lasts {_fmt(cool_min)} min; a {request.minutes}-min session needs {_fmt(c_lo)}-{_fmt(c_hi)}"
            )
    reasons = [f"{c}: {r}" for c in DOMAIN_CHECKS for r in found[c]]
    return Adherence(checks={c: not found[c] for c in DOMAIN_CHECKS}, session_minutes=minutes), reasons


def adherence(request: RequestSpec, plan: WorkoutPlanResponse, catalogue: ExerciseCatalogue) -> Adherence:
    """Per-check adherence of a schema-valid plan (the evaluation's per-example facts)."""
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
    for ex in out.all_exercises():
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
