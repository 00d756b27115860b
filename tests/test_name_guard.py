"""The served decoding's no-repeat guard: a name used in a session cannot be written again in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.grammar import request_plan_schema
from pumpl_assets.core.name_guard import (
    GUARDED_CHECKS,
    DayRules,
    PlanRules,
    SessionNameGuard,
    allowed_from_bitmask,
    block_names,
)
from pumpl_assets.core.schemas import RequestSpec
from pumpl_assets.core.standard import Prescription

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


# ------------------------------------------------------------------------------------------------
# The request's rules: balance, focus, length (name_guard module doc)

RULE_VOCAB = ['"', "Push", "-Up", "Gob", "let Squat", "Plank", "Row", "}", "}]", ",", "]"]
RT = {t: i for i, t in enumerate(RULE_VOCAB)}
RULE_NAMES = {
    "warmup": frozenset({"Jog In Place"}),
    "main": frozenset({"Push-Up", "Goblet Squat", "Plank", "Row"}),
    "cooldown": frozenset({"Child's Pose"}),
}
HOLD = Prescription(sets=(2, 3), rest_s=(30, 60), work_s=(20, 40))
REPS = Prescription(sets=(2, 4), rest_s=(60, 120), reps=(8, 12))


def _rules(focus: str | None = None, minutes: int = 30) -> PlanRules:
    regions = {
        "Push-Up": frozenset({"push"}),
        "Goblet Squat": frozenset({"lower body"}),
        "Row": frozenset({"pull"}),
        "Plank": frozenset(),
    }
    day = DayRules(
        day="full_body",
        regions=regions,
        trainable=frozenset({"push", "pull", "lower body"}),
        focus_names=frozenset({"Plank"}) if focus == "core" else frozenset(),
        focus_applies=focus is not None,
        prescriptions={n: (HOLD if n == "Plank" else REPS) for n in regions},
    )
    target = 60.0 * minutes
    return PlanRules(
        goal="strength",
        focus=focus,
        lo_s=0.9 * target,
        hi_s=1.1 * target,
        warm_s=(300.0, 420.0),
        cool_s=(180.0, 300.0),
        days=(day,),
    )


def _session(count: int, *names: str, open_name: bool = True) -> str:
    items = ",".join(f'{{"name":"{n}","sets":3,"rest_s":90,"reps":10}}' for n in names)
    head = (
        f'{{"day":"full_body","main_count":{count},"warmup":[{{"name":"Jog In Place","work_s":240}}],"main":['
    )
    if not open_name:
        return HEAD + head + items
    return HEAD + head + items + ("," if items else "") + '{"name":"'


def _rule_banned(guard: SessionNameGuard, text: str, allowed: list[str]) -> set[str]:
    return {RULE_VOCAB[i] for i in guard.banned(text, lambda: [RT[a] for a in allowed])}


@pytest.mark.unit
def test_balance_owed_narrows_the_names_only_when_the_slots_left_just_pay_it() -> None:
    guard = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules())
    every = ["Push", "Gob", "Plank", "Row"]
    # Three slots, push covered: two regions owed, two slots left -> only a name that covers one.
    assert _rule_banned(guard, _session(3, "Push-Up"), every) == {"Push", "Plank"}
    assert guard.rule_bans == 1
    # Six slots: room to pay later, the model chooses freely.
    free = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules())
    assert _rule_banned(free, _session(6, "Push-Up"), every) == {"Push"}  # only the repeat goes
    # Mid-name the narrowing holds: 'Gob' continues to a payer, so nothing more is removed.
    assert _rule_banned(guard, _session(3, "Push-Up") + "Gob", ["let Squat"]) == set()


@pytest.mark.unit
def test_the_slots_are_what_the_sessions_length_holds_not_only_the_declared_count() -> None:
    """Six declared, but 15 minutes hold the written Push-Up (210 s at the bottom of its ranges) and two
    more of the day's shortest (130 s) beside a 5-min warm-up and 3-min cool-down: the debts are paid
    inside those two slots, as finalize would drop a fourth."""
    guard = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules(minutes=15))
    assert _rule_banned(guard, _session(6, "Push-Up"), ["Push", "Gob", "Plank", "Row"]) == {"Push", "Plank"}
    roomy = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules(minutes=30))
    assert _rule_banned(roomy, _session(6, "Push-Up"), ["Push", "Gob", "Plank", "Row"]) == {"Push"}


@pytest.mark.unit
def test_the_main_count_is_at_least_the_grammars_min_items() -> None:
    """A model that declares one exercise still gets the session the grammar requires."""
    guard = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules(), main_min=[3])
    assert _rule_banned(guard, _session(1, "Push-Up"), ["Push", "Gob", "Plank", "Row"]) == {"Push", "Plank"}


@pytest.mark.unit
def test_focus_owed_narrows_to_focus_names() -> None:
    guard = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules(focus="core"))
    # Two slots with core focus: 40% of 2 -> one core exercise owed; balance needs what the rest allow.
    assert "Plank" not in _rule_banned(guard, _session(2, "Push-Up"), ["Gob", "Plank", "Row"])
    assert _rule_banned(guard, _session(2, "Push-Up"), ["Gob", "Plank", "Row"]) == {"Gob", "Row"}


@pytest.mark.unit
def test_an_unpayable_rule_steps_aside_and_counts_a_fallback() -> None:
    guard = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules())
    # The grammar allows only 'Plank' here: the rule would leave nothing, so it steps aside.
    assert _rule_banned(guard, _session(3, "Push-Up"), ["Plank"]) == set()
    assert guard.rule_fallbacks == 1 and guard.fallbacks == 0


@pytest.mark.unit
def test_the_main_list_does_not_close_too_short_or_owing() -> None:
    # 60 min: 54 min at least. Two items at their tops (4 sets x (30+120) + 30 = 630 s each) + 7 min
    # warm-up... the warm-up's one drill tops at 300 s, + 5 min cool-down: 1,860 s < 3,240 s -> short.
    long_guard = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules(minutes=60))
    text = (
        _session(2, "Goblet Squat", "Push-Up", open_name=False)
        + ',{"name":"Row","sets":3,"rest_s":90,"reps":10}'
    )
    assert _rule_banned(long_guard, text, [",", "]"]) == {"]"}
    assert _rule_banned(long_guard, text[:-1], ["}", "}]"]) == {"}]"}  # a token that closes both
    # 20 min, the three regions covered: the list may close.
    ok_guard = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules(minutes=20))
    assert _rule_banned(ok_guard, text, [",", "]"]) == set()
    # 20 min with a core focus and no core exercise yet: one more fits (2 x 210 s + a 130 s Plank at
    # the bottom of the ranges, + 5 min warm-up and 3 min cool-down <= 22 min), so no close.
    owing = _session(2, "Goblet Squat", "Push-Up", open_name=False)
    focus_guard = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules(focus="core", minutes=20))
    assert _rule_banned(focus_guard, owing, [",", "]"]) == {"]"}
    # 15 min: a third exercise would not fit (16.5 min at most), so the debt is left to the check.
    tight = SessionNameGuard(RULE_NAMES, RULE_VOCAB, rules=_rules(focus="core", minutes=15))
    assert _rule_banned(tight, owing, [",", "]"]) == set()
    # Closing is all the grammar allows (its maxItems): kept. Without rules a close is never blocked.
    assert _rule_banned(focus_guard, owing, ["]"]) == set()
    assert _rule_banned(SessionNameGuard(RULE_NAMES, RULE_VOCAB), owing, [",", "]"]) == set()


# Proportion and cool-down: a day of three pushes, a row, a squat, a plank; stretches per muscle.
P_VOCAB = [
    '"',
    "Push",
    "-Up",
    "Dip",
    "Press",
    "Gob",
    "let Squat",
    "Plank",
    "Row",
    "Quad",
    "Chest",
    "Lat",
    " Stretch",
]
PT = {t: i for i, t in enumerate(P_VOCAB)}
P_NAMES = {
    "warmup": frozenset({"Jog In Place"}),
    "main": frozenset({"Push-Up", "Dip", "Press", "Goblet Squat", "Plank", "Row"}),
    "cooldown": frozenset({"Quad Stretch", "Chest Stretch", "Lat Stretch"}),
}
P_MUSCLES = {
    "Push-Up": frozenset({"chest"}), "Dip": frozenset({"triceps"}), "Press": frozenset({"shoulders"}),
    "Goblet Squat": frozenset({"quadriceps"}), "Row": frozenset({"lats"}), "Plank": frozenset({"abdominals"}),
    "Quad Stretch": frozenset({"quadriceps"}), "Chest Stretch": frozenset({"chest"}),
    "Lat Stretch": frozenset({"lats"}),
}  # fmt: skip


def _p_rules(supply: dict[str, int] | None) -> PlanRules:
    push, lower, pull = frozenset({"push"}), frozenset({"lower body"}), frozenset({"pull"})
    regions = {
        "Push-Up": push,
        "Dip": push,
        "Press": push,
        "Goblet Squat": lower,
        "Row": pull,
        "Plank": frozenset(),
    }
    day = DayRules(
        day="full_body",
        regions=regions,
        trainable=frozenset({"push", "pull", "lower body"}),
        focus_names=frozenset(),
        focus_applies=False,
        prescriptions={n: (HOLD if n == "Plank" else REPS) for n in regions},
        muscles=P_MUSCLES,
        supply=supply,
    )
    return PlanRules(
        goal="strength", focus=None, lo_s=3240.0, hi_s=3960.0, warm_s=(300.0, 420.0), cool_s=(180.0, 300.0),
        days=(day,),
    )  # fmt: skip


def _p_banned(guard: SessionNameGuard, text: str, allowed: list[str]) -> set[str]:
    return {P_VOCAB[i] for i in guard.banned(text, lambda: [PT[a] for a in allowed])}


@pytest.mark.unit
def test_a_third_push_waits_for_pull_and_lower_body_work() -> None:
    """Eight slots (balance is no debt yet), two pushes written: a third would be 3 to an untrained
    region's 1 — refused while the person has pulls and squats; free without the proportion rule."""
    text = _session(8, "Push-Up", "Dip")
    every = ["Press", "Gob", "Plank", "Row"]
    guard = SessionNameGuard(P_NAMES, P_VOCAB, rules=_p_rules({"push": 3, "pull": 1, "lower body": 1}))
    assert _p_banned(guard, text, every) == {"Press"}
    assert guard.rule_bans == 1
    free = SessionNameGuard(P_NAMES, P_VOCAB, rules=_p_rules(None))
    assert _p_banned(free, text, every) == set()
    # One push written: a second is fine (2 to 1).
    assert _p_banned(guard, _session(8, "Push-Up"), ["Dip", "Press", "Gob", "Row"]) == set()
    # When the grammar allows only another push, the layer steps aside (counted).
    assert _p_banned(guard, text, ["Press"]) == set()
    assert guard.rule_fallbacks == 1


