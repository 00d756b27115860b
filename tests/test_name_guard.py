"""The served decoding's no-repeat guard: a name used in a session cannot be written again in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.grammar import request_plan_schema
from pumpl_assets.core.name_guard import SessionNameGuard, allowed_from_bitmask, block_names
from pumpl_assets.core.schemas import RequestSpec

NAMES = {
    "warmup": frozenset({"Jog In Place", "Arm Circles"}),
    "main": frozenset({"Push-Up", "Push-Up Plus", "Goblet Squat", "Plank"}),
    "cooldown": frozenset({"Child's Pose"}),
}
VOCAB = ['"', "Push", "-Up", " Plus", '",', "Gob", "let Squat", "Plank", "x"]
TOK = {t: i for i, t in enumerate(VOCAB)}
HEAD = '{"title":"T","total_minutes":30,"days_per_week":3,"split":"full_body","sessions":['
S1 = '{"day":"full_body","main_count":3,"warmup":[{"name":"Jog In Place","work_s":120}],"main":['


def _banned(text: str, allowed: list[str]) -> set[str]:
    guard = SessionNameGuard(NAMES, VOCAB)
    return {VOCAB[i] for i in guard.banned(text, lambda: [TOK[a] for a in allowed])}


@pytest.mark.unit
def test_a_used_name_cannot_be_closed_again_but_a_longer_one_can() -> None:
    text = HEAD + S1 + '{"name":"Push-Up","sets":3,"rest_s":60,"reps":10},{"name":"Push-Up'
    assert _banned(text, ['"', '",', " Plus"]) == {'"', '",'}
    # Before anything is used in the session, nothing is removed.
    assert _banned(HEAD + S1 + '{"name":"Push-Up', ['"', " Plus"]) == set()


@pytest.mark.unit
def test_a_prefix_whose_only_continuation_is_used_is_removed() -> None:
    text = HEAD + S1 + '{"name":"Goblet Squat","sets":3,"rest_s":60,"reps":10},{"name":"'
    assert _banned(text, ["Gob", "Push", "Plank"]) == {"Gob"}
    text = HEAD + S1 + '{"name":"Goblet Squat","sets":3,"rest_s":60,"reps":10},{"name":"Gob'
    assert _banned(text, ["let Squat"]) == set()  # the only way on is kept: a fallback, counted


@pytest.mark.unit
def test_each_session_starts_afresh_and_other_fields_are_untouched() -> None:
    s1_done = (
        S1
        + '{"name":"Plank","sets":3,"rest_s":60,"work_s":30}],"cooldown":[{"name":"Child\'s Pose","sets":1,"work_s":30}]},'
    )
    s2 = '{"day":"full_body","main_count":2,"warmup":[{"name":"Arm Circles","work_s":60}],"main":[{"name":"'
    assert _banned(HEAD + s1_done + s2, ["Plank", "Push"]) == set()  # Plank was day 1, not this session
    after_name = HEAD + S1 + '{"name":"Plank","sets":'
    assert _banned(after_name, ["x"]) == set()
    # Outside the sessions (title) the guard never looks at the allowed set.
    guard = SessionNameGuard(NAMES, VOCAB)
    assert (
        guard.banned('{"title":"Plank', lambda: pytest.fail("computed the allowed set outside a name")) == []
    )


@pytest.mark.unit
def test_each_day_of_a_split_is_guarded_with_its_own_names() -> None:
    """Per-day names: on day 2 a prefix is dead when that DAY's unused names do not continue it, even
    if another day's names would (the grammar's mask allows only the day's names)."""
    day1 = {**NAMES, "main": frozenset({"Push-Up", "Push-Up Plus", "Plank"})}
    day2 = {**NAMES, "main": frozenset({"Goblet Squat", "Plank"})}
    guard = SessionNameGuard([day1, day2], VOCAB)
    s1_done = (
        S1
        + '{"name":"Push-Up","sets":3,"rest_s":60,"reps":10}],"cooldown":[{"name":"Child\'s Pose","work_s":30}]},'
    )
    s2 = '{"day":"lower","main_count":2,"warmup":[{"name":"Arm Circles","work_s":60}],"main":['
    text = HEAD + s1_done + s2 + '{"name":"Goblet Squat","sets":3,"rest_s":60,"reps":10},{"name":"'
    assert {VOCAB[i] for i in guard.banned(text, lambda: [TOK["Gob"], TOK["Plank"]])} == {"Gob"}
    # with one dict for every session, day 1's unused "Push-Up Plus" would keep "Push" alive on day 1
    text1 = HEAD + S1 + '{"name":"Plank","sets":3,"rest_s":60,"work_s":30},{"name":"'
    assert {VOCAB[i] for i in guard.banned(text1, lambda: [TOK["Push"], TOK["Plank"]])} == {"Plank"}
    assert guard.fallbacks == 0


