"""The served post-step (core/finalize.py): it fits length, order and declared figures inside the
standard's ranges, never invents, renames or drops an exercise it does not have to, and fails honestly
when the model's choices cannot reach the requested length."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pumpl_assets.core import settings
from pumpl_assets.core.distill import sample_requests
from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.finalize import finalize_plan
from pumpl_assets.core.schemas import RepsExercise, RequestSpec, TimedExercise, WorkoutPlanResponse, dump_plan
from pumpl_assets.core.standard import COOLDOWN, WARMUP, prescription_for
from pumpl_assets.core.teachers.offline import PlanningError, plan_for_request
from pumpl_assets.core.validate import validate_example

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def catalogue() -> ExerciseCatalogue:
    return ExerciseCatalogue.from_json_file(settings.shipped_raw_dir() / "exercises.json")


@pytest.fixture(scope="module")
def planned(catalogue: ExerciseCatalogue) -> list[tuple[RequestSpec, WorkoutPlanResponse]]:
    out = []
    for req in sample_requests(120, 11):
        try:
            out.append((req, plan_for_request(req, catalogue)))
        except PlanningError:
            continue
    assert len(out) >= 100
    return out


def _checks(req: RequestSpec, plan: WorkoutPlanResponse, catalogue: ExerciseCatalogue) -> dict[str, bool]:
    out = validate_example(req, dump_plan(plan), catalogue)
    assert out.adherence is not None, out.reasons
    return out.adherence.checks


def _names(plan: WorkoutPlanResponse) -> list[Counter[str]]:
    return [Counter(e.name for e in s.all_exercises()) for s in plan.sessions]


def _main_pres(req: RequestSpec, catalogue: ExerciseCatalogue, e: RepsExercise | TimedExercise):  # type: ignore[no-untyped-def]
    cat = catalogue.get(e.name)
    assert cat is not None
    pres = prescription_for(req.goal, req.level, cat.role)
    assert pres is not None
    return pres


def test_a_plan_that_already_fits_keeps_every_exercise_and_number(
    catalogue: ExerciseCatalogue, planned: list[tuple[RequestSpec, WorkoutPlanResponse]]
) -> None:
    for req, plan in planned:
        done = finalize_plan(req, plan, catalogue)
        assert [s.model_dump() for s in done.plan.sessions] == [s.model_dump() for s in plan.sessions] or all(
            "reordered" in a or "main_count" in a for a in done.adjustments
        ), (req.key(), done.adjustments)
        assert all(_checks(req, done.plan, catalogue).values())


def _perturb(
    plan: WorkoutPlanResponse, req: RequestSpec, catalogue: ExerciseCatalogue, rng: random.Random
) -> WorkoutPlanResponse:
    """What a model may write under the served grammar: every number anywhere inside its range, the
    main work shuffled, a wrong main_count and total_minutes inside the band."""
    plan = plan.model_copy(deep=True)
    for s in plan.sessions:
        rng.shuffle(s.main)
        s.main_count = rng.randint(1, 10)
        for e in s.main:
            pres = _main_pres(req, catalogue, e)
            e.sets = rng.randint(*pres.sets)
            if pres.patterns:
                e.work_s, e.rest_s = rng.choice(pres.patterns)  # type: ignore[union-attr]
            else:
                e.rest_s = rng.randint(*pres.rest_s)
        for w in s.warmup:
            assert isinstance(w, TimedExercise)
            w.work_s = rng.randint(*WARMUP.work_s)
        for c in s.cooldown:
            assert isinstance(c, TimedExercise)
            c.sets, c.work_s = rng.randint(*COOLDOWN.sets), rng.randint(*COOLDOWN.work_s)
    return plan


def test_fits_length_order_and_figures_inside_the_standard(
    catalogue: ExerciseCatalogue, planned: list[tuple[RequestSpec, WorkoutPlanResponse]]
) -> None:
    rng = random.Random(5)
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    for req, plan in planned:
        raw = _perturb(plan, req, catalogue, rng)
        done = finalize_plan(req, raw, catalogue)
        b, a = _checks(req, raw, catalogue), _checks(req, done.plan, catalogue)
        before.update(c for c, ok in b.items() if ok)
        after.update(c for c, ok in a.items() if ok)
        # never leaves the standard: what passed before passes after
        for check in ("catalogue", "equipment", "level", "safety", "goal_fidelity", "split", "duplicates"):
            assert a[check] or not b[check], (check, req.key(), done.adjustments)
        assert (a["order"] and a["declared"]) or not a["duration"], (req.key(), done.adjustments)
        # nothing invented or renamed; a dropped exercise is said
        for names_raw, names_done in zip(_names(raw), _names(done.plan), strict=True):
            assert not names_done - names_raw
            assert (names_raw == names_done) or any("dropped" in x for x in done.adjustments)
        # reps (the model's choice of intensity) are never touched
        for s_raw, s_done in zip(raw.sessions, done.plan.sessions, strict=True):
            reps_raw = {e.name: e.reps for e in s_raw.main if isinstance(e, RepsExercise)}
            for e in s_done.main:
                if isinstance(e, RepsExercise):
                    assert e.reps == reps_raw[e.name]
    n = len(planned)
    # The perturbation breaks most plans' length and order; the post-step repairs them.
    assert before["duration"] < 0.6 * n and after["duration"] >= 0.95 * n, (before, after, n)
    assert after["order"] == n and after["declared"] >= after["duration"]
    assert after["blocks"] >= 0.95 * n


def test_too_few_exercises_for_the_length_fails_on_merit(catalogue: ExerciseCatalogue) -> None:
    req = RequestSpec(
        goal="hypertrophy", minutes=90, level="beginner", equipment=["dumbbell"], days_per_week=3
    )
    plan = plan_for_request(req, catalogue)
    s = plan.sessions[0]
    s.main = s.main[:1]
    s.main_count = 1
    done = finalize_plan(req, plan, catalogue)
    checks = _checks(req, done.plan, catalogue)
    assert not checks["duration"] and not checks["declared"]
    assert [e.name for e in done.plan.sessions[0].main] == [s.main[0].name]  # nothing added
    pres = _main_pres(req, catalogue, done.plan.sessions[0].main[0])
    assert done.plan.sessions[0].main[0].sets == pres.sets[1]  # as far as the standard allows


def test_a_session_too_long_even_at_the_minimum_drops_trailing_work(catalogue: ExerciseCatalogue) -> None:
    req = RequestSpec(
        goal="strength", minutes=45, level="intermediate", equipment=["barbell", "dumbbell"], days_per_week=3
    )
    long_req = req.model_copy(update={"minutes": 120})
    plan = plan_for_request(long_req, catalogue)  # a 120-minute session, asked to fit 45
    done = finalize_plan(req, plan, catalogue)
    assert _checks(req, done.plan, catalogue)["duration"], done.adjustments
    assert any("dropped" in a for a in done.adjustments)
    kept = [e.name for e in done.plan.sessions[0].main]
    assert kept == [e.name for e in plan.sessions[0].main][: len(kept)] or any(
        "reordered" in a for a in done.adjustments
    )


def test_finalize_does_not_mutate_its_input(catalogue: ExerciseCatalogue) -> None:
    req = RequestSpec(
        goal="endurance", minutes=30, level="beginner", equipment=["body only"], days_per_week=2
    )
    plan = plan_for_request(req, catalogue)
    plan.sessions[0].main.reverse()
    text = dump_plan(plan)
    finalize_plan(req, plan, catalogue)
    assert dump_plan(plan) == text


def test_evaluation_scores_a_served_answer_before_and_after_the_post_step(
    catalogue: ExerciseCatalogue,
) -> None:
    from pumpl_assets.core.evaluate import mode_metrics, score_served

    req = RequestSpec(
        goal="hypertrophy", minutes=45, level="beginner", equipment=["dumbbell"], days_per_week=3
    )
    plan = plan_for_request(req, catalogue)
    s = plan.sessions[0]
    s.main.reverse()  # small muscles first: the order rule fails
    for e in s.main:  # the least volume and the shortest rests: too short
        e.sets, e.rest_s = _main_pres(req, catalogue, e).sets[0], _main_pres(req, catalogue, e).rest_s[0]
    s.main_count = len(s.main) + 1
    row = score_served(req, req, dump_plan(plan), catalogue)
    assert {"order", "duration", "declared"} <= set(row["decided_failed_checks"])
    assert not row["model_adherent"]  # the model's own answer is what model_adherence judges
    assert row["adherent"] and row["failed_checks"] == [] and row["adjustments"]
    assert validate_example(req, row["plan_text"], catalogue).ok
    m = mode_metrics([{**row, "json_valid": True}])
    assert m["adherence"] == 1.0 and m["model_adherence"] == 0.0
    assert m["decided.order"] == 0.0 and m["order"] == 1.0 and m["finalized"] == 1.0
    # a reply that is no plan is scored as such on both sides
    cut = score_served(req, req, dump_plan(plan)[:100], catalogue)
    assert not cut["schema_valid"] and cut["adjustments"] == [] and cut["plan_text"] == dump_plan(plan)[:100]


def test_a_drop_spares_the_only_exercise_of_a_balance_region(catalogue: ExerciseCatalogue) -> None:
    """The model's last main exercise is its only pull work; the session is too long at every
    shortest prescription, so work goes: other exercises, not the pull while the day needs it to stay
    balanced (balance [ACSM09])."""
    from pumpl_assets.core.standard import regions_of

    req = RequestSpec(
        goal="strength", minutes=45, level="intermediate", equipment=["barbell", "dumbbell"], days_per_week=3
    )
    pres = prescription_for(req.goal, req.level, "primary")
    assert pres is not None and pres.reps is not None
    primary = sorted(
        (e for e in catalogue.suitable(req.level, req.equipment) if e.role == "primary"), key=lambda e: e.name
    )

    def only(region: str) -> list[str]:
        return [e.name for e in primary if regions_of("full_body", e.primary_muscles) == {region}]

    names = [*only("lower body")[:3], *only("push")[:2], only("pull")[0]]
    plan = plan_for_request(req, catalogue)
    plan.sessions[0].main = [
        RepsExercise(name=n, sets=pres.sets[1], reps=pres.reps[0], rest_s=pres.rest_s[1]) for n in names
    ]
    done = finalize_plan(req, plan, catalogue)
    assert any("dropped" in a for a in done.adjustments), done.adjustments
    kept = [e.name for e in done.plan.sessions[0].main]
    assert len(kept) >= 3 and names[-1] in kept, (kept, done.adjustments)
    assert _checks(req, done.plan, catalogue)["balance"], done.adjustments


def test_a_drop_loses_no_more_of_focus_balance_proportion_cooldown_than_any_other(
    catalogue: ExerciseCatalogue, planned: list[tuple[RequestSpec, WorkoutPlanResponse]]
) -> None:
    """Whichever main exercise the last-resort drop picks, removing any other one would not have kept
    more of the checks the session met (focus, balance, proportion, cool-down on the trained muscles);
    scored by the validator itself on the coach's sessions cut to their first 3 or 4 main lifts."""
    from pumpl_assets.core.finalize import _drop_index

    kept_checks = ("focus", "balance", "proportion", "cooldown")
    compared = 0
    for req, plan in planned:
        for si in range(len(plan.sessions)):
            for n in (3, 4):  # the session cut to its first n main lifts: tight, so drops cost something
                tight = plan.model_copy(deep=True)
                del tight.sessions[si].main[n:]
                if len(tight.sessions[si].main) < n:
                    continue
                met = _checks(req, tight, catalogue)
                losses = []
                for i in range(n):
                    cut = tight.model_copy(deep=True)
                    del cut.sessions[si].main[i]
                    checks = _checks(req, cut, catalogue)
                    losses.append(sum(1 for c in kept_checks if met[c] and not checks[c]))
                picked = _drop_index(req, tight.sessions[si], catalogue)
                assert losses[picked] == min(losses), (req, si, n, losses)
                compared += 1
    assert compared >= 100, compared
