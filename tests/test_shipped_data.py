"""The project's own shipped raw data: ingests cleanly and every shipped pair obeys the domain rules."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import polars as pl
import pytest

from pumpl_assets.core import settings
from pumpl_assets.core.exercises import ExerciseCatalogue, normalize_name
from pumpl_assets.core.ingest import IngestResult, discover_raw_files, ingest_raw
from pumpl_assets.core.schemas import (
    DURATION_TOLERANCE,
    EQUIPMENT,
    LEVELS,
    LIMITATIONS,
    MAX_MAIN,
    MINUTES_CHOICES,
    RequestSpec,
    TimedExercise,
    WorkoutPlanResponse,
    exercise_seconds,
)
from pumpl_assets.core.standard import SPLIT_DAYS, fits_day, prescription_for, split_for

SHIPPED = settings.shipped_raw_dir()
REQUIRED_EQUIPMENT = (
    "body only",
    "dumbbell",
    "kettlebells",
    "bands",
    "barbell",
    "cable",
    "machine",
    "medicine ball",
)


@pytest.fixture(scope="module")
def shipped() -> IngestResult:
    return ingest_raw(discover_raw_files([SHIPPED]))


@pytest.fixture(scope="module")
def catalogue(shipped: IngestResult) -> ExerciseCatalogue:
    return ExerciseCatalogue.from_frame(shipped.exercises)


@pytest.fixture(scope="module")
def pairs(shipped: IngestResult) -> list[tuple[RequestSpec, WorkoutPlanResponse, str]]:
    out = []
    for row in shipped.pairs.iter_rows(named=True):
        out.append(
            (
                RequestSpec.model_validate_json(row["request_json"]),
                WorkoutPlanResponse.model_validate_json(row["plan_json"]),
                row["row_ref"],
            )
        )
    return out


@pytest.mark.unit
def test_shipped_files_ingest_with_nothing_quarantined(shipped: IngestResult) -> None:
    names = sorted(Path(p).name for p in shipped.files["source_file"])
    assert names == ["exercises.json", "exercises_extra.csv", "pairs.jsonl"]
    assert shipped.quarantine.height == 0, shipped.quarantine.to_dicts()
    by_name = {Path(r["source_file"]).name: r for r in shipped.files.iter_rows(named=True)}
    assert by_name["exercises.json"]["format"] == "json"
    assert by_name["exercises_extra.csv"]["format"] == "csv"
    assert 250 <= by_name["exercises.json"]["accepted"] <= 300
    assert 8 <= by_name["exercises_extra.csv"]["accepted"] <= 15
    assert 10 <= by_name["pairs.jsonl"]["accepted"] <= 20
    assert (
        shipped.exercises.height
        == by_name["exercises.json"]["accepted"] + by_name["exercises_extra.csv"]["accepted"]
    )


@pytest.mark.unit
def test_shipped_exercise_json_is_free_exercise_db_format() -> None:
    rows = json.loads((SHIPPED / "exercises.json").read_text(encoding="utf-8"))
    for r in rows:
        assert {"name", "level", "equipment", "category", "primaryMuscles", "instructions"} <= set(r), r
        assert r["instructions"] and all(isinstance(s, str) and s for s in r["instructions"])
        assert 2 <= len(r["name"]) <= 80  # must fit WorkoutPlanResponse's exercise name


@pytest.mark.unit
def test_catalogue_covers_levels_equipment_and_categories(shipped: IngestResult) -> None:
    df = shipped.exercises
    assert set(df["level"]) == set(LEVELS)
    assert set(REQUIRED_EQUIPMENT) <= set(df["equipment"])
    assert set(df["equipment"]) <= set(EQUIPMENT)
    for eq in REQUIRED_EQUIPMENT:
        assert df.filter(pl.col("equipment") == eq).height >= 3, eq
    cats = df["category"].value_counts()
    counts = dict(zip(cats["category"], cats["count"], strict=True))
    assert counts["stretching"] >= 10 and counts["cardio"] >= 5 and counts["strength"] >= 50


MAIN_CATEGORIES = ("strength", "powerlifting", "plyometrics")
MAJOR_MUSCLES = (
    "abdominals",
    "adductors",
    "biceps",
    "calves",
    "chest",
    "glutes",
    "hamstrings",
    "lats",
    "lower back",
    "middle back",
    "quadriceps",
    "shoulders",
    "triceps",
)


@pytest.mark.unit
def test_catalogue_is_rich_enough_for_varied_plans(shipped: IngestResult) -> None:
    """Enough beginner main lifts per piece of equipment, warm-up drills and a static stretch per muscle."""
    df = shipped.exercises
    beginner_main = df.filter((pl.col("level") == "beginner") & pl.col("category").is_in(MAIN_CATEGORIES))
    minimum = {"body only": 30, "dumbbell": 15, "bands": 15, "kettlebells": 6, "cable": 10, "machine": 10}
    for eq, n in minimum.items():
        got = beginner_main.filter(pl.col("equipment") == eq).height
        assert got >= n, (eq, got)
    for eq in ("body only", "dumbbell", "kettlebells", "bands", "barbell", "cable", "machine"):
        muscles = set(
            df.filter((pl.col("equipment") == eq) & pl.col("category").is_in(MAIN_CATEGORIES)).explode(
                "primary_muscles"
            )["primary_muscles"]
        )
        assert {"quadriceps", "glutes", "hamstrings"} & muscles and {"chest", "shoulders"} & muscles, eq
    static = df.filter((pl.col("category") == "stretching") & (pl.col("force") == "static"))
    assert set(MAJOR_MUSCLES) <= set(static.explode("primary_muscles")["primary_muscles"])
    drills = df.filter(
        (pl.col("equipment") == "body only")
        & (pl.col("level") == "beginner")
        & (
            ((pl.col("category") == "stretching") & pl.col("force").is_null())
            | (pl.col("category") == "cardio")
        )
    )
    assert drills.height >= 20


@pytest.mark.unit
def test_every_request_kind_can_be_planned(catalogue: ExerciseCatalogue) -> None:
    """Even the hardest request (beginner, body only, every limitation) has enough suitable exercises."""
    for level, n_lim in itertools.product(LEVELS, range(len(LIMITATIONS) + 1)):
        for lims in itertools.combinations(LIMITATIONS, n_lim):
            fits = catalogue.suitable(level, ["body only"], lims)
            warm = [e for e in fits if e.category in ("cardio", "stretching")]
            cool = [e for e in fits if e.category == "stretching"]
            main = [e for e in fits if e.category in ("strength", "plyometrics", "powerlifting")]
            assert len(warm) >= 3, (level, lims)
            assert len(cool) >= 3, (level, lims)
            assert len(main) >= MAX_MAIN, (level, lims, [e.name for e in main])


def domain_problems(req: RequestSpec, plan: WorkoutPlanResponse, cat: ExerciseCatalogue) -> list[str]:
    """An independent re-statement of the standard's rules (not validate.py), per session."""
    problems = []
    if req.minutes not in MINUTES_CHOICES:
        problems.append(f"minutes {req.minutes} not in {MINUTES_CHOICES}")
    for i, got in enumerate(plan.session_minutes()):
        if abs(got - req.minutes) > DURATION_TOLERANCE * req.minutes:
            problems.append(f"session {i + 1} computed {got:.1f} min vs requested {req.minutes}")
    if plan.total_minutes != req.minutes:
        problems.append(f"declared {plan.total_minutes} min vs requested {req.minutes}")
    if plan.days_per_week != req.days_per_week:
        problems.append("days_per_week differs from the request")
    split = split_for(req.goal, req.days_per_week)
    if plan.split != split or [s.day for s in plan.sessions] != list(SPLIT_DAYS[split]):
        problems.append(f"split {plan.split} {[s.day for s in plan.sessions]}; the standard says {split}")
    for session in plan.sessions:
        names = [normalize_name(e.name) for e in session.all_exercises()]
        if len(set(names)) != len(names):
            problems.append(f"duplicate exercise in the {session.day} session")
        for block, exs in session.blocks().items():
            for e in exs:
                ce = cat.get(e.name)
                if ce is None:
                    problems.append(f"unknown exercise {e.name!r}")
                    continue
                if ce.name != e.name:
                    problems.append(f"{e.name!r} is not the exact catalogue spelling {ce.name!r}")
                if not ce.suits(req.level, req.equipment, req.limitations):
                    problems.append(f"{e.name!r} does not suit the request")
                if exercise_seconds(e) <= 0:
                    problems.append(f"{e.name!r}: no duration")
                if block == "warmup":
                    if not (ce.warmup_ok and isinstance(e, TimedExercise) and e.sets == 1):
                        problems.append(f"{e.name!r} is not a timed warm-up drill or easy cardio")
                    continue
                if block == "cooldown":
                    if not (ce.cooldown_ok and isinstance(e, TimedExercise)):
                        problems.append(f"{e.name!r} is not a timed static stretch")
                    continue
                pres = prescription_for(req.goal, req.level, ce.role)
                if pres is None:
                    problems.append(f"{e.name!r}: {ce.role} work is not part of a {req.goal} session")
                    continue
                reps = None if isinstance(e, TimedExercise) else e.reps
                work = e.work_s if isinstance(e, TimedExercise) else None
                if pres.timed != isinstance(e, TimedExercise) or not pres.admits(
                    e.sets, e.rest_s, reps, work
                ):
                    problems.append(
                        f"{e.name!r}: outside the {req.level} {req.goal} standard ({pres.describe()})"
                    )
                if not fits_day(session.day, ce.primary_muscles, ce.force):
                    problems.append(f"{e.name!r} does not belong on a {session.day} day")
    return problems


