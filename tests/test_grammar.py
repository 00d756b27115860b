"""Request-aware schemas (grammar.py) and the compiled-grammar cache (generation.GrammarCache)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.grammar import (
    GUARANTEED_CHECKS,
    NoSuitableExercisesError,
    allowed_exercise_names,
    block_size_bounds,
    clear_cache,
    request_plan_schema,
)
from pumpl_assets.core.schemas import MAX_MAIN, RequestSpec, plan_json_schema
from pumpl_assets.core.standard import COOLDOWN, STANDARD, WARMUP

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
    {
        "name": "Goblet Squat",
        "level": "beginner",
        "equipment": "dumbbell",
        "category": "strength",
        "mechanic": "compound",
        "primaryMuscles": ["quadriceps"],
    },
    {  # dynamic drill: warm-up
        "name": "Arm Circles",
        "level": "beginner",
        "equipment": None,
        "category": "stretching",
        "force": "push",
        "primaryMuscles": ["shoulders"],
    },
    {  # easy cardio: warm-up
        "name": "Jog in Place",
        "level": "beginner",
        "equipment": None,
        "category": "cardio",
        "primaryMuscles": ["quadriceps"],
    },
    {  # static stretch: cool-down
        "name": "Standing Hamstring Stretch",
        "level": "beginner",
        "equipment": None,
        "category": "stretching",
        "force": "static",
        "primaryMuscles": ["hamstrings"],
    },
]
WARM = ["Arm Circles", "Jog in Place"]
COOL = ["Standing Hamstring Stretch"]


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


def _session(schema: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return schema["properties"]["sessions"]["prefixItems"][i]["properties"]


def _main_variants(schema: dict[str, Any], i: int = 0) -> list[dict[str, Any]]:
    items = _session(schema, i)["main"]["items"]
    return items.get("oneOf", [items])


@pytest.mark.unit
def test_schema_restricts_names_to_suitable_exercises(small_catalogue: ExerciseCatalogue) -> None:
    req = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3)
    schema = request_plan_schema(req, small_catalogue)
    session = _session(schema)
    # warm-up: light drills and easy cardio only; cool-down: static stretches only
    assert session["warmup"]["items"]["properties"]["name"]["enum"] == WARM
    assert session["cooldown"]["items"]["properties"]["name"]["enum"] == COOL
    assert session["warmup"]["items"]["properties"]["work_s"] == {"type": "integer", "minimum": WARMUP.work_s[0], "maximum": WARMUP.work_s[1]}  # fmt: skip
    assert session["cooldown"]["items"]["properties"]["work_s"]["maximum"] == COOLDOWN.work_s[1]
    # main: one variant per role of the goal, with that role's names and the standard's ranges
    by_role = {
        "primary": ["Goblet Squat"],
        "assistance": ["Dumbbell Row", "Push-Up"],
        "hold": ["Plank"],
    }
    variants = _main_variants(schema)
    assert len(variants) == len(by_role)
    for v in variants:
        names = v["properties"]["name"]["enum"]
        (role,) = [r for r, n in by_role.items() if n == names]
        pres = STANDARD["strength"]["beginner"][role]
        props = v["properties"]
        assert (props["sets"]["minimum"], props["sets"]["maximum"]) == pres.sets
        assert (props["rest_s"]["minimum"], props["rest_s"]["maximum"]) == pres.rest_s
        if pres.reps is not None:
            assert (props["reps"]["minimum"], props["reps"]["maximum"]) == pres.reps and "work_s" not in props
        else:
            assert (props["work_s"]["minimum"], props["work_s"]["maximum"]) == pres.work_s
            assert "reps" not in props
    # nothing above the level, outside the equipment, or without a role in the goal's main block
    all_names = json.dumps(schema)
    for absent in ("Barbell Snatch", "Arnold Press", "Box Jump"):
        assert absent not in all_names
    # compact form: derivable keys dropped
    assert "equipment" not in json.dumps(schema["properties"]["sessions"])
    assert set(schema["required"]) == {"title", "total_minutes", "days_per_week", "split", "sessions"}
    assert "session" not in schema["properties"]


@pytest.mark.unit
def test_schema_respects_limitations_and_level(small_catalogue: ExerciseCatalogue) -> None:
    expert_all = RequestSpec(
        goal="strength", minutes=45, level="expert", equipment=["dumbbell", "barbell"], days_per_week=4
    )
    assert allowed_exercise_names(expert_all, small_catalogue) == sorted(r["name"] for r in RECORDS)
    knees_shoulders = expert_all.model_copy(update={"limitations": ["knees", "shoulders"]})
    allowed = allowed_exercise_names(knees_shoulders, small_catalogue)
    text = json.dumps(request_plan_schema(knees_shoulders, small_catalogue))
    for bad in ("Box Jump", "Goblet Squat"):  # jumping, deep knee flexion
        assert bad not in allowed and f'"{bad}"' not in text
    for bad in ("Arnold Press", "Barbell Snatch"):  # overhead pressing
        assert bad not in allowed and f'"{bad}"' not in text
    assert "Dumbbell Row" in allowed and '"Dumbbell Row"' in text
    # the same request without limitations allows the squat again
    assert '"Goblet Squat"' in json.dumps(request_plan_schema(expert_all, small_catalogue))
    # a beginner never sees the expert lift
    beginner = expert_all.model_copy(update={"level": "beginner"})
    assert "Barbell Snatch" not in allowed_exercise_names(beginner, small_catalogue)


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
    # equipment order and focus do not change the key ...
    req2 = RequestSpec(
        goal="strength", minutes=60, level="beginner", equipment=["dumbbell", "body only"], days_per_week=2
    )
    req3 = RequestSpec(
        goal="strength", minutes=60, level="beginner", equipment=["body only", "dumbbell"], days_per_week=2,
        focus="core",
    )  # fmt: skip
    assert request_plan_schema(req2, small_catalogue) == request_plan_schema(req3, small_catalogue)
    # ... the goal (its ranges per role), the days (the split) and the minutes (the length band) do
    for change in ({"goal": "hypertrophy"}, {"days_per_week": 4}, {"minutes": 30}):
        other = req3.model_copy(update=change)
        assert request_plan_schema(other, small_catalogue) != request_plan_schema(req3, small_catalogue)


@pytest.mark.unit
def test_free_text_fields_refuse_control_characters() -> None:
    from pydantic import ValidationError

    from pumpl_assets.core.schemas import WorkoutPlanResponse

    schema = plan_json_schema(None, include_optional=True)
    title = schema["properties"]["title"]
    assert title["pattern"] == r"^[^\x00-\x1f]{3,60}$"
    plan: dict[str, Any] = {
        "total_minutes": 20, "days_per_week": 3, "split": "full_body", "title": "Quick session",
        "sessions": [{
            "day": "full_body", "main_count": 1, "warmup": [{"name": "Arm Circles", "work_s": 90}],
            "main": [{"name": "Goblet Squat", "sets": 3, "rest_s": 120, "reps": 10}],
            "cooldown": [{"name": "Standing Hamstring Stretch", "sets": 2, "work_s": 30}],
        }],
    }  # fmt: skip
    WorkoutPlanResponse.model_validate(plan)
    for field, bad in (("title", "Quick\tsession"), ("title", "Q\x1fuick")):
        with pytest.raises(ValidationError, match="pattern"):
            WorkoutPlanResponse.model_validate({**plan, field: bad})
    squat = {**plan["sessions"][0]["main"][0], "notes": "slow\neccentric"}
    with pytest.raises(ValidationError, match="pattern"):
        WorkoutPlanResponse.model_validate({**plan, "sessions": [{**plan["sessions"][0], "main": [squat]}]})


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
    # Another engine may reuse these grammars only with the same vocabulary, size and stop tokens.
    assert cache.serves(AutoTokenizer.from_pretrained(tiny_model_dir), len(tok), [2])
    assert not cache.serves(tok, len(tok), [3]) and not cache.serves(tok, len(tok) + 1, [2])
    grown = AutoTokenizer.from_pretrained(tiny_model_dir)
    grown.add_tokens(["<pumpl-extra>"])
    assert not cache.serves(grown, len(tok), [2])

    def plan(
        main: list[str], total: int = 20, days: int = 3, split: str = "full_body", **session: str
    ) -> str:
        sess = {
            "day": '"full_body"',
            "main_count": str(len(main)),
            "warmup": '[{"name":"Arm Circles","work_s":90}]',
            "main": "[" + ",".join(main) + "]",
            "cooldown": '[{"name":"Standing Hamstring Stretch","sets":2,"work_s":30}]',
        }
        sess.update(session)
        body = ",".join(f'"{k}":{v}' for k, v in sess.items())
        return (
            f'{{"total_minutes":{total},"days_per_week":{days},"split":"{split}",'
            f'"title":"Quick dumbbell session","sessions":[{{{body}}}]}}'
        )

    def ok(text: str) -> bool:
        m = xgr.GrammarMatcher(g1)
        return m.accept_string(text) and m.is_completed()

    squat = '{"name":"Goblet Squat","sets":3,"rest_s":120,"reps":10}'
    row = '{"name":"Dumbbell Row","sets":2,"rest_s":90,"reps":12}'
    plank = '{"name":"Plank","sets":2,"rest_s":45,"work_s":30}'
    good = plan([squat, row, plank])
    assert ok(good)
    # a name outside the request-aware subset is rejected
    assert not ok(good.replace("Dumbbell Row", "Arnold Press"))
    # the standard's ranges per role: 3×10 fits a beginner's primary lift, 3×5 or 4 sets do not
    assert not ok(good.replace('"reps":10', '"reps":5', 1))
    assert not ok(good.replace('"sets":3', '"sets":4', 1))
    assert not ok(good.replace('"rest_s":120', '"rest_s":30', 1))
    # a hold in reps, a lift in seconds: rejected
    assert not ok(good.replace('"work_s":30}', '"reps":10}', 1))
    # a stretch in the warm-up, a drill in the cool-down, a lift in either: rejected
    assert not ok(good.replace('"Arm Circles"', '"Standing Hamstring Stretch"'))
    assert not ok(good.replace('"name":"Standing Hamstring Stretch"', '"name":"Arm Circles"'))
    assert not ok(good.replace('"Arm Circles"', '"Push-Up"'))
    # the v1 field is gone
    assert not ok(good.replace('"sessions":[', '"session":['))
    # the request's own figures: days/week as asked, total_minutes within the length ±10%
    assert ok(plan([squat, row, plank], total=18)) and ok(plan([squat, row, plank], total=22))
    assert not ok(plan([squat, row, plank], total=30)) and not ok(plan([squat, row, plank], total=17))
    assert not ok(plan([squat, row, plank], days=4))
    # the split of the standard: 3 days are one full-body session, not upper/lower, not two sessions
    assert not ok(plan([squat, row, plank], split="upper_lower"))
    session_text = good[good.index('"sessions":[') + len('"sessions":[') : -2]
    assert ok(good[: -len(session_text) - 2] + session_text + "]}")  # the slicing is right
    assert not ok(good[:-2] + "," + session_text + "]}")
    # item counts: anything inside the feasible bounds (the model decides), nothing outside them
    lo, hi = block_size_bounds(req, list(STANDARD["strength"]["beginner"].values()))["main"]
    assert lo < hi
    push = '{"name":"Push-Up","sets":2,"rest_s":60,"reps":8}'
    pool = [squat, row, plank, push]
    for n in range(1, len(pool) + 1):
        assert ok(plan(pool[:n])) == (lo <= n <= hi), n
    # a title is free text, but JSON text: a raw tab or control character (which xgrammar's plain
    # string rule admits, and which once made a sampled served answer unparsable) is refused
    assert ok(good.replace("Quick dumbbell session", "Día 1: full body"))
    for bad in ("Quick\tdumbbell", "Quick\x01dumbbell", "Quick\ndumbbell"):
        assert not ok(good.replace("Quick dumbbell session", bad)), repr(bad)
    assert not ok(good.replace("Quick dumbbell session", "Q" * 61))  # the pattern carries the length
    # non-compact whitespace is rejected (any_whitespace=False)
    spaced = xgr.GrammarMatcher(g1)
    assert not spaced.accept_string('{"total_minutes": 20')

    # LRU eviction: max_size=2
    cache.get(request_plan_schema(None, small_catalogue))
    cache.get(request_plan_schema(None, None))
    assert len(cache) == 2


@pytest.mark.unit
def test_no_layout_is_pinned(small_catalogue: ExerciseCatalogue) -> None:
    """The served grammar fixes what the request and the standard fix (split, days, the length band,
    names per block and day, ranges per role, feasible block sizes); the layout stays the model's."""
    assert set(GUARANTEED_CHECKS) == {
        "catalogue",
        "equipment",
        "level",
        "safety",
        "goal_fidelity",
        "split",
        "duplicates",
    }
    for m in (10, 25, 45, 60, 120):
        for d, split, days in ((1, "full_body", ["full_body"]), (3, "full_body", ["full_body"]),
                               (4, "upper_lower", ["upper", "lower"]), (6, "push_pull_legs", ["push", "pull", "legs"])):  # fmt: skip
            req = RequestSpec(
                goal="endurance", minutes=m, level="beginner", equipment=["dumbbell"], days_per_week=d
            )
            schema = request_plan_schema(req, small_catalogue)
            props = schema["properties"]
            assert props["days_per_week"]["enum"] == [d]
            assert props["split"]["enum"] == [split]
            assert (props["total_minutes"]["minimum"], props["total_minutes"]["maximum"]) == (
                math.ceil(0.9 * m - 1e-9),
                math.floor(1.1 * m + 1e-9),
            )
            sessions = props["sessions"]
            assert [s["properties"]["day"]["enum"] for s in sessions["prefixItems"]] == [[x] for x in days]
            assert sessions["items"] is False and sessions["minItems"] == sessions["maxItems"] == len(days)
            for v in _main_variants(schema):
                assert "enum" not in v["properties"]["sets"]  # a range, not a layout's fixed set count
            # block sizes are bounds the standard makes necessary, never one fixed count for a
            # session of normal length
            main = _session(schema)["main"]
            assert 1 <= main["minItems"] <= main["maxItems"] <= MAX_MAIN
            # (strictly wider than one count on a real catalogue: test_standard.py)


