"""Request-aware JSON schemas for constrained decoding (the served configuration).

The grammar guarantees what a grammar can honestly guarantee, and nothing that would do the model's
arithmetic for it:

* the schema (JSON shape, item counts within the schema's bounds);
* **the request's own figures**: ``days_per_week`` is the requested number and ``total_minutes`` lies
  within the requested length ±10% (the model copies them; nothing to decide);
* **the split of the standard** (:func:`standard.split_for`: full body for 1-3 days, upper/lower for 4,
  push/pull/legs for 5-6 [ACSM09]): ``split`` and the sessions' days are fixed by the request, and
  each session's main work is drawn only from exercises that train that day's muscles
  (:func:`standard.fits_day`; core work fits every day);
* **allowed names per block**: warm-ups only from the light dynamic drills and easy cardio, cool-downs
  only from static stretches, main work only from the roles the goal uses — each restricted to what
  the person can do (``catalogue.suitable``: level, equipment, movement-pattern contraindications);
* **the standard's ranges per role**: each main-block role is its own variant (its names, sets, reps or
  seconds, rest — interval patterns as exact work:rest pairs), warm-up and cool-down item ranges;
* **feasible block sizes**: each block's item count is bounded to the sizes that SOME prescription
  inside the standard's ranges could fit to the requested length (e.g. one 3-minute warm-up drill
  cannot make a 5-minute warm-up; twelve main exercises cannot fit a 15-minute session). These are
  necessary conditions derived from the standard, not a layout: the model still picks the count
  anywhere inside them.

So these checks cannot fail in served mode (:data:`GUARANTEED_CHECKS`); the model still decides which
exercises (and how many) go on each day, their sets, reps and rest inside the ranges, the warm-up and
cool-down, order, focus and ``main_count`` — no block count, set count or hold time of any teacher's
layout is written into the grammar. What remains arithmetic — fitting the session to its length,
order, the declared figures — is done after decoding by :mod:`pumpl_assets.core.finalize`, and scored
both before (what the model decided) and after (what the person gets). Beside the grammar, the served
decoding runs :mod:`pumpl_assets.core.name_guard`, which removes a name already used in the session,
so ``duplicates`` is guaranteed too (except when a block's allowed pool is used up; the check is still
scored on every plan). Given the request's :func:`request_plan_rules`, the same guard keeps the rules
a grammar cannot state reachable while the model writes — a resistance day's balance regions, the
focus share, a main list long enough for the requested length — by narrowing the names (or refusing
to close the main list) only when the session's remaining slots can just pay what it still owes;
those checks stay scored, not guaranteed (a rule steps aside when it would leave the grammar nothing). A day whose muscles no allowed exercise trains falls back to every allowed main
exercise (the ``split`` check then scores what the model chose).

Schemas are cached per (equipment, level, limitations, goal, days, minutes) and catalogue; compiled
grammars are cached separately by :class:`pumpl_assets.core.generation.GrammarCache` (keyed by the
schema's hash), so a repeated request costs neither a schema build nor a compile.
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from collections import OrderedDict
from typing import Any

from pumpl_assets.core.exercises import CatalogueExercise, ExerciseCatalogue
from pumpl_assets.core.name_guard import DayRules, PlanRules
from pumpl_assets.core.schemas import (
    DURATION_TOLERANCE,
    MAX_MAIN,
    SECONDS_PER_REP,
    TRANSITION_SECONDS,
    RequestSpec,
    plan_json_schema,
)
from pumpl_assets.core.standard import (
    COOLDOWN,
    FOCUS_MUSCLES,
    SPLIT_DAYS,
    STANDARD,
    WARMUP,
    EdgeBlock,
    Prescription,
    cooldown_minutes,
    fits_day,
    focus_possible,
    proportion_applies,
    regions_of,
    split_for,
    warmup_minutes,
)
from pumpl_assets.core.validate import available_regions, region_supply, stretches_for

# Checks the served decoding makes impossible to fail (the report marks them "guaranteed"): the grammar's
# six, and no repeat within a session (name_guard, on the engines that evaluation and CPU serving use).
GUARANTEED_CHECKS: tuple[str, ...] = (
    "catalogue",
    "equipment",
    "level",
    "safety",
    "goal_fidelity",
    "split",
    "duplicates",
)

_CACHE_SIZE = 256
# Per catalogue object (weak, so a dropped catalogue drops its schemas), LRU by request key.
_cache: weakref.WeakKeyDictionary[ExerciseCatalogue, OrderedDict[tuple[Any, ...], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


class NoSuitableExercisesError(ValueError):
    """The catalogue has no exercise the request allows, so no plan can satisfy the grammar."""


def request_key(request: RequestSpec | None) -> tuple[Any, ...]:
    """Cache key of the parts of a request that shape the grammar (focus does not)."""
    if request is None:
        return ("*",)
    return (
        tuple(sorted(request.equipment)),
        request.level,
        tuple(sorted(request.limitations)),
        request.goal,
        request.days_per_week,
        request.minutes,
    )


def allowed_exercise_names(request: RequestSpec | None, catalogue: ExerciseCatalogue) -> list[str]:
    """Sorted names the request allows (all catalogue names when ``request`` is None)."""
    if request is None:
        return catalogue.names()
    return sorted(ex.name for ex in catalogue.suitable(request.level, request.equipment, request.limitations))


def request_plan_schema(request: RequestSpec | None, catalogue: ExerciseCatalogue | None) -> dict:
    """Compact plan schema with ``name`` restricted to what ``request`` allows.

    * ``catalogue`` None → names unrestricted (any string of the schema's length bounds);
    * ``request`` None → every catalogue name;
    * otherwise ``catalogue.suitable(level, equipment, limitations)``; raises
      :class:`NoSuitableExercisesError` when that is empty (an enum of nothing is
      unsatisfiable).

    Returns a fresh copy; callers may mutate it.
    """
    if catalogue is None:
        return plan_json_schema(None, include_optional=False)
    key = request_key(request)
    with _lock:
        lru = _cache.setdefault(catalogue, OrderedDict())
        hit = lru.get(key)
        if hit is not None:
            lru.move_to_end(key)
            return copy.deepcopy(hit)
    names = allowed_exercise_names(request, catalogue)
    if not names:
        assert request is not None
        raise NoSuitableExercisesError(
            f"no catalogue exercise suits level={request.level!r}, equipment={request.equipment}, "
            f"limitations={request.limitations}; cannot build a request-aware grammar"
        )
    schema = (
        plan_json_schema(names, include_optional=False)
        if request is None
        else standard_plan_schema(
            request, catalogue.suitable(request.level, request.equipment, request.limitations)
        )
    )
    with _lock:
        lru[key] = schema
        while len(lru) > _CACHE_SIZE:
            lru.popitem(last=False)
    return copy.deepcopy(schema)


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _item(names: list[str], props: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"type": "string", "enum": names}, **props},
        "required": ["name", *required],
        "additionalProperties": False,
    }


def _role_variants(names: list[str], p: Prescription) -> list[dict[str, Any]]:
    """Main-block variants for one role: its names and the standard's ranges (property order as in
    the compact plan JSON: name, sets, rest_s, reps | work_s)."""
    sets = _int(*p.sets)
    if p.patterns:
        return [
            _item(names, {"sets": sets, "rest_s": {"type": "integer", "enum": [r]}, "work_s": {"type": "integer", "enum": [w]}},
                  ["sets", "rest_s", "work_s"])
            for w, r in p.patterns
        ]  # fmt: skip
    amount = {"reps": _int(*p.reps)} if p.reps is not None else {"work_s": _int(*p.work_s)}  # type: ignore[misc]
    return [_item(names, {"sets": sets, "rest_s": _int(*p.rest_s), **amount}, ["sets", "rest_s", *amount])]


def _one_of(variants: list[dict[str, Any]]) -> dict[str, Any]:
    return variants[0] if len(variants) == 1 else {"oneOf": variants}


def _item_seconds(sets: int, amount_s: int, rest_s: int) -> int:
    return sets * (amount_s + rest_s) + TRANSITION_SECONDS


def _main_seconds_range(p: Prescription) -> tuple[int, int]:
    """Shortest and longest one main exercise can last inside ``p`` (a single set needs no rest)."""
    if p.patterns:
        lo = min(_item_seconds(p.sets[0], w, r) for w, r in p.patterns)
        hi = max(_item_seconds(p.sets[1], w, r) for w, r in p.patterns)
        return lo, hi
    amount = (p.reps[0] * SECONDS_PER_REP, p.reps[1] * SECONDS_PER_REP) if p.reps is not None else p.work_s
    assert amount is not None
    lo = _item_seconds(p.sets[0], amount[0], p.rest_s[0] if p.sets[0] > 1 else 0)
    return lo, _item_seconds(p.sets[1], amount[1], p.rest_s[1])


def _edge_seconds_range(b: EdgeBlock) -> tuple[int, int]:
    return _item_seconds(b.sets[0], b.work_s[0], 0), _item_seconds(b.sets[1], b.work_s[1], 0)


def _count_bounds(need_lo_s: float, need_hi_s: float, item_s: tuple[int, int], most: int) -> tuple[int, int]:
    """Item counts for which SOME in-range prescription lasts between ``need_lo_s`` and ``need_hi_s``:
    at least enough items at their longest to reach the lower bound, at most as many at their
    shortest as fit under the upper one (clamped to 1..``most``)."""
    lo = max(1, math.ceil(max(0.0, need_lo_s) / item_s[1] - 1e-9))
    hi = max(1, min(most, math.floor(need_hi_s / item_s[0] + 1e-9)))
    return min(lo, hi), hi


def block_size_bounds(request: RequestSpec, main_roles: list[Prescription]) -> dict[str, tuple[int, int]]:
    """Feasible item counts per block for ``request`` (see module doc): necessary conditions from the
    standard's ranges and the requested length, not a layout."""
    w_lo, w_hi = (60 * m for m in warmup_minutes(request.minutes))
    c_lo, c_hi = (60 * m for m in cooldown_minutes(request.minutes))
    warm_item, cool_item = _edge_seconds_range(WARMUP), _edge_seconds_range(COOLDOWN)
    warm = _count_bounds(w_lo, w_hi, warm_item, WARMUP.max_items)
    cool = _count_bounds(c_lo, c_hi, cool_item, COOLDOWN.max_items)
    # The main block fills what the session leaves once warm-up and cool-down take the most (least)
    # time they may take.
    total_lo = 60 * request.minutes * (1 - DURATION_TOLERANCE)
    total_hi = 60 * request.minutes * (1 + DURATION_TOLERANCE)
    warm_most = min(w_hi, warm[1] * warm_item[1])
    cool_most = min(c_hi, cool[1] * cool_item[1])
    ranges = [_main_seconds_range(p) for p in main_roles]
    main_item = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    main = _count_bounds(total_lo - warm_most - cool_most, total_hi - w_lo - c_lo, main_item, MAX_MAIN)
    return {"warmup": warm, "main": main, "cooldown": cool}