@pytest.mark.unit
def test_every_shipped_pair_obeys_the_domain_rules(
    pairs: list[tuple[RequestSpec, WorkoutPlanResponse, str]], catalogue: ExerciseCatalogue
) -> None:
    assert len(pairs) >= 10
    failures = {ref: p for req, plan, ref in pairs if (p := domain_problems(req, plan, catalogue))}
    assert failures == {}


@pytest.mark.unit
def test_domain_rule_check_catches_a_bad_plan(
    pairs: list[tuple[RequestSpec, WorkoutPlanResponse, str]], catalogue: ExerciseCatalogue
) -> None:
    """The check above can fail: a stretched, mis-equipped copy of a shipped plan is rejected."""
    req, plan, _ = pairs[0]
    assert req.equipment == ["body only"] and req.goal == "strength"
    bad = plan.model_copy(deep=True)
    main = bad.sessions[0].main
    main[0].sets = 8
    main.append(main[0].model_copy(update={"name": "Barbell Back Squat"}))
    main.append(main[0].model_copy(update={"name": "Moon Walk"}))
    bad.sessions[0].warmup[0].name = "Burpee"
    bad.days_per_week = 4
    problems = " | ".join(domain_problems(req, bad, catalogue))
    assert "session 1 computed" in problems
    assert "'Barbell Back Squat' does not suit" in problems
    assert "unknown exercise 'Moon Walk'" in problems
    assert "outside the beginner strength standard" in problems  # 8 sets
    assert "'Burpee' is not a timed warm-up drill" in problems
    assert "days_per_week differs" in problems
    assert "split full_body" not in problems  # the split follows the request, not the plan's days