@pytest.mark.unit
def test_each_day_draws_only_its_own_muscles(small_catalogue: ExerciseCatalogue) -> None:
    req = RequestSpec(
        goal="hypertrophy", minutes=45, level="expert", equipment=["dumbbell", "barbell"], days_per_week=4
    )
    schema = request_plan_schema(req, small_catalogue)
    upper = {n for v in _main_variants(schema, 0) for n in v["properties"]["name"]["enum"]}
    lower = {n for v in _main_variants(schema, 1) for n in v["properties"]["name"]["enum"]}
    assert {"Push-Up", "Dumbbell Row", "Arnold Press"} <= upper and "Goblet Squat" not in upper
    assert "Goblet Squat" in lower and not lower & {"Push-Up", "Dumbbell Row", "Arnold Press"}
    assert "Plank" in upper and "Plank" in lower  # core work fits every day
    # push / pull: the row pulls, the presses push
    ppl = request_plan_schema(req.model_copy(update={"days_per_week": 5}), small_catalogue)
    push = {n for v in _main_variants(ppl, 0) for n in v["properties"]["name"]["enum"]}
    pull = {n for v in _main_variants(ppl, 1) for n in v["properties"]["name"]["enum"]}
    assert "Push-Up" in push and "Dumbbell Row" not in push
    assert "Dumbbell Row" in pull and "Push-Up" not in pull
