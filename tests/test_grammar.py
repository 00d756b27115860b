"""Request-aware schemas (grammar.py) and the compiled-grammar cache (generation.GrammarCache)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.grammar import (
    NoSuitableExercisesError,
    allowed_exercise_names,
    clear_cache,
    request_plan_schema,
)
from pumpl_assets.core.schemas import RequestSpec, plan_json_schema

RECORDS: list[dict[str, Any]] = [
    {
        "name": "Push-Up",
        "level": "beginner",
        "equipment": "body only",
        "category": "strength",
        "primaryMuscles": ["chest"],
    },
    {
        "name": "Plank",
        "level": "beginner",
        "equipment": None,
        "category": "strength",
        "primaryMuscles": ["abdominals"],
    },
    {
        "name": "Dumbbell Row",
        "level": "beginner",
        "equipment": "dumbbell",
        "category": "strength",
        "primaryMuscles": ["middle back"],
    },
    {
        "name": "Barbell Snatch",
        "level": "expert",
        "equipment": "barbell",
        "category": "olympic weightlifting",
        "primaryMuscles": ["quadriceps"],
    },
    {
        "name": "Box Jump",
        "level": "intermediate",
        "equipment": "body only",
        "category": "plyometrics",
        "primaryMuscles": ["quadriceps"],
    },
    {
        "name": "Arnold Press",
        "level": "intermediate",
        "equipment": "dumbbell",
        "category": "strength",
        "primaryMuscles": ["shoulders"],
    },
]


@pytest.fixture()
def small_catalogue() -> ExerciseCatalogue:
    return ExerciseCatalogue.from_records(RECORDS)


def name_enums(schema: Any) -> list[list[str]]:
    """Every ``name`` enum in a schema (one per exercise variant per block)."""
    found: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict) and "name" in props and ("sets" in props or "work_s" in props):
                found.append(props["name"].get("enum"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return found


@pytest.mark.unit
def test_schema_restricts_names_to_suitable_exercises(small_catalogue: ExerciseCatalogue) -> None:
    req = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3)
    schema = request_plan_schema(req, small_catalogue)
    enums = name_enums(schema)
    assert len(enums) == 4  # main: reps | timed; warm-up and cool-down: timed holds only (layout)
    for enum in enums:
        assert enum == ["Dumbbell Row", "Plank", "Push-Up"]
    # compact form: derivable keys dropped
    assert "equipment" not in json.dumps(schema["properties"]["session"])


@pytest.mark.unit
def test_schema_respects_limitations_and_level(small_catalogue: ExerciseCatalogue) -> None:
    expert_all = RequestSpec(
        goal="strength", minutes=45, level="expert", equipment=["dumbbell", "barbell"], days_per_week=4
    )
    assert allowed_exercise_names(expert_all, small_catalogue) == sorted(r["name"] for r in RECORDS)
    knees_shoulders = expert_all.model_copy(update={"limitations": ["knees", "shoulders"]})
    names = name_enums(request_plan_schema(knees_shoulders, small_catalogue))[0]
    assert "Box Jump" not in names  # plyometrics with bad knees
    assert "Arnold Press" not in names  # shoulders
    assert "Barbell Snatch" not in names  # olympic lifting with shoulders
    assert "Dumbbell Row" in names


@pytest.mark.unit
def test_schema_without_request_or_catalogue(small_catalogue: ExerciseCatalogue) -> None:
    assert name_enums(request_plan_schema(None, small_catalogue))[0] == small_catalogue.names()
    unrestricted = request_plan_schema(None, None)
    assert unrestricted == plan_json_schema(None, include_optional=False)
    assert all(e is None for e in name_enums(unrestricted))


@pytest.mark.unit
def test_schema_cache_returns_independent_copies(small_catalogue: ExerciseCatalogue) -> None:
    clear_cache()
    req = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["body only"], days_per_week=3)
    a = request_plan_schema(req, small_catalogue)
    a["properties"]["title"]["maxLength"] = 1  # callers may mutate their copy
    b = request_plan_schema(req, small_catalogue)
    assert b["properties"]["title"]["maxLength"] == 60
    # equipment order and goal do not change the key (minutes and days do: they shape the layout)
    req2 = RequestSpec(
        goal="hypertrophy", minutes=60, level="beginner", equipment=["dumbbell", "body only"], days_per_week=2
    )
    req3 = RequestSpec(
        goal="strength", minutes=60, level="beginner", equipment=["body only", "dumbbell"], days_per_week=2
    )
    assert request_plan_schema(req2, small_catalogue) == request_plan_schema(req3, small_catalogue)


@pytest.mark.unit
def test_empty_subset_is_a_clear_error() -> None:
    cat = ExerciseCatalogue.from_records(
        [{"name": "Barbell Snatch", "level": "expert", "equipment": "barbell", "category": "strength"}]
    )
    req = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["body only"], days_per_week=3)
    with pytest.raises(NoSuitableExercisesError, match="level='beginner'"):
        request_plan_schema(req, cat)


@pytest.mark.integration
def test_grammar_cache_compiles_once_and_accepts_reference_plan(
    tiny_model_dir: Path, small_catalogue: ExerciseCatalogue
) -> None:
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from pumpl_assets.core.generation import GrammarCache

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = GrammarCache(tok, len(tok), [2], max_size=2)
    req = RequestSpec(goal="strength", minutes=20, level="beginner", equipment=["dumbbell"], days_per_week=3)
    schema = request_plan_schema(req, small_catalogue)
    g1 = cache.get(schema)
    g2 = cache.get(request_plan_schema(req, small_catalogue))
    assert g1 is g2
    assert cache.stats.compiles == 1 and cache.stats.hits == 1
    assert cache.stats.last_compile_seconds > 0

    main = ",".join(
        f'{{"name":"{n}","sets":3,"rest_s":40,"reps":10}}'
        for n in ("Dumbbell Row", "Push-Up", "Plank", "Push-Up")
    )
    plan = (
        '{"title":"Quick dumbbell session","total_minutes":20,"days_per_week":3,"session":{'
        '"warmup":[{"name":"Plank","work_s":90}],'
        f'"main":[{main}],'
        '"cooldown":[{"name":"Push-Up","work_s":90}]}}'
    )
    m = xgr.GrammarMatcher(g1)
    assert m.accept_string(plan)
    assert m.is_completed()
    # a name outside the request-aware subset is rejected
    bad = xgr.GrammarMatcher(g1)
    assert not bad.accept_string(plan.replace("Dumbbell Row", "Arnold Press"))
    # the layout for 20 min: exactly 4 main items, 3 sets, 90 s holds, the requested minutes
    assert not xgr.GrammarMatcher(g1).accept_string(plan.replace('"work_s":90', '"work_s":60', 1))
    assert not xgr.GrammarMatcher(g1).accept_string(plan.replace('"sets":3', '"sets":4', 1))
    assert not xgr.GrammarMatcher(g1).accept_string(plan.replace('"total_minutes":20', '"total_minutes":30'))
    three_main = plan.replace(',{"name":"Push-Up","sets":3,"rest_s":40,"reps":10}]', "]")
    assert not xgr.GrammarMatcher(g1).accept_string(three_main)
    # non-compact whitespace is rejected (any_whitespace=False)
    spaced = xgr.GrammarMatcher(g1)
    assert not spaced.accept_string('{"title": "x"')

    # LRU eviction: max_size=2
    cache.get(request_plan_schema(None, small_catalogue))
    cache.get(request_plan_schema(None, None))
    assert len(cache) == 2


@pytest.mark.unit
def test_layout_pins_structure_for_standard_lengths_only(small_catalogue: ExerciseCatalogue) -> None:
    from pumpl_assets.core.layout import MINUTES_LAYOUT

    for minutes, (sets, n_main, n_wc, hold) in MINUTES_LAYOUT.items():
        req = RequestSpec(
            goal="endurance", minutes=minutes, level="beginner", equipment=["dumbbell"], days_per_week=4
        )
        session = request_plan_schema(req, small_catalogue)["properties"]["session"]["properties"]
        assert session["main"]["minItems"] == session["main"]["maxItems"] == n_main
        assert session["warmup"]["minItems"] == session["cooldown"]["maxItems"] == n_wc
        assert session["warmup"]["items"]["properties"]["work_s"]["enum"] == [hold]
        for variant in session["main"]["items"]["oneOf"]:
            assert variant["properties"]["sets"]["enum"] == [sets]
    odd = RequestSpec(goal="endurance", minutes=25, level="beginner", equipment=["dumbbell"], days_per_week=4)
    schema = request_plan_schema(odd, small_catalogue)
    assert schema["properties"]["total_minutes"]["enum"] == [25]
    assert schema["properties"]["session"]["properties"]["main"]["minItems"] == 1  # free structure