def _cooldown_text(main: list[str], cool: list[str]) -> str:
    items = ",".join(f'{{"name":"{n}","sets":3,"rest_s":90,"reps":10}}' for n in main)
    done = "".join(f'{{"name":"{n}","sets":2,"work_s":30}},' for n in cool)
    return (
        HEAD
        + '{"day":"full_body","main_count":2,"warmup":[{"name":"Jog In Place","work_s":240}],"main":['
        + items
        + '],"cooldown":['
        + done
        + '{"name":"'
    )


@pytest.mark.unit
def test_the_cool_down_stretches_what_the_main_work_trained() -> None:
    guard = SessionNameGuard(P_NAMES, P_VOCAB, rules=_p_rules(None))
    stretches = ["Quad", "Chest", "Lat"]
    # Squat and push-up trained quads and chest: the first stretch is one of theirs.
    assert _p_banned(guard, _cooldown_text(["Goblet Squat", "Push-Up"], []), stretches) == {"Lat"}
    # One on target of two: half is met, the second stretch is free (beside the repeat).
    assert _p_banned(guard, _cooldown_text(["Goblet Squat", "Push-Up"], ["Quad Stretch"]), stretches) == {
        "Quad"
    }
    # Nothing on target for a plank-only session: no narrowing.
    assert _p_banned(guard, _cooldown_text(["Plank"], []), stretches) == set()
    # Without rules only repeats are refused.
    plain = SessionNameGuard(P_NAMES, P_VOCAB)
    assert _p_banned(plain, _cooldown_text(["Goblet Squat", "Push-Up"], []), stretches) == set()