def standard_plan_schema(request: RequestSpec, suitable: list[CatalogueExercise]) -> dict[str, Any]:
    """The served plan schema for ``request`` over the exercises it allows (see module doc)."""
    roles = STANDARD[request.goal][request.level]
    warm = sorted({e.name for e in suitable if e.warmup_ok})
    cool = sorted({e.name for e in suitable if e.cooldown_ok})
    by_role = {role: [e for e in suitable if e.role == role] for role in roles}
    used_roles = [pres for role, pres in roles.items() if by_role[role]]
    missing = [b for b, v in (("warm-up", warm), ("main", used_roles), ("cool-down", cool)) if not v]
    if missing:
        raise NoSuitableExercisesError(
            f"no catalogue exercise suits the {', '.join(missing)} block(s) for level={request.level!r}, "
            f"equipment={request.equipment}, limitations={request.limitations}, goal={request.goal!r}"
        )
    bounds = block_size_bounds(request, used_roles)

    def main_variants(day: str) -> list[dict[str, Any]]:
        variants: list[dict[str, Any]] = []
        for role, pres in roles.items():
            names = sorted({e.name for e in by_role[role] if fits_day(day, e.primary_muscles, e.force)})
            if names:
                variants += _role_variants(names, pres)
        return variants

    def capped(bounds_: tuple[int, int], pool: int) -> tuple[int, int]:
        # No exercise twice in a session: never more items than distinct names the block allows.
        hi = max(1, min(bounds_[1], pool))
        return min(bounds_[0], hi), hi

    def session(day: str) -> dict[str, Any]:
        # A day no allowed exercise trains falls back to every allowed main exercise (module doc).
        main = main_variants(day) or main_variants("full_body")
        pool = len({n for v in main for n in v["properties"]["name"]["enum"]})
        main_n = capped(bounds["main"], pool)
        warm_n, cool_n = capped(bounds["warmup"], len(warm)), capped(bounds["cooldown"], len(cool))
        return {
            "type": "object",
            "properties": {
                "day": {"type": "string", "enum": [day]},
                "main_count": {"type": "integer", "minimum": 1, "maximum": MAX_MAIN},
                "warmup": {
                    "type": "array", "minItems": warm_n[0], "maxItems": warm_n[1],
                    "items": _item(warm, {"work_s": _int(*WARMUP.work_s)}, ["work_s"]),
                },
                "main": {
                    "type": "array", "minItems": main_n[0], "maxItems": main_n[1],
                    "items": _one_of(main),
                },
                "cooldown": {
                    "type": "array", "minItems": cool_n[0], "maxItems": cool_n[1],
                    "items": _item(cool, {"sets": _int(*COOLDOWN.sets), "work_s": _int(*COOLDOWN.work_s)}, ["work_s"]),
                },
            },
            "required": ["day", "main_count", "warmup", "main", "cooldown"],
            "additionalProperties": False,
        }  # fmt: skip

    split = split_for(request.goal, request.days_per_week)
    days = SPLIT_DAYS[split]
    lo = math.ceil(request.minutes * (1 - DURATION_TOLERANCE) - 1e-9)
    hi = math.floor(request.minutes * (1 + DURATION_TOLERANCE) + 1e-9)
    base = plan_json_schema(None, include_optional=False)["properties"]
    return {
        "type": "object",
        "properties": {
            "total_minutes": {"type": "integer", "minimum": lo, "maximum": hi},
            "days_per_week": {"type": "integer", "enum": [request.days_per_week]},
            "split": {"type": "string", "enum": [split]},
            "title": base["title"],
            "sessions": {
                "type": "array",
                "prefixItems": [session(d) for d in days],
                "items": False,
                "minItems": len(days),
                "maxItems": len(days),
            },
        },
        "required": ["total_minutes", "days_per_week", "split", "title", "sessions"],
        "additionalProperties": False,
    }


