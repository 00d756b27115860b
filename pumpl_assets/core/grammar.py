"""Request-aware JSON schemas for constrained decoding (the served configuration).

The grammar guarantees what a grammar can honestly guarantee, and nothing that would do the model's
arithmetic for it:

* the schema (JSON shape, the split / day vocabularies, item counts within the schema's bounds);
* **allowed names per block**: warm-ups only from the light dynamic drills and easy cardio, cool-downs
  only from static stretches, main work only from the roles the goal uses — each restricted to what
  the person can do (``catalogue.suitable``: level, equipment, movement-pattern contraindications);
* **the standard's ranges per role**: each main-block role is its own variant (its names, sets, reps or
  seconds, rest — interval patterns as exact work:rest pairs), warm-up and cool-down item ranges.

So these checks cannot fail in served mode (:data:`GUARANTEED_CHECKS`); the model still decides the
split and its sessions, which exercises go on which day, how many exercises and sets fit the
requested length (duration), warm-up and cool-down length, order, focus and the declared fields — no
block count, set count or hold time of any teacher's layout is written into the grammar. Beside the
grammar, the served decoding of the transformers engines runs :mod:`pumpl_assets.core.name_guard`, which
removes a name already used in the session, so ``duplicates`` is guaranteed there too (except when a
block's allowed pool is used up; the check is still scored on every plan).

Schemas are cached per (equipment, level, limitations, goal) and catalogue; compiled grammars are
cached separately by :class:`pumpl_assets.core.generation.GrammarCache` (keyed by the schema's hash),
so a repeated request costs neither a schema build nor a compile.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections import OrderedDict
from typing import Any

from pumpl_assets.core.exercises import CatalogueExercise, ExerciseCatalogue
from pumpl_assets.core.schemas import (
    DAYS,
    MAX_COOLDOWN,
    MAX_MAIN,
    MAX_SESSIONS,
    MAX_WARMUP,
    SPLITS,
    RequestSpec,
    plan_json_schema,
)
from pumpl_assets.core.standard import COOLDOWN, STANDARD, WARMUP, Prescription

# Checks the served decoding makes impossible to fail (the report marks them "guaranteed"): the grammar's
# five, and no repeat within a session (name_guard, on the engines that evaluation and CPU serving use).
GUARANTEED_CHECKS: tuple[str, ...] = (
    "catalogue",
    "equipment",
    "level",
    "safety",
    "goal_fidelity",
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
    """Cache key of the parts of a request that shape the grammar."""
    if request is None:
        return ("*",)
    return (
        tuple(sorted(request.equipment)),
        request.level,
        tuple(sorted(request.limitations)),
        request.goal,
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


def standard_plan_schema(request: RequestSpec, suitable: list[CatalogueExercise]) -> dict[str, Any]:
    """The served plan schema for ``request`` over the exercises it allows (see module doc)."""
    roles = STANDARD[request.goal][request.level]
    warm = sorted({e.name for e in suitable if e.warmup_ok})
    cool = sorted({e.name for e in suitable if e.cooldown_ok})
    main: list[dict[str, Any]] = []
    for role, pres in roles.items():
        names = sorted({e.name for e in suitable if e.role == role})
        if names:
            main += _role_variants(names, pres)
    missing = [b for b, v in (("warm-up", warm), ("main", main), ("cool-down", cool)) if not v]
    if missing:
        raise NoSuitableExercisesError(
            f"no catalogue exercise suits the {', '.join(missing)} block(s) for level={request.level!r}, "
            f"equipment={request.equipment}, limitations={request.limitations}, goal={request.goal!r}"
        )
    session = {
        "type": "object",
        "properties": {
            "day": {"type": "string", "enum": list(DAYS)},
            "main_count": {"type": "integer", "minimum": 1, "maximum": MAX_MAIN},
            "warmup": {
                "type": "array", "minItems": 1, "maxItems": MAX_WARMUP,
                "items": _item(warm, {"work_s": _int(*WARMUP.work_s)}, ["work_s"]),
            },
            "main": {"type": "array", "minItems": 1, "maxItems": MAX_MAIN, "items": _one_of(main)},
            "cooldown": {
                "type": "array", "minItems": 1, "maxItems": MAX_COOLDOWN,
                "items": _item(cool, {"sets": _int(*COOLDOWN.sets), "work_s": _int(*COOLDOWN.work_s)}, ["work_s"]),
            },
        },
        "required": ["day", "main_count", "warmup", "main", "cooldown"],
        "additionalProperties": False,
    }  # fmt: skip
    base = plan_json_schema(None, include_optional=False)["properties"]
    return {
        "type": "object",
        "properties": {
            "title": base["title"],
            "total_minutes": base["total_minutes"],
            "days_per_week": base["days_per_week"],
            "split": {"type": "string", "enum": list(SPLITS)},
            "sessions": {"type": "array", "minItems": 1, "maxItems": MAX_SESSIONS, "items": session},
        },
        "required": ["title", "total_minutes", "days_per_week", "split", "sessions"],
        "additionalProperties": False,
    }


def clear_cache() -> None:
    with _lock:
        _cache.clear()