@pytest.mark.unit
def test_shipped_pairs_are_varied(pairs: list[tuple[RequestSpec, WorkoutPlanResponse, str]]) -> None:
    reqs = [r for r, _, _ in pairs]
    assert len({r.key() for r in reqs}) == len(reqs)
    assert len({r.goal for r in reqs}) == 6
    assert {r.minutes for r in reqs} <= set(MINUTES_CHOICES) and len({r.minutes for r in reqs}) >= 5
    assert {p.split for _, p, _ in pairs} == {"full_body", "upper_lower", "push_pull_legs"}
    assert {r.level for r in reqs} == set(LEVELS)
    assert any(r.limitations for r in reqs)
    assert set(REQUIRED_EQUIPMENT) <= {e for r in reqs for e in r.equipment}


@pytest.mark.unit
def test_shipped_plans_are_compact(shipped: IngestResult) -> None:
    for text in shipped.pairs["plan_json"]:
        plan = json.loads(text)
        assert "session" not in plan and plan["sessions"]
        for session in plan["sessions"]:
            assert set(session) == {"day", "warmup", "main", "cooldown"}
            for block in ("warmup", "main", "cooldown"):
                for e in session[block]:
                    assert not {"equipment", "muscles", "notes"} & set(e), e


@pytest.mark.unit
def test_shipped_pairs_pass_the_validate_module(
    pairs: list[tuple[RequestSpec, WorkoutPlanResponse, str]],
    catalogue: ExerciseCatalogue,
    shipped: IngestResult,
) -> None:
    validate = pytest.importorskip("pumpl_assets.core.validate")
    plan_texts = dict(zip(shipped.pairs["row_ref"], shipped.pairs["plan_json"], strict=True))
    for req, _, ref in pairs:
        outcome = validate.validate_example(req, plan_texts[ref], catalogue)
        assert outcome.ok, (ref, outcome.stage, outcome.reasons)
        assert outcome.stage == "ok"