def _day_pool(
    day: str, suitable: list[CatalogueExercise], roles: dict[str, Prescription]
) -> list[CatalogueExercise]:
    """The main exercises the served schema allows on ``day`` (a day none fits falls back to all)."""
    pool = [e for e in suitable if e.role in roles and fits_day(day, e.primary_muscles, e.force)]
    return pool or [
        e for e in suitable if e.role in roles and fits_day("full_body", e.primary_muscles, e.force)
    ]


def request_plan_rules(request: RequestSpec | None, catalogue: ExerciseCatalogue | None) -> PlanRules | None:
    """The balance / focus / proportion / length / cool-down rules the decode guard keeps for ``request`` (None without a
    request or catalogue: the guard then only refuses repeats). Same pools as the served schema."""
    if request is None or catalogue is None:
        return None
    roles = STANDARD[request.goal][request.level]
    suitable = catalogue.suitable(request.level, request.equipment, request.limitations)
    focus_muscles = FOCUS_MUSCLES[request.focus] if request.focus else frozenset()
    stretches = stretches_for(request, catalogue)
    days: list[DayRules] = []
    for day in SPLIT_DAYS[split_for(request.goal, request.days_per_week)]:
        pool = _day_pool(day, suitable, roles)
        trainable = available_regions(request, day, catalogue)
        keep_proportion = proportion_applies(request.goal, day, request.focus)
        days.append(
            DayRules(
                day=day,
                regions={e.name: regions_of(day, e.primary_muscles) & trainable for e in pool},
                trainable=trainable,
                focus_names=frozenset(e.name for e in pool if set(e.primary_muscles) & focus_muscles),
                focus_applies=bool(request.focus) and focus_possible(day, request.focus or ""),
                prescriptions={e.name: roles[e.role] for e in pool},
                muscles={e.name: frozenset(e.primary_muscles) for e in (*pool, *stretches)},
                supply=region_supply(request, day, catalogue) if keep_proportion else None,
            )
        )
    target = 60.0 * request.minutes
    return PlanRules(
        goal=request.goal,
        focus=request.focus,
        lo_s=target * (1 - DURATION_TOLERANCE),
        hi_s=target * (1 + DURATION_TOLERANCE),
        warm_s=(60 * warmup_minutes(request.minutes)[0], 60 * warmup_minutes(request.minutes)[1]),
        cool_s=(60 * cooldown_minutes(request.minutes)[0], 60 * cooldown_minutes(request.minutes)[1]),
        days=tuple(days),
    )


def without_prefix_items(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its per-day sessions (``prefixItems``) as one ``items: {anyOf: [...]}``, for
    schema dialects without ``prefixItems`` (the Messages API's strict tools): every session is one of
    the days, and the teacher's answer is validated against the split like any other (copy)."""
    out = copy.deepcopy(schema)
    sessions = out["properties"]["sessions"]
    days = sessions.pop("prefixItems", None)
    if days is not None:
        sessions["items"] = days[0] if len(days) == 1 else {"anyOf": days}
    return out


def clear_cache() -> None:
    with _lock:
        _cache.clear()
