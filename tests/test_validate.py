"""Validation rules: each fires on a crafted bad plan and stays silent on a good one."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pumpl_assets.core import settings
from pumpl_assets.core.exercises import CatalogueExercise, ExerciseCatalogue
from pumpl_assets.core.schemas import LEVELS, RequestSpec, WorkoutPlanResponse, parse_plan
from pumpl_assets.core.validate import (
    BLOCK_LIMITS,
    REASON_KEYS,
    Adherence,
    ValidationOutcome,
    adherence,
    reason_key,
    validate_example,
    validate_rows,
)

pytestmark = pytest.mark.unit

SHIPPED = settings.shipped_raw_dir() / "exercises.json"
AVOID_MUSCLES = {"lower back", "shoulders", "forearms"}


@pytest.fixture(scope="module")
def catalogue(request: pytest.FixtureRequest) -> ExerciseCatalogue:
    if SHIPPED.is_file():
        return ExerciseCatalogue.from_json_file(SHIPPED)
    return ExerciseCatalogue.from_json_file(request.getfixturevalue("shared_exercises_path"))


def _pick(cat: ExerciseCatalogue, pred: Any, n: int = 1) -> list[CatalogueExercise]:
    found = sorted((e for e in cat if pred(e)), key=lambda e: e.name)
    if len(found) < n:
        pytest.skip(f"catalogue has fewer than {n} exercises matching the predicate")
    return found[:n]


def _easy(e: CatalogueExercise) -> bool:
    """Body-only beginner exercise that suits every limitation."""
    return (
        e.equipment == "body only" and e.level == "beginner" and e.suits("beginner", [], list(AVOID_MUSCLES))
    )


@pytest.fixture(scope="module")
def names(catalogue: ExerciseCatalogue) -> dict[str, Any]:
    main = _pick(catalogue, lambda e: _easy(e) and e.category == "strength", 5)
    stretch = _pick(catalogue, lambda e: _easy(e) and e.category in ("stretching", "cardio"), 2)
    barbell = _pick(catalogue, lambda e: e.equipment == "barbell" and e.level == "beginner")[0]
    advanced = _pick(catalogue, lambda e: e.level != "beginner" and e.category == "strength")[0]
    lim_bad = _pick(catalogue, lambda e: e.level == "beginner" and not e.suits("expert", ["body only"], ["lower back"]) and e.equipment == "body only")[0]  # fmt: skip
    return {
        "main": [e.name for e in main],
        "warm": stretch[0].name,
        "cool": stretch[1].name,
        "barbell": barbell,
        "advanced": advanced,
        "lim_bad": lim_bad,
    }


REQUEST = RequestSpec(
    goal="strength", minutes=30, level="beginner", equipment=["body only"], days_per_week=3, limitations=[]
)


def good_plan(names: dict[str, Any]) -> dict[str, Any]:
    """29 min of content for a 30-min request: 90 + 4×390 + 90 seconds."""
    return {
        "title": "Bodyweight Basics",
        "total_minutes": 30,
        "days_per_week": 3,
        "session": {
            "warmup": [{"name": names["warm"], "sets": 1, "work_s": 60, "rest_s": 0}],
            "main": [{"name": n, "sets": 4, "reps": 10, "rest_s": 60} for n in names["main"][:4]],
            "cooldown": [{"name": names["cool"], "sets": 1, "work_s": 60, "rest_s": 0}],
        },
    }


def check(
    plan: dict[str, Any] | str, cat: ExerciseCatalogue, req: RequestSpec = REQUEST
) -> ValidationOutcome:
    text = plan if isinstance(plan, str) else json.dumps(plan)
    return validate_example(req, text, cat)


def keys(out: ValidationOutcome) -> set[str]:
    return {reason_key(r) for r in out.reasons}


def test_good_plan_passes(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    out = check(good_plan(names), catalogue)
    assert out.ok and out.stage == "ok" and out.reasons == []
    assert isinstance(out.plan, WorkoutPlanResponse)
    assert isinstance(out.adherence, Adherence) and out.adherence.ok
    assert out.adherence.computed_minutes == pytest.approx(29.0)


def test_invalid_json(catalogue: ExerciseCatalogue) -> None:
    out = check('{"title": "x", ', catalogue)
    assert not out.ok and out.stage == "json" and out.plan is None
    assert keys(out) == {"json"} and "invalid JSON" in out.reasons[0]


def test_schema_violations_name_the_field(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = good_plan(names)
    del plan["session"]
    out = check(plan, catalogue)
    assert out.stage == "schema" and keys(out) == {"schema"}
    assert any("session" in r for r in out.reasons)

    plan = good_plan(names)
    plan["session"]["main"][0]["work_s"] = 30  # reps AND work_s: neither variant accepts it
    out = check(plan, catalogue)
    assert out.stage == "schema" and any("main.0" in r for r in out.reasons)


def test_declared_minutes_trap(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    """total_minutes says 30 but the content is ~50% off: the computed duration rejects it."""
    plan = good_plan(names)
    for ex in plan["session"]["main"]:
        ex["sets"] = 2  # 4 × 210 s + 180 s = 17 min
    assert plan["total_minutes"] == REQUEST.minutes
    assert parse_plan(json.dumps(plan)).computed_minutes() == pytest.approx(17.0)
    out = check(plan, catalogue)
    assert out.stage == "domain" and keys(out) == {"duration"}
    assert "17.0 min" in out.reasons[0] and "30 min" in out.reasons[0]
    assert out.adherence is not None and not out.adherence.duration_ok and not out.adherence.ok


def test_declared_minutes_must_match_too(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = good_plan(names)
    plan["total_minutes"] = 45
    out = check(plan, catalogue)
    assert keys(out) == {"declared_minutes"} and "total_minutes=45" in out.reasons[0]
    assert out.adherence is not None and out.adherence.ok  # content itself adheres


def test_duration_tolerance_bounds(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = good_plan(names)  # 29.0 min
    assert check(plan, catalogue, REQUEST.model_copy(update={"minutes": 32})).ok  # 29 ≥ 28.8
    out = check(plan, catalogue, REQUEST.model_copy(update={"minutes": 33}))  # 29 < 29.7
    assert "duration" in keys(out)


def test_days_per_week(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = good_plan(names)
    plan["days_per_week"] = 5
    out = check(plan, catalogue)
    assert keys(out) == {"days_per_week"} and "plan has 5, request asks 3" in out.reasons[0]


def test_unknown_exercise(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = good_plan(names)
    plan["session"]["main"][1]["name"] = "Quantum Flux Squat"
    out = check(plan, catalogue)
    assert keys(out) == {"unknown_exercise"} and "'Quantum Flux Squat'" in out.reasons[0]
    assert out.adherence is not None and not out.adherence.exercises_known


def test_equipment(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = good_plan(names)
    plan["session"]["main"][0]["name"] = names["barbell"].name
    out = check(plan, catalogue)
    assert (
        keys(out) == {"equipment"} and names["barbell"].name in out.reasons[0] and "barbell" in out.reasons[0]
    )
    assert out.adherence is not None and not out.adherence.equipment_ok
    # With a barbell it is fine.
    assert check(plan, catalogue, REQUEST.model_copy(update={"equipment": ["body only", "barbell"]})).ok


def test_declared_equipment_must_agree_with_catalogue(
    catalogue: ExerciseCatalogue, names: dict[str, Any]
) -> None:
    plan = good_plan(names)
    plan["session"]["main"][0]["equipment"] = "body only"
    assert check(plan, catalogue).ok
    plan["session"]["main"][0]["equipment"] = "dumbbell"
    out = check(plan, catalogue, REQUEST.model_copy(update={"equipment": ["dumbbell"]}))
    assert keys(out) == {"equipment"} and "declares 'dumbbell'" in out.reasons[0]


def test_level(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    adv: CatalogueExercise = names["advanced"]
    plan = good_plan(names)
    plan["session"]["main"][0]["name"] = adv.name
    req = REQUEST.model_copy(update={"equipment": ["body only", adv.equipment]})
    out = check(plan, catalogue, req)
    assert keys(out) == {"level"} and adv.name in out.reasons[0] and adv.level in out.reasons[0]
    assert out.adherence is not None and not out.adherence.level_ok
    assert check(plan, catalogue, req.model_copy(update={"level": adv.level})).ok
    assert LEVELS.index(adv.level) > 0


def test_limitations(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    bad: CatalogueExercise = names["lim_bad"]
    plan = good_plan(names)
    plan["session"]["main"][0]["name"] = bad.name
    assert check(plan, catalogue).ok  # fine without the limitation
    out = check(plan, catalogue, REQUEST.model_copy(update={"limitations": ["lower back"]}))
    assert keys(out) == {"limitations"} and bad.name in out.reasons[0] and "lower back" in out.reasons[0]
    assert out.adherence is not None and not out.adherence.limitations_ok


@pytest.mark.parametrize(
    ("block", "field", "value", "expect"),
    [
        ("warmup", "sets", BLOCK_LIMITS["warmup"].max_sets + 1, "sets="),
        ("cooldown", "sets", BLOCK_LIMITS["cooldown"].max_sets + 1, "sets="),
        ("main", "rest_s", BLOCK_LIMITS["main"].min_rest_s - 10, "between sets"),
        ("main", "sets", BLOCK_LIMITS["main"].max_sets + 1, "sets="),
        ("cooldown", "rest_s", BLOCK_LIMITS["cooldown"].max_rest_s + 30, "rest_s="),
        ("warmup", "work_s", BLOCK_LIMITS["warmup"].max_work_s + 60, "work_s="),
    ],
)
def test_ranges(
    catalogue: ExerciseCatalogue, names: dict[str, Any], block: str, field: str, value: int, expect: str
) -> None:
    plan = good_plan(names)
    plan["session"][block][0][field] = value
    out = check(plan, catalogue, REQUEST.model_copy(update={"minutes": 60 if block == "main" else 30}))
    assert "ranges" in keys(out)
    assert any(r.startswith(f"ranges: {block} ") and expect in r for r in out.reasons)


def test_single_set_or_stretch_in_main_needs_no_rest(
    catalogue: ExerciseCatalogue, names: dict[str, Any]
) -> None:
    plan = good_plan(names)
    plan["session"]["main"].append({"name": names["main"][4], "sets": 1, "work_s": 60, "rest_s": 0})
    plan["session"]["main"].append({"name": names["cool"], "sets": 2, "work_s": 30, "rest_s": 0})
    out = check(plan, catalogue, REQUEST.model_copy(update={"minutes": 33}))
    assert "ranges" not in keys(out), out.reasons


def test_duplicate_in_block(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = good_plan(names)
    plan["session"]["main"][1]["name"] = names["main"][0].upper()  # same exercise, other spelling
    out = check(plan, catalogue)
    assert keys(out) == {"duplicate"} and "main" in out.reasons[0]
    # The same exercise in two different blocks is allowed.
    plan = good_plan(names)
    plan["session"]["cooldown"][0]["name"] = names["warm"]
    assert check(plan, catalogue).ok


def test_all_reasons_are_collected(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = good_plan(names)
    plan["days_per_week"] = 6
    plan["total_minutes"] = 90
    plan["session"]["main"][0]["name"] = names["barbell"].name
    plan["session"]["main"][1]["name"] = "Nonexistent Move"
    plan["session"]["warmup"][0]["sets"] = 4
    out = check(plan, catalogue)
    assert keys(out) >= {"days_per_week", "declared_minutes", "equipment", "unknown_exercise", "ranges"}


def test_adherence_function(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    plan = parse_plan(json.dumps(good_plan(names)))
    a = adherence(REQUEST, plan, catalogue)
    assert a.ok and a.computed_minutes == pytest.approx(29.0)
    b = adherence(REQUEST.model_copy(update={"minutes": 60}), plan, catalogue)
    assert not b.ok and not b.duration_ok and b.exercises_known and b.equipment_ok


def _frame(rows: Sequence[tuple[str | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_json": [r for r, _ in rows],
            "plan_json": [p for _, p in rows],
            "source": [f"s{i}" for i in range(len(rows))],
            "extra": list(range(len(rows))),
        },
        schema={"request_json": pl.String, "plan_json": pl.String, "source": pl.String, "extra": pl.Int64},
    )


def test_validate_rows_invariant_and_counts(catalogue: ExerciseCatalogue, names: dict[str, Any]) -> None:
    req = REQUEST.model_dump_json()
    good = good_plan(names)
    lower = copy.deepcopy(good)
    lower["session"]["main"][0]["name"] = names["main"][0].lower()
    short = copy.deepcopy(good)
    for ex in short["session"]["main"]:
        ex["sets"] = 2
    multi = copy.deepcopy(good)
    multi["days_per_week"] = 1
    multi["session"]["main"][2]["name"] = "Made Up"
    rows = [
        (req, json.dumps(good, indent=2)),
        (req, json.dumps(lower)),
        (req, "not json"),
        (req, json.dumps({"title": "no"})),
        (req, json.dumps(short)),
        (req, json.dumps(multi)),
        ('{"goal": "flying"}', json.dumps(good)),
        (req, None),
    ]
    accepted, quarantine, counts = validate_rows(_frame(rows), catalogue)
    assert len(rows) == accepted.height + quarantine.height == counts["accepted"] + counts["quarantined"]
    assert counts["rows_in"] == 8 and counts["accepted"] == 2 and counts["quarantined"] == 6
    assert set(counts) == {"rows_in", "accepted", "quarantined", *REASON_KEYS}
    assert counts["json"] == 2 and counts["schema"] == 1 and counts["request"] == 1
    assert counts["duration"] == 1 and counts["days_per_week"] == 1 and counts["unknown_exercise"] == 1

    # Accepted: columns carried, canonical compact plan with the catalogue's exact spelling.
    assert accepted.get_column("extra").to_list() == [0, 1]
    assert accepted.get_column("source").to_list() == ["s0", "s1"]
    plans = accepted.get_column("plan_json").to_list()
    assert plans[0] == plans[1] and "\n" not in plans[0]
    assert json.loads(plans[1])["session"]["main"][0]["name"] == names["main"][0]
    assert accepted.get_column("computed_minutes").to_list() == pytest.approx([29.0, 29.0])

    # Quarantine: original rows, stage and every reason joined.
    q = {r["extra"]: r for r in quarantine.iter_rows(named=True)}
    assert q[2]["stage"] == "json" and q[7]["stage"] == "json" and q[3]["stage"] == "schema"
    assert q[4]["stage"] == "domain" and q[4]["reason"].startswith("duration:")
    assert q[4]["computed_minutes"] == pytest.approx(17.0)
    assert q[5]["reason"].count("; ") == 1 and "Made Up" in q[5]["reason"]
    assert q[6]["stage"] == "request" and "request_json" in q[6]["reason"]
    assert q[2]["plan_json"] == "not json"  # raw text kept, nothing lost


def test_validate_rows_rejects_missing_columns(catalogue: ExerciseCatalogue) -> None:
    with pytest.raises(ValueError, match="plan_json"):
        validate_rows(pl.DataFrame({"request_json": ["{}"]}), catalogue)


def test_validate_rows_empty(catalogue: ExerciseCatalogue) -> None:
    accepted, quarantine, counts = validate_rows(_frame([]), catalogue)
    assert accepted.height == quarantine.height == 0 and counts["rows_in"] == 0
    assert "computed_minutes" in accepted.columns and "reason" in quarantine.columns


def test_shipped_raw_pairs_validate(catalogue: ExerciseCatalogue) -> None:
    """The project's own raw pairs must pass its own rules (else the rules or the data are wrong)."""
    pairs = Path(settings.shipped_raw_dir()) / "pairs.jsonl"
    if not pairs.is_file() or not SHIPPED.is_file():
        pytest.skip("shipped raw pairs not present")
    recs = [json.loads(line) for line in pairs.read_text().splitlines() if line.strip()]
    df = pl.DataFrame(
        {
            "request_json": [json.dumps(r["request"]) for r in recs],
            "plan_json": [json.dumps(r["plan"]) for r in recs],
            "source": ["raw"] * len(recs),
        }
    )
    _, quarantine, counts = validate_rows(df, catalogue)
    assert counts["quarantined"] == 0, quarantine.select("stage", "reason").to_dicts()