@pytest.mark.unit
def test_all_banned_keeps_the_grammar_choice_and_counts_a_fallback() -> None:
    guard = SessionNameGuard(NAMES, VOCAB)
    text = HEAD + S1 + '{"name":"Plank","sets":3,"rest_s":60,"work_s":30},{"name":"'
    assert guard.banned(text, lambda: [TOK["Plank"]]) == []
    assert guard.fallbacks == 1


@pytest.mark.unit
def test_block_names_are_the_served_schema_enums(shipped_catalogue: ExerciseCatalogue) -> None:
    req = RequestSpec(goal="strength", minutes=45, level="beginner", equipment=["dumbbell"], days_per_week=4)
    names = block_names(request_plan_schema(req, shipped_catalogue))
    assert names is not None and set(names) == {"warmup", "main", "cooldown"}
    allowed = {e.name for e in shipped_catalogue.suitable("beginner", ["dumbbell"])}
    assert names["main"] <= allowed and names["warmup"] and names["cooldown"]
    # a 4-day week's sessions are given per day (upper, lower): the guard knows both days' names
    muscles = {m for n in names["main"] for m in shipped_catalogue.get(n).primary_muscles}  # type: ignore[union-attr]
    assert {"chest", "quadriceps"} <= muscles
    assert block_names({"type": "object"}) is None


@pytest.mark.unit
def test_allowed_from_bitmask_reads_xgrammar_bits() -> None:
    import xgrammar as xgr

    mask = xgr.allocate_token_bitmask(1, 70)
    mask.zero_()
    for t in (0, 31, 32, 69):
        mask[0, t // 32] |= 1 << (t % 32)
    assert allowed_from_bitmask(mask[0], 70) == [0, 31, 32, 69]


@pytest.mark.integration
def test_served_decoding_runs_the_guard_and_plans_stay_valid(
    tiny_model_dir: Path, shipped_catalogue: ExerciseCatalogue
) -> None:
    import json

    from pumpl_assets.core.generation import GenerationParams, HFEngine, load_engine
    from pumpl_assets.core.prompts import render_prompt, request_to_prompt
    from pumpl_assets.core.schemas import WorkoutPlanResponse

    eng = load_engine("transformers", tiny_model_dir, dtype="float32")
    assert isinstance(eng, HFEngine)
    reqs = [
        RequestSpec(goal=g, minutes=45, level="beginner", equipment=["dumbbell"], days_per_week=d)  # type: ignore[arg-type]
        for g, d in (("hypertrophy", 4), ("strength", 3))
    ]
    try:
        prompts = [render_prompt(eng.tokenizer, request_to_prompt(r)) for r in reqs]
        schemas: list[dict | None] = [request_plan_schema(r, shipped_catalogue) for r in reqs]
        gens = eng.generate(prompts, GenerationParams(max_new_tokens=768), schemas)
        stats = dict(eng.last_stats)
    finally:
        eng.close()
    assert "guard_banned" in stats and stats["guard_fallbacks"] == 0
    for g in gens:
        assert g.finish_reason == "stop", g.text[-200:]
        plan = WorkoutPlanResponse.model_validate(json.loads(g.text))
        for session in plan.sessions:
            names = [e.name for e in session.all_exercises()]
            assert len(names) == len(set(names)), names


@pytest.fixture(scope="module")
def shipped_catalogue() -> ExerciseCatalogue:
    from pumpl_assets.core import settings

    return ExerciseCatalogue.from_json_file(settings.shipped_raw_dir() / "exercises.json")
