"""Request-aware JSON schemas for constrained decoding.

The served (and evaluated) grammar is the compact :class:`WorkoutPlanResponse` schema
(``include_optional=False``: the derivable equipment/muscles/notes keys are dropped)
whose exercise ``name`` is an enum of exactly the exercises the person can do:
``catalogue.suitable(level, equipment, limitations)``. The grammar therefore makes
unknown exercises, missing equipment and too-hard exercises impossible to emit;
duration still depends on the model choosing sensible sets/reps/rest.

Schemas are cached per (equipment, level, limitations) and catalogue; compiled grammars
are cached separately by :class:`pumpl_assets.core.generation.GrammarCache` (keyed by the
schema's hash), so a repeated request costs neither a schema build nor a compile.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections import OrderedDict
from typing import Any

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.layout import layout_for
from pumpl_assets.core.schemas import RequestSpec, plan_json_schema

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
        request.minutes,
        request.days_per_week,
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
    schema = plan_json_schema(names, include_optional=False)
    if request is not None:
        apply_layout(schema, request)
    with _lock:
        lru[key] = schema
        while len(lru) > _CACHE_SIZE:
            lru.popitem(last=False)
    return copy.deepcopy(schema)


def _variants(block_schema: dict) -> list[dict]:
    items = block_schema["items"]
    return list(items.get("oneOf") or items.get("anyOf") or [items])


def apply_layout(schema: dict, request: RequestSpec) -> dict:
    """Constrain the session's structure to the layout for the requested length (in place).

    The coach's rule for a standard length (:mod:`pumpl_assets.core.layout`): how many warm-up,
    main and cool-down items, how many main sets, how long each warm-up/cool-down hold. The
    model still chooses the exercises, the title, and each main exercise's reps/seconds and
    rest (which make the duration right only if they follow the goal). ``total_minutes`` and
    ``days_per_week`` are pinned to the request. Non-standard lengths keep the free structure.
    """
    props = schema["properties"]
    props["total_minutes"] = {"type": "integer", "enum": [request.minutes]}
    props["days_per_week"] = {"type": "integer", "enum": [request.days_per_week]}
    layout = layout_for(request.minutes)
    if layout is None:
        return schema
    sets, n_main, n_wc, hold = layout
    session = props["session"]["properties"]
    for block, count in (("warmup", n_wc), ("main", n_main), ("cooldown", n_wc)):
        session[block]["minItems"] = session[block]["maxItems"] = count
    for block in ("warmup", "cooldown"):
        # Holds: the timed variant only, one set, the layout's seconds, no rest.
        timed = [v for v in _variants(session[block]) if "work_s" in v.get("properties", {})]
        for v in timed:
            v["properties"]["work_s"] = {"type": "integer", "enum": [hold]}
            v["properties"].pop("sets", None)
            v["properties"].pop("rest_s", None)
        session[block]["items"] = timed[0] if len(timed) == 1 else {"oneOf": timed}
    for v in _variants(session["main"]):
        v["properties"]["sets"] = {"type": "integer", "enum": [sets]}
        if "sets" not in v.get("required", []):
            v["required"] = [*v.get("required", []), "sets"]
    return schema


def clear_cache() -> None:
    with _lock:
        _cache.clear()