@pytest.mark.integration
def test_a_random_models_served_plans_keep_balance_and_focus_under_the_rules(
    tiny_model_dir: Path, shipped_catalogue: ExerciseCatalogue
) -> None:
    """The rules hold whatever the model prefers: a random tiny model, decoded under the served grammar
    with the request's rules, writes plans that pass ``balance`` and ``focus`` wherever no rule had to
    step aside; without the rules the same model misses them."""
    from pumpl_assets.core.generation import GenerationParams, HFEngine, load_engine
    from pumpl_assets.core.grammar import request_plan_rules
    from pumpl_assets.core.prompts import render_prompt, request_to_prompt
    from pumpl_assets.core.validate import validate_example

    reqs = [
        RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3),
        RequestSpec(
            goal="hypertrophy", minutes=40, level="intermediate", equipment=["dumbbell"], days_per_week=4,
            focus="core",
        ),
        RequestSpec(
            goal="general_fitness", minutes=30, level="beginner", equipment=["body only", "bands"],
            days_per_week=2, focus="glutes",
        ),
    ]  # fmt: skip
    eng = load_engine("transformers", tiny_model_dir, dtype="float32")
    assert isinstance(eng, HFEngine)
    failed: dict[bool, list[str]] = {}
    try:
        prompts = [render_prompt(eng.tokenizer, request_to_prompt(r)) for r in reqs]
        schemas: list[dict | None] = [request_plan_schema(r, shipped_catalogue) for r in reqs]
        for with_rules in (True, False):
            params = [
                GenerationParams(
                    max_new_tokens=1400,
                    plan_rules=request_plan_rules(r, shipped_catalogue) if with_rules else None,
                )
                for r in reqs
            ]
            gens = eng.generate(prompts, params, schemas)
            stats = dict(eng.last_stats)
            failed[with_rules] = []
            for r, g in zip(reqs, gens, strict=True):
                assert g.finish_reason == "stop", g.text[-200:]
                out = validate_example(r, g.text, shipped_catalogue)
                assert out.adherence is not None, out.reasons
                failed[with_rules] += [c for c in GUARDED_CHECKS if not out.adherence.checks[c]]
            if with_rules:
                assert stats["guard_rule_bans"] > 0 and stats["guard_rule_fallbacks"] == 0, stats
    finally:
        eng.close()
    assert failed[True] == []
    assert failed[False], (
        "the random model met every rule unaided: this test no longer shows the rules' effect"
    )


@pytest.mark.unit
def test_the_report_says_who_settles_each_served_check() -> None:
    from pumpl_assets.core.report import check_table_markdown

    table = check_table_markdown({"adapter.served.balance": 1.0, "n_examples": 60.0})
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[-2] for line in table.splitlines()[2:-2]}
    assert rows["balance"] == rows["focus"] == "model + guard"
    assert rows["duplicates"] == "grammar" and rows["duration"] == "fitted" and rows["title"] == "model"
