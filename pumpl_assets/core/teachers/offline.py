"""A deterministic, rule-based planner over the exercise catalogue (no network, no key).

Design (so a 135M model can learn to imitate it in minutes):

* **Fixed structure per (goal, minutes).** :func:`plan_scheme` picks, by a
  deterministic search, how many warm-up / main / cool-down exercises a session
  has and their sets, reps or work seconds and rest. Two requests with the same
  goal and length share the exact same numbers; only the chosen exercises and the
  title differ. The scheme is solved so the plan's computed duration
  (:meth:`WorkoutPlanResponse.computed_minutes`, via
  :func:`pumpl_assets.core.schemas.exercise_seconds`) is within ±5% of the
  requested minutes (in practice ≤ 1%), for any length 10..120.
* **Seeded by the request.** Exercise choice uses ``random.Random`` seeded with a
  sha256 of :meth:`RequestSpec.key`, so the same request always yields the same plan.
* **Constraint-respecting.** Only :meth:`ExerciseCatalogue.suitable` exercises
  (level, equipment, limitations); no duplicate within a block (nor across blocks
  while the pool allows); main work rotates through muscle groups for balance.
* **Goal rules.** Warm-up: cardio, light body-weight and stretches, timed.
  Main: strength 4-6 reps with long rest; hypertrophy 8-12 reps; endurance 15-20
  reps with short rest; fat loss timed circuits; mobility timed stretches; general
  fitness mixed strength / plyometric / cardio at 12 reps. Cool-down: stretches, timed.

If a block has no suitable exercise the request gets an error result with the
reason (never an invalid plan).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pumpl_assets.core.exercises import CatalogueExercise, ExerciseCatalogue
from pumpl_assets.core.schemas import (
    MAX_COOLDOWN,
    MAX_MAIN,
    MAX_WARMUP,
    SECONDS_PER_REP,
    TRANSITION_SECONDS,
    Goal,
    RepsExercise,
    RequestSpec,
    TimedExercise,
    WorkoutDay,
    WorkoutPlanResponse,
    dump_plan,
)
from pumpl_assets.core.teachers.base import TeacherResult

OFFLINE_MODEL = "pumpl-offline-planner-v1"
PLANNER_TOLERANCE = 0.05  # the planner's own bound, tighter than validation's


class PlanningError(ValueError):
    """The catalogue cannot serve this request (e.g. no suitable exercise for a block)."""


@dataclass(frozen=True)
class MainScheme:
    sets: int
    rest_s: int
    reps: int | None = None
    work_s: int | None = None

    def seconds(self) -> int:
        work = self.reps * SECONDS_PER_REP if self.reps is not None else int(self.work_s or 0)
        return self.sets * (work + self.rest_s) + TRANSITION_SECONDS


# Preference-ordered: the solver takes the earliest scheme that fits well.
GOAL_SCHEMES: dict[str, tuple[MainScheme, ...]] = {
    "strength": (
        MainScheme(4, 120, reps=5),
        MainScheme(3, 120, reps=5),
        MainScheme(5, 150, reps=5),
        MainScheme(5, 180, reps=4),
        MainScheme(6, 180, reps=4),
        MainScheme(2, 90, reps=6),
    ),
    "hypertrophy": (
        MainScheme(3, 60, reps=10),
        MainScheme(4, 60, reps=10),
        MainScheme(2, 60, reps=10),
        MainScheme(4, 90, reps=12),
        MainScheme(5, 90, reps=12),
        MainScheme(5, 120, reps=12),
    ),
    "endurance": (
        MainScheme(3, 30, reps=15),
        MainScheme(3, 30, reps=20),
        MainScheme(2, 30, reps=15),
        MainScheme(4, 45, reps=20),
        MainScheme(5, 60, reps=20),
        MainScheme(6, 90, reps=20),
    ),
    "fat_loss": (
        MainScheme(3, 20, work_s=40),
        MainScheme(4, 20, work_s=40),
        MainScheme(2, 20, work_s=40),
        MainScheme(5, 30, work_s=60),
        MainScheme(6, 45, work_s=60),
        MainScheme(6, 60, work_s=60),
    ),
    "mobility": (
        MainScheme(2, 15, work_s=45),
        MainScheme(3, 15, work_s=45),
        MainScheme(2, 15, work_s=30),
        MainScheme(3, 20, work_s=60),
        MainScheme(4, 20, work_s=60),
        MainScheme(4, 30, work_s=90),
        MainScheme(5, 30, work_s=120),
        MainScheme(6, 30, work_s=120),
    ),
    "general_fitness": (
        MainScheme(3, 45, reps=12),
        MainScheme(4, 45, reps=12),
        MainScheme(2, 45, reps=12),
        MainScheme(4, 75, reps=12),
        MainScheme(5, 90, reps=12),
        MainScheme(6, 120, reps=12),
    ),
}

WC_IDEAL_WORK_S = 60  # ideal seconds per warm-up / cool-down item
WC_WORK_BOUNDS = (30, 120)


@dataclass(frozen=True)
class PlanScheme:
    """The full numeric structure of a session; exercises are filled in per request."""

    n_warmup: int
    warmup_sets: int
    warmup_work_s: int
    main: MainScheme
    n_main: int
    n_cooldown: int
    cooldown_sets: int
    cooldown_work_s: int

    def seconds(self) -> int:
        wc = self.n_warmup * (self.warmup_sets * self.warmup_work_s + TRANSITION_SECONDS)
        wc += self.n_cooldown * (self.cooldown_sets * self.cooldown_work_s + TRANSITION_SECONDS)
        return wc + self.n_main * self.main.seconds()


def _wc_count(minutes: int) -> int:
    return 1 if minutes <= 20 else 2 if minutes <= 45 else 3


# Learnable layout for the standard session lengths (pumpl_assets.core.layout): a 135M model learns
# "minutes → counts" (5 classes) and "goal → reps/rest" (6 classes) separately; the old
# per-(goal, minutes) search gave ~30 layouts and the fine-tuned model got ~35% of durations right.
from pumpl_assets.core.layout import GOAL_SET, MINUTES_LAYOUT  # noqa: E402


def fixed_scheme(
    goal: str, minutes: int, max_warmup: int, max_main: int, max_cooldown: int
) -> PlanScheme | None:
    """The fixed layout for a standard length, or None (non-standard length or too small a pool)."""
    layout = MINUTES_LAYOUT.get(minutes)
    if layout is None or goal not in GOAL_SET:
        return None
    sets, n_main, n_wc, wc_work = layout
    if n_main > max_main or n_wc > max_warmup or n_wc > max_cooldown:
        return None
    reps, work_s, rest = GOAL_SET[goal]
    main = MainScheme(sets, rest, reps=reps, work_s=work_s)
    scheme = PlanScheme(n_wc, 1, wc_work, main, n_main, n_wc, 1, wc_work)
    if abs(scheme.seconds() - minutes * 60) > PLANNER_TOLERANCE * minutes * 60:
        return None
    return scheme


@functools.lru_cache(maxsize=4096)
def plan_scheme(
    goal: Goal | str,
    minutes: int,
    max_warmup: int = MAX_WARMUP,
    max_main: int = MAX_MAIN,
    max_cooldown: int = MAX_COOLDOWN,
) -> PlanScheme:
    """The deterministic structure for (goal, minutes); ``max_*`` shrink it to small exercise pools.

    Searches (main scheme, main count, warm-up/cool-down sets) and splits the
    remaining time evenly over warm-up and cool-down items in 5 s steps. Cost
    prefers earlier schemes, ≥ 2 main exercises, single-set warm-up/cool-down
    items and items close to 60 s. Raises :class:`PlanningError` if nothing fits
    within ±5% (only for lengths outside 10..120 or degenerate pools).
    """
    if goal not in GOAL_SCHEMES:
        raise PlanningError(f"unknown goal {goal!r}; choose one of {sorted(GOAL_SCHEMES)}")
    if max_warmup < 1 or max_main < 1 or max_cooldown < 1:
        raise PlanningError("every block needs at least one exercise")
    fixed = fixed_scheme(str(goal), minutes, max_warmup, max_main, max_cooldown)
    if fixed is not None:
        return fixed
    target = minutes * 60
    n_w = min(_wc_count(minutes), max_warmup)
    n_c = min(_wc_count(minutes), max_cooldown)
    best: tuple[float, PlanScheme] | None = None
    for idx, main in enumerate(GOAL_SCHEMES[goal]):
        for n_main in range(1, max_main + 1):
            for wc_sets in (1, 2, 3):
                rest = target - n_main * main.seconds() - (n_w + n_c) * TRANSITION_SECONDS
                if rest <= 0:
                    continue
                work = round(rest / ((n_w + n_c) * wc_sets) / 5.0) * 5
                if not WC_WORK_BOUNDS[0] <= work <= WC_WORK_BOUNDS[1]:
                    continue
                scheme = PlanScheme(n_w, wc_sets, work, main, n_main, n_c, wc_sets, work)
                if abs(scheme.seconds() - target) > PLANNER_TOLERANCE * target:
                    continue
                cost = (
                    idx * 25
                    + abs(work - WC_IDEAL_WORK_S)
                    + (60 if n_main == 1 else 0)
                    + (wc_sets - 1) * 150
                    + abs(scheme.seconds() - target) / 10
                )
                if best is None or cost < best[0]:
                    best = (cost, scheme)
    if best is None:
        raise PlanningError(f"no session structure fits {minutes} min for goal {goal!r} within ±5%")
    return best[1]


# ---------------------------------------------------------------------------------------------
# Exercise pools

MAIN_CATEGORIES: dict[str, frozenset[str]] = {
    "strength": frozenset({"strength", "powerlifting", "olympic weightlifting"}),
    "hypertrophy": frozenset({"strength", "powerlifting"}),
    "endurance": frozenset({"strength", "plyometrics"}),
    "fat_loss": frozenset({"plyometrics", "cardio", "strength"}),
    "mobility": frozenset({"stretching"}),
    "general_fitness": frozenset({"strength", "plyometrics", "cardio"}),
}
TIMED_MAIN_GOALS = frozenset({"fat_loss", "mobility"})

# Rotation for balanced main work (rarely trained muscles only as a fallback).
MUSCLE_ROTATION: tuple[str, ...] = (
    "quadriceps",
    "chest",
    "lats",
    "hamstrings",
    "shoulders",
    "middle back",
    "glutes",
    "triceps",
    "biceps",
    "abdominals",
    "calves",
    "lower back",
)

GOAL_TITLES: dict[str, str] = {
    "strength": "Strength",
    "hypertrophy": "Muscle Builder",
    "endurance": "Endurance",
    "fat_loss": "Fat Burn",
    "mobility": "Mobility Flow",
    "general_fitness": "Fitness",
}
TITLE_ADJECTIVES: tuple[str, ...] = (
    "Full-Body",
    "Total-Body",
    "Foundation",
    "Power",
    "Balanced",
    "Classic",
    "Express",
    "Steady",
)


def _seed(request: RequestSpec) -> int:
    return int(hashlib.sha256(request.key().encode("utf-8")).hexdigest()[:16], 16)


def _warmup_pool(suitable: Sequence[CatalogueExercise]) -> list[CatalogueExercise]:
    return [
        e
        for e in suitable
        if e.category == "cardio"
        or (e.category == "stretching" and e.equipment == "body only")
        or (e.category == "strength" and e.equipment == "body only" and e.level == "beginner")
    ]


def _cooldown_pool(suitable: Sequence[CatalogueExercise]) -> list[CatalogueExercise]:
    return [e for e in suitable if e.category == "stretching"]


def _main_pool(goal: str, suitable: Sequence[CatalogueExercise]) -> list[CatalogueExercise]:
    cats = MAIN_CATEGORIES[goal]
    return [e for e in suitable if e.category in cats]


def _pick_distinct(
    pool: Sequence[CatalogueExercise],
    n: int,
    rng: random.Random,
    *,
    avoid: set[str],
    prefer_equipment: set[str],
    prefer_compound: bool,
    balance: bool,
) -> list[CatalogueExercise]:
    """``n`` distinct exercises from ``pool``; skips names in ``avoid`` while alternatives remain."""
    remaining = sorted({e.name: e for e in pool}.values(), key=lambda e: e.name)
    fresh = [e for e in remaining if e.name not in avoid]
    if len(fresh) >= n:
        remaining = fresh
    chosen: list[CatalogueExercise] = []
    muscles_present = [m for m in MUSCLE_ROTATION if any(m in e.primary_muscles for e in remaining)]
    offset = rng.randrange(len(muscles_present)) if muscles_present else 0
    for i in range(n):
        if not remaining:
            break
        cands = remaining
        if balance and muscles_present:
            target = muscles_present[(offset + i) % len(muscles_present)]
            by_muscle = [e for e in remaining if target in e.primary_muscles]
            if by_muscle:
                cands = by_muscle
        if prefer_equipment:
            eq = [e for e in cands if e.equipment in prefer_equipment]
            if eq and rng.random() < 0.8:
                cands = eq
        if prefer_compound:
            comp = [e for e in cands if e.mechanic == "compound"]
            if comp and rng.random() < 0.8:
                cands = comp
        pick = cands[rng.randrange(len(cands))]
        chosen.append(pick)
        remaining = [e for e in remaining if e.name != pick.name]
    return chosen


def _equipment_word(request: RequestSpec) -> str:
    eq = [e for e in request.equipment if e != "body only"]
    if not eq:
        return "Bodyweight"
    if len(eq) >= 3 or "barbell" in eq or "machine" in eq:
        return "Gym"
    if len(eq) == 2:
        return "Hybrid"
    return {
        "dumbbell": "Dumbbell",
        "kettlebells": "Kettlebell",
        "bands": "Band",
        "cable": "Cable",
        "medicine ball": "Med Ball",
        "exercise ball": "Ball",
        "foam roll": "Recovery",
        "e-z curl bar": "EZ-Bar",
    }.get(eq[0], "Home")


def plan_for_request(request: RequestSpec, catalogue: ExerciseCatalogue) -> WorkoutPlanResponse:
    """The offline teacher's plan for one request (deterministic). Raises :class:`PlanningError`."""
    rng = random.Random(_seed(request))
    suitable = catalogue.suitable(request.level, request.equipment, request.limitations)
    warm_pool = _warmup_pool(suitable)
    main_pool = _main_pool(request.goal, suitable)
    cool_pool = _cooldown_pool(suitable)
    where = (
        f"(goal={request.goal}, level={request.level}, equipment={request.equipment}, "
        f"limitations={request.limitations or 'none'})"
    )
    for block, pool in (("warm-up", warm_pool), ("main", main_pool), ("cool-down", cool_pool)):
        if not pool:
            raise PlanningError(f"no suitable {block} exercise in the catalogue for {where}")

    scheme = plan_scheme(
        request.goal,
        request.minutes,
        min(MAX_WARMUP, len({e.name for e in warm_pool})),
        min(MAX_MAIN, len({e.name for e in main_pool})),
        min(MAX_COOLDOWN, len({e.name for e in cool_pool})),
    )
    prefer_eq: set[str] = {e for e in request.equipment if e != "body only"}
    main_ex = _pick_distinct(
        main_pool,
        scheme.n_main,
        rng,
        avoid=set(),
        prefer_equipment=prefer_eq,
        prefer_compound=request.goal in ("strength", "fat_loss"),
        balance=request.goal != "mobility",
    )
    used = {e.name for e in main_ex}
    cardio_first = [e for e in warm_pool if e.category == "cardio"]
    warm_ex: list[CatalogueExercise] = []
    if cardio_first and rng.random() < 0.7:
        warm_ex.append(cardio_first[rng.randrange(len(cardio_first))])
    warm_ex += _pick_distinct(
        [e for e in warm_pool if e not in warm_ex],
        scheme.n_warmup - len(warm_ex),
        rng,
        avoid=used,
        prefer_equipment=set(),
        prefer_compound=False,
        balance=False,
    )
    used |= {e.name for e in warm_ex}
    cool_ex = _pick_distinct(
        cool_pool,
        scheme.n_cooldown,
        rng,
        avoid=used,
        prefer_equipment=set(),
        prefer_compound=False,
        balance=False,
    )
    if len(main_ex) < scheme.n_main or len(warm_ex) < scheme.n_warmup or len(cool_ex) < scheme.n_cooldown:
        raise PlanningError(f"not enough distinct suitable exercises for {where}")  # pragma: no cover

    m = scheme.main
    main_items: list[RepsExercise | TimedExercise] = [
        RepsExercise(name=e.name, sets=m.sets, rest_s=m.rest_s, reps=m.reps)
        if m.reps is not None
        else TimedExercise(name=e.name, sets=m.sets, rest_s=m.rest_s, work_s=int(m.work_s or 0))
        for e in main_ex
    ]
    warm_items: list[RepsExercise | TimedExercise] = [
        TimedExercise(name=e.name, sets=scheme.warmup_sets, rest_s=0, work_s=scheme.warmup_work_s)
        for e in warm_ex
    ]
    cool_items: list[RepsExercise | TimedExercise] = [
        TimedExercise(name=e.name, sets=scheme.cooldown_sets, rest_s=0, work_s=scheme.cooldown_work_s)
        for e in cool_ex
    ]
    title = f"{TITLE_ADJECTIVES[rng.randrange(len(TITLE_ADJECTIVES))]} {_equipment_word(request)} {GOAL_TITLES[request.goal]}"
    plan = WorkoutPlanResponse(
        title=title[:40],
        total_minutes=request.minutes,
        days_per_week=request.days_per_week,
        session=WorkoutDay(warmup=warm_items, main=main_items, cooldown=cool_items),
    )
    err = abs(plan.computed_minutes() - request.minutes) / request.minutes
    if err > PLANNER_TOLERANCE:  # pragma: no cover - guarded by plan_scheme
        raise PlanningError(f"planned {plan.computed_minutes():.1f} min for a {request.minutes} min request")
    return plan


class OfflineTeacher:
    """Teacher protocol over :func:`plan_for_request`; free, instant, deterministic."""

    name = "offline"

    def __init__(self, model: str = OFFLINE_MODEL) -> None:
        self.model = model

    def generate(self, requests: list[RequestSpec], catalogue: ExerciseCatalogue) -> list[TeacherResult]:
        out: list[TeacherResult] = []
        for req in requests:
            try:
                out.append(TeacherResult(req, dump_plan(plan_for_request(req, catalogue)), None))
            except PlanningError as e:
                out.append(TeacherResult(req, None, f"offline planner: {e}"))
        return out
