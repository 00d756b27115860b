"""The DuckDB data profile over merged examples, and its coverage and diversity gates."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pumpl_assets.core.profile import (
    ProfileError,
    coverage_gate,
    diversity_gate,
    profile_examples,
    render_markdown,
    write_profile,
)
from pumpl_assets.core.schemas import GOALS, LEVELS, RequestSpec, WorkoutPlanResponse, dump_plan

# Enough distinct main exercises that a round-robin keeps every share at or under a fifth.
MAIN_POOL = [f"Main Exercise {i:02d}" for i in range(40)]
WARMUPS = ["Arm Circles", "Hip Circles"]
COOLDOWNS = ["Child's Pose", "Standing Quad Stretch"]


def make_plan(main: list[str], *, split: str = "full_body", days: int = 3, timed_first: bool = False) -> str:
    items: list[dict[str, Any]] = []
    for i, name in enumerate(main):
        if timed_first and i == 0:
            items.append({"name": name, "sets": 3, "work_s": 40, "rest_s": 20})
        else:
            items.append({"name": name, "sets": 3, "reps": 10 + i % 3, "rest_s": 60})
    day = "full_body" if split == "full_body" else "upper"
    session = {
        "day": day,
        "warmup": [{"name": w, "work_s": 45} for w in WARMUPS],
        "main": items,
        "cooldown": [{"name": c, "work_s": 30} for c in COOLDOWNS],
    }
    plan = WorkoutPlanResponse.model_validate(
        {
            "title": "Fixture plan",
            "total_minutes": 30,
            "days_per_week": days,
            "split": split,
            "sessions": [session],
        }
    )
    return dump_plan(plan)


def make_request(goal: str, level: str, minutes: int = 30, limitations: list[str] | None = None) -> str:
    return RequestSpec(
        goal=goal,  # type: ignore[arg-type]
        minutes=minutes,
        level=level,  # type: ignore[arg-type]
        equipment=["dumbbell"],
        days_per_week=3,
        limitations=limitations or [],  # type: ignore[arg-type]
    ).key()


def grid_rows(n_per_cell: int = 2, skip: tuple[str, str] | None = None) -> list[dict[str, str]]:
    """Plans over the whole goal × level grid (minus ``skip``), main exercises round-robin over the pool."""
    rows, pool = [], itertools.cycle(MAIN_POOL)
    minutes = itertools.cycle([15, 30, 45, 90])
    for goal, level in itertools.product(GOALS, LEVELS):
        if (goal, level) == skip:
            continue
        for k in range(n_per_cell):
            main = [next(pool) for _ in range(4)]
            lims = ["knees", "wrists"] if k == 1 else []
            rows.append(
                {
                    "example_id": f"{goal}-{level}-{k}",
                    "source": "distilled" if k else "raw",
                    "request_json": make_request(goal, level, next(minutes), lims),
                    "plan_json": make_plan(main, timed_first=goal == "endurance"),
                }
            )
    return rows


def write_merged(rows: list[dict[str, str]], tmp_path: Path) -> Path:
    path = tmp_path / "merged.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


@pytest.mark.unit
def test_profile_tables_on_a_varied_set(tmp_path: Path) -> None:
    rows = grid_rows()
    prof = profile_examples(write_merged(rows, tmp_path))
    assert prof.n_plans == len(rows) == 36
    assert prof.by_source == {"distilled": 18, "raw": 18}
    # Coverage: the grid is full, and a plan with two limitations counts in both limitation cells.
    assert prof.grid.height == 18 and prof.grid_fraction == 1.0 and prof.empty_cells == []
    assert set(prof.coverage.columns) == {"goal", "level", "length", "equipment", "limitation", "plans"}
    assert prof.coverage["plans"].sum() == 18 + 18 * 2
    assert set(prof.coverage["limitation"]) == {"none", "knees", "wrists"}
    assert set(prof.coverage["length"]) == {"<=20", "21-40", "41-60", ">60"}
    assert set(prof.coverage["equipment"]) == {"body only + dumbbell"}
    assert prof.marginals["limitation"] == {"knees": 18, "none": 18, "wrists": 18}
    # Prescriptions: endurance plans lead with a timed item, the others are all reps.
    pres = {r["goal"]: r for r in prof.prescriptions.iter_rows(named=True)}
    assert set(pres) == set(GOALS)
    assert pres["endurance"]["share_timed"] == pytest.approx(0.25)
    assert pres["strength"]["share_timed"] == 0.0 and pres["strength"]["work_s_p50"] is None
    assert pres["strength"]["sets_p50"] == 3 and pres["strength"]["rest_s_p50"] == 60
    assert 10 <= pres["strength"]["reps_p10"] <= pres["strength"]["reps_p90"] <= 12
    assert pres["endurance"]["work_s_p50"] == 40
    # Frequency: main and warm-up/cool-down are separate; warm-ups are in every plan.
    freq = prof.exercise_frequency
    wc = freq.filter(pl.col("block") == "warmup_cooldown")
    assert set(wc["name"]) == set(WARMUPS + COOLDOWNS) and set(wc["share"]) == {1.0}
    main = freq.filter(pl.col("block") == "main")
    assert set(main["name"]) == set(MAIN_POOL) and main["share"].max() <= 0.2  # type: ignore[operator]
    assert prof.splits.to_dicts() == [{"split": "full_body", "days_per_week": 3, "plans": 36}]
    md = render_markdown(prof)
    assert "| strength | 2 | 2 | 2 |" in md["goal_level_grid"]
    assert "Main Exercise" in md["top_main_exercises"]


@pytest.mark.unit
def test_gates_pass_on_a_varied_full_grid(tmp_path: Path) -> None:
    prof = profile_examples(write_merged(grid_rows(), tmp_path))
    cov, div = coverage_gate(prof), diversity_gate(prof)
    assert cov.passed, cov.description
    assert cov.description.startswith("18/18")
    assert div.passed, div.description
    assert div.metadata["offenders"] == {}
    # Warm-ups in 100% of plans are reported, never gated.
    assert div.metadata["max_warmup_cooldown_share"] == 1.0
    assert "not gated" in div.description


@pytest.mark.unit
def test_coverage_gate_fails_and_names_the_empty_cell(tmp_path: Path) -> None:
    prof = profile_examples(write_merged(grid_rows(skip=("mobility", "expert")), tmp_path))
    assert prof.grid_fraction == pytest.approx(17 / 18)
    gate = coverage_gate(prof)
    assert not gate.passed
    assert "empty: mobility × expert" in gate.description
    assert gate.metadata["empty_cells"] == 1


@pytest.mark.unit
def test_diversity_gate_fails_on_an_exercise_in_30_percent_of_plans(tmp_path: Path) -> None:
    rows = grid_rows()
    overused = "Push-Up"
    # 11 of 36 plans (30.6%) put the same exercise in the main block; the name is written with a
    # different case in one plan, which still folds to one exercise.
    for i, r in enumerate(rows[:11]):
        plan = json.loads(r["plan_json"])
        plan["sessions"][0]["main"][0]["name"] = overused if i else "push-up"
        r["plan_json"] = json.dumps(plan)
    prof = profile_examples(write_merged(rows, tmp_path))
    gate = diversity_gate(prof)
    assert not gate.passed
    share = gate.metadata["offenders"]
    assert list(share) == [overused] and share[overused] == pytest.approx(11 / 36, abs=1e-4)
    assert "Push-Up 30.6%" in gate.description
    # The same data passes a looser threshold: the gate is arithmetic over the profile, nothing else.
    assert diversity_gate(prof, max_share=0.35).passed


@pytest.mark.unit
def test_profile_errors_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        profile_examples(tmp_path / "nope.parquet")
    rows = grid_rows(n_per_cell=1)
    path = tmp_path / "merged.parquet"
    pl.DataFrame(rows).drop("plan_json").write_parquet(path)
    with pytest.raises(ProfileError, match=r"missing column\(s\) \['plan_json'\]"):
        profile_examples(path)
    v1 = [{**rows[0], "plan_json": json.dumps({"title": "old", "session": {"main": []}})}]
    with pytest.raises(ProfileError, match="no 'sessions' array"):
        profile_examples(write_merged(v1, tmp_path))
    bad = [{**rows[0], "plan_json": "{not json"}]
    with pytest.raises(ProfileError, match="not valid JSON"):
        profile_examples(write_merged(bad, tmp_path))


@pytest.mark.unit
def test_empty_merged_file_fails_both_gates(tmp_path: Path) -> None:
    path = tmp_path / "merged.parquet"
    pl.DataFrame(
        schema={"example_id": pl.String, "request_json": pl.String, "plan_json": pl.String}
    ).write_parquet(path)
    prof = profile_examples(path)
    assert prof.n_plans == 0
    assert not coverage_gate(prof).passed
    assert not diversity_gate(prof).passed


@pytest.mark.unit
def test_write_profile_writes_tables_and_summary(tmp_path: Path) -> None:
    prof = profile_examples(write_merged(grid_rows(), tmp_path))
    out = tmp_path / "out"
    paths = write_profile(prof, out)
    assert {p.name for p in out.iterdir()} == {
        "coverage.parquet",
        "goal_level_grid.parquet",
        "prescriptions.parquet",
        "exercise_frequency.parquet",
        "split_days.parquet",
        "profile.md",
        "profile.json",
    }
    summary = json.loads(paths["summary"].read_text())
    assert summary["n_plans"] == 36 and summary["goal_level_grid_fraction"] == 1.0
    assert summary["goal_level_grid"]["strength/beginner"] == 2
    assert summary["top_warmup_cooldown_shares"]["Arm Circles"] == 1.0
    assert pl.read_parquet(paths["coverage"]).equals(prof.coverage)
    assert "# Data profile" in paths["markdown"].read_text()


# ------------------------------------------------------------------------------ the Dagster asset


def _seed_merged(rows: list[dict[str, str]]) -> None:
    from pumpl_assets.core import settings
    from tests.pipeline_helpers import PARTITION

    d = settings.artifacts_dir(PARTITION, "merged")
    d.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(d / "merged.parquet")


@pytest.mark.integration
def test_data_profile_asset_passes_its_gates_and_writes_its_tables(pumpl_env: Path) -> None:
    from pumpl_assets.core import settings
    from tests.pipeline_helpers import PARTITION, check_outcomes, materialized, run

    _seed_merged(grid_rows())
    result, _ = run(["data_profile"])
    assert result.success
    assert materialized(result) == {"data_profile"}
    assert check_outcomes(result) == {"data_profile:coverage": True, "data_profile:diversity": True}
    out = settings.artifacts_dir(PARTITION, "data_profile")
    assert {"profile.json", "coverage.parquet", "exercise_frequency.parquet", "gates.json"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "gates.json").read_text()) == {"coverage": True, "diversity": True}
    event = result.get_asset_materialization_events()[0].materialization
    md = event.metadata
    assert md["plans"].value == 36
    assert "| strength | 2 | 2 | 2 |" in str(md["goal_level_grid"].value)
    assert "top_main_exercises" in md and "prescriptions" in md


@pytest.mark.integration
def test_failing_diversity_gate_blocks_split(pumpl_env: Path) -> None:
    from tests.pipeline_helpers import check_outcomes, materialized, run

    rows = grid_rows()
    for r in rows[:12]:  # one exercise in a third of the plans' main blocks
        plan = json.loads(r["plan_json"])
        plan["sessions"][0]["main"][0]["name"] = "Push-Up"
        r["plan_json"] = json.dumps(plan)
    _seed_merged(rows)
    result, _ = run(["data_profile", "split"])
    assert not result.success
    checks = check_outcomes(result)
    assert checks["data_profile:diversity"] is False and checks["data_profile:coverage"] is True
    # The profile is recorded (so its tables can be inspected) but split never ran.
    assert materialized(result) == {"data_profile"}


@pytest.mark.integration
def test_data_profile_fails_clearly_without_a_v2_merged_file(pumpl_env: Path) -> None:
    from tests.pipeline_helpers import materialized, run

    _seed_merged([{"example_id": "a", "request_json": "{}"}])
    result, _ = run(["data_profile"])
    assert not result.success and materialized(result) == set()
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures and "missing column(s) ['plan_json']" in str(failures[0].event_specific_data)


@pytest.mark.unit
def test_an_exercise_in_several_sessions_of_one_plan_counts_once(tmp_path: Path) -> None:
    """Shares are per plan: an upper/lower week with the same exercise in both sessions is one plan."""
    rows = grid_rows()
    plan = json.loads(rows[0]["plan_json"])
    upper = {**plan["sessions"][0], "day": "upper"}
    lower = {**plan["sessions"][0], "day": "lower"}
    two = WorkoutPlanResponse.model_validate(
        {**plan, "split": "upper_lower", "days_per_week": 4, "sessions": [upper, lower]}
    )
    rows[0]["plan_json"] = dump_plan(two)
    prof = profile_examples(write_merged(rows, tmp_path))
    name = plan["sessions"][0]["main"][0]["name"]
    freq = prof.exercise_frequency.filter((pl.col("block") == "main") & (pl.col("name") == name))
    assert freq["plans"].item() == 4  # the round-robin put it in 4 plans; the second session adds none
    assert {"split": "upper_lower", "days_per_week": 4, "plans": 1} in prof.splits.to_dicts()
    # Prescriptions count items, so the doubled session does add main items.
    assert prof.prescriptions["items"].sum() == 36 * 4 + 4
