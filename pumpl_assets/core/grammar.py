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
    return (tuple(sorted(request.equipment)), request.level, tuple(sorted(request.limitations)))


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
    with _lock:
        lru[key] = schema
        while len(lru) > _CACHE_SIZE:
            lru.popitem(last=False)
    return copy.deepcopy(schema)


def clear_cache() -> None:
    with _lock:
        _cache.clear()
