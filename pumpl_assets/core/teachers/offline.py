"""A deterministic, rule-based coach over the exercise catalogue (no network, no key).

It writes plans to the coaching standard (:mod:`pumpl_assets.core.standard`), the same standard the
Claude teacher is prompted with and validation scores against:

* **Split by days/week**: full body for 1-3 days (and for fat-loss circuits and mobility work),
  upper/lower for 4, push/pull/legs for 5-7 — one distinct session per day of the split.
* **Prescriptions by goal × level × role**, drawn per plan from the standard's ranges in round
  numbers (e.g. an intermediate strength plan might use 4×5 with 180 s rest on the main lifts and
  3×8 with 90 s on assistance work), so plans vary while every number stays inside the standard.
* **Session length decides how much main work fits**: warm-up and cool-down are sized to the session,
  main exercises are added in the standard's order (multi-joint first, large muscles before small,
  holds last) while they fit, then sets, rests and warm-up length are adjusted so the computed length
  lands within ±5% of the request. Realistic rests come first: a long-rest strength session simply
  holds fewer exercises. A draw that cannot land the length is redrawn (another set/rest scheme and
  exercise choice), up to ``PLAN_ATTEMPTS`` times.
* **Safe and suitable**: only :meth:`ExerciseCatalogue.suitable` exercises (level, equipment,
  movement-pattern contraindications); warm-ups are light dynamic drills and easy cardio, cool-downs
  static stretches of the muscles just trained; a requested focus gets ≥ 40% of the main work of
  every session that can train it; no region of a resistance day holds more than twice the exercises
  of another it trains (:func:`standard.proportion_allows`); no exercise twice in a session; variety
  across sessions.
* **Seeded by the request** (sha256 of :meth:`RequestSpec.key`): the same request, the same plan.

If the catalogue cannot serve a request to the standard (e.g. no stretch for a cool-down, or a
session length the standard cannot fill), :class:`PlanningError` says why and the request is
quarantined by distillation, never answered with a plan that breaks the standard.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pumpl_assets.core.exercises import CatalogueExercise, ExerciseCatalogue
from pumpl_assets.core.schemas import (
    MAX_COOLDOWN,
    MAX_MAIN,
    MAX_WARMUP,
    TRANSITION_SECONDS,
    RepsExercise,
    RequestSpec,
    TimedExercise,
    WorkoutDay,
    WorkoutPlanResponse,
    dump_plan,
)
from pumpl_assets.core.standard import (
    FOCUS_MUSCLES,
    RESISTANCE_GOALS,
    SPLIT_DAYS,
    WARMUP,
    Prescription,
    fits_day,
    focus_needed,
    focus_possible,
    order_rank,
    prescription_for,
    proportion_allows,
    proportion_applies,
    region_counts,
    regions_of,
    split_for,
    warmup_minutes,
)
from pumpl_assets.core.teachers.base import TeacherResult

OFFLINE_MODEL = (
    "pumpl-offline-coach-v4"  # v4: redraws a plan that misses the length; v3: proportion, stretches
)
PLANNER_TOLERANCE = 0.08  # the planner's own bound, tighter than validation's ±10%
# Fresh draws before the coach gives up (6,000 sampled requests: 97% land on the first, all but one
# of the plannable ones within 45).
PLAN_ATTEMPTS = 40

NICE_REPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25)
NICE_REST = (10, 15, 20, 30, 45, 60, 75, 90, 120, 150, 180, 240, 300)
NICE_WORK = (15, 20, 25, 30, 40, 45, 60)


class PlanningError(ValueError):
    """The catalogue cannot serve this request to the standard (the message says why)."""


@dataclass(frozen=True)
class Dose:
    """One concrete prescription: sets × (reps | work seconds), rest between sets."""

    sets: int
    rest_s: int
    reps: int | None = None
    work_s: int | None = None

    def seconds(self) -> int:
        work = self.reps * 3 if self.reps is not None else int(self.work_s or 0)
        return self.sets * (work + self.rest_s) + TRANSITION_SECONDS


def _nice(values: Sequence[int], lo: int, hi: int) -> list[int]:
    inside = [v for v in values if lo <= v <= hi]
    return inside or [lo, hi]


def _draw_dose(p: Prescription, rng: random.Random) -> Dose:
    sets = rng.randint(p.sets[0], p.sets[1])
    if p.patterns:
        work, rest = p.patterns[rng.randrange(len(p.patterns))]
        return Dose(sets, rest, work_s=work)
    rest = rng.choice(_nice(NICE_REST, *p.rest_s))
    if p.reps is not None:
        return Dose(sets, rest, reps=rng.choice(_nice(NICE_REPS, *p.reps)))
    assert p.work_s is not None
    return Dose(sets, rest, work_s=rng.choice(_nice(NICE_WORK, *p.work_s)))


def _seed(request: RequestSpec) -> int:
    return int(hashlib.sha256(request.key().encode("utf-8")).hexdigest()[:16], 16)


# --------------------------------------------------------------------------------------------- picking


def _pick(
    pool: Sequence[CatalogueExercise],
    rng: random.Random,
    *,
    exclude: set[str],
    avoid: set[str],
    prefer: set[str] | None = None,
    prefer_level: str | None = None,
    muscle: str | None = None,
) -> CatalogueExercise | None:
    """One exercise from ``pool``: never in ``exclude``; avoids ``avoid`` (used elsewhere this week)
    while alternatives remain; then prefers the target muscle, preferred equipment and the level."""
    cands = sorted((e for e in pool if e.name not in exclude), key=lambda e: e.name)
    if not cands:
        return None
    for keep in (
        lambda e: e.name not in avoid,
        lambda e: muscle is None or muscle in e.primary_muscles,
        lambda e: not prefer or e.equipment in prefer,
        lambda e: prefer_level is None or e.level == prefer_level,
    ):
        narrowed = [e for e in cands if keep(e)]
        # Soft preferences (80%): plans still mix in other kit, levels and muscles.
        if narrowed and rng.random() < 0.8:
            cands = narrowed
    return cands[rng.randrange(len(cands))]


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


def _roles_for(goal: str, level: str) -> dict[str, Prescription]:
    roles = {
        r: p for r in ("primary", "assistance", "hold", "conditioning", "stretch", "drill")
        if (p := prescription_for(goal, level, r)) is not None
    }  # fmt: skip
    if not roles:
        raise PlanningError(f"the coaching standard has no prescription for goal={goal!r} level={level!r}")
    return roles


def _role_sequence(goal: str, rng: random.Random) -> list[str]:
    """The order roles are filled in (the standard's order: multi-joint first, holds last)."""
    if goal in RESISTANCE_GOALS:
        seq = ["primary", "primary", "assistance", "primary", "assistance", "assistance", "primary", "assistance",
               "assistance", "primary"]  # fmt: skip
        return [*seq[:-1], "hold"] if rng.random() < 0.5 else seq
    if goal == "fat_loss":
        return ["primary", "conditioning", "primary", "conditioning", "assistance", "conditioning", "hold", "primary",
                "conditioning", "assistance"]  # fmt: skip
    return [
        "drill",
        "stretch",
        "stretch",
        "drill",
        "stretch",
        "stretch",
        "drill",
        "stretch",
        "stretch",
        "drill",
    ]


@dataclass
class _Item:
    ex: CatalogueExercise
    dose: Dose
    role: str


def _item_model(item: _Item) -> RepsExercise | TimedExercise:
    d = item.dose
    if d.reps is not None:
        return RepsExercise(name=item.ex.name, sets=d.sets, rest_s=d.rest_s, reps=d.reps)
    return TimedExercise(name=item.ex.name, sets=d.sets, rest_s=d.rest_s, work_s=int(d.work_s or 0))


def _edge_items(
    pool: Sequence[CatalogueExercise],
    n: int,
    rng: random.Random,
    *,
    exclude: set[str],
    prefer_muscles: Sequence[str] = (),
    first_cardio: bool = False,
) -> list[CatalogueExercise]:
    out: list[CatalogueExercise] = []
    taken = set(exclude)
    cardio = [e for e in pool if e.category == "cardio" and e.name not in taken]
    if first_cardio and cardio:
        out.append(cardio[rng.randrange(len(cardio))])
        taken.add(out[-1].name)
    # Cool-down: stretch the muscles just trained ([ACSM-FLEX]); the target muscle rotates for variety,
    # other stretches only when none for a trained muscle is left.
    on_target = [e for e in pool if set(e.primary_muscles) & set(prefer_muscles)]
    for i in range(n - len(out)):
        target = prefer_muscles[i % len(prefer_muscles)] if prefer_muscles else None
        left = [e for e in on_target if e.name not in taken]
        pick = _pick(left or pool, rng, exclude=taken, avoid=set(), muscle=target)
        if pick is None:
            break
        out.append(pick)
        taken.add(pick.name)
    return out


def _session(
    request: RequestSpec,
    day: str,
    suitable: Sequence[CatalogueExercise],
    doses: dict[str, Dose],
    rng: random.Random,
    used_main: set[str],
) -> WorkoutDay:
    target = request.minutes * 60
    where = f"{day} session (goal={request.goal}, level={request.level}, equipment={request.equipment}, limitations={request.limitations or 'none'})"
    warm_pool = [e for e in suitable if e.warmup_ok]
    cool_pool = [e for e in suitable if e.cooldown_ok]
    main_pool = [e for e in suitable if e.role in doses and fits_day(day, e.primary_muscles, e.force)]
    for block, pool in (("warm-up", warm_pool), ("main", main_pool), ("cool-down", cool_pool)):
        if not pool:
            raise PlanningError(f"no suitable {block} exercise in the catalogue for the {where}")

    # Warm-up and cool-down sized to the session ([ACSM-FLEX]).
    n_warm = min(
        MAX_WARMUP, len(warm_pool), 1 if request.minutes <= 20 else 2 if request.minutes <= 60 else 3
    )
    n_cool = min(
        MAX_COOLDOWN, len(cool_pool), 1 if request.minutes <= 20 else 2 if request.minutes <= 45 else 3
    )
    w_lo, w_hi = warmup_minutes(request.minutes)
    warm_total = min(w_hi, max(w_lo, request.minutes * 0.15)) * 60
    warm_work = _clamp(round((warm_total / n_warm - TRANSITION_SECONDS) / 15) * 15, *WARMUP.work_s)
    cool_sets = 2 if request.minutes <= 75 else 3
    cool_work = 30

    # Main work: fill in the standard's order while it fits.
    focus_muscles = FOCUS_MUSCLES[request.focus] if request.focus else frozenset()
    want_focus = bool(request.focus) and focus_possible(day, str(request.focus))
    # Balance [ACSM11, NSCA16]: the day's regions that this person can train, each covered before any
    # region gets a second exercise.
    regions = (
        frozenset().union(*(regions_of(day, e.primary_muscles) for e in main_pool))
        if request.goal in RESISTANCE_GOALS
        else frozenset()
    )
    focus_reach = (
        frozenset().union(
            *(regions_of(day, e.primary_muscles) for e in main_pool if set(e.primary_muscles) & focus_muscles)
        )
        if want_focus
        else frozenset()
    )
    budget = (
        target
        - n_warm * (warm_work + TRANSITION_SECONDS)
        - n_cool * (cool_sets * cool_work + TRANSITION_SECONDS)
    )
    # Proportion [NSCA16, ACSM11]: no region more than PROPORTION_RATIO x another the session trains.
    keep_proportion = proportion_applies(request.goal, day, request.focus)
    supply = region_counts(day, [e.primary_muscles for e in main_pool])
    prefer_eq: set[str] = {str(e) for e in request.equipment if e != "body only"}
    items: list[_Item] = []
    chosen: set[str] = set()
    offset = rng.randrange(len(MUSCLE_ROTATION))
    for i, role in enumerate(_role_sequence(request.goal, rng)):
        if len(items) >= MAX_MAIN or role not in doses:
            continue
        pool = [e for e in main_pool if e.role == role]
        open_regions = regions - frozenset().union(*(regions_of(day, it.ex.primary_muscles) for it in items))
        covering = [
            e for e in main_pool if e.name not in chosen and regions_of(day, e.primary_muscles) & open_regions
        ]
        n_focus = sum(1 for it in items if set(it.ex.primary_muscles) & focus_muscles)
        if want_focus and n_focus < focus_needed(len(items) + 1):
            # Focus first: a focus exercise of this role, else of any role the goal uses (one that also
            # covers an open region when there is one).
            focus_pool = [
                e for e in main_pool if set(e.primary_muscles) & focus_muscles and e.name not in chosen
            ]
            focus_pool = [e for e in focus_pool if e in covering] or focus_pool
            same_role = [e for e in focus_pool if e.role == role]
            pool = same_role or focus_pool or pool
            if pool and pool[0].role != role and not same_role:
                role = (
                    pool[0].role
                    if len({e.role for e in pool}) == 1
                    else rng.choice(sorted({e.role for e in pool}))
                )
                pool = [e for e in pool if e.role == role]
        elif covering:
            # An open region first (one the focus exercises cannot reach, when a focus is still owed
            # picks), with a multi-joint exercise while one still fits the session [ACSM11] — a row
            # rather than a curl for the day's pulling — else one of this slot's role.
            beyond_focus = open_regions - focus_reach
            covering = [e for e in covering if regions_of(day, e.primary_muscles) & beyond_focus] or covering
            multi_joint = [e for e in covering if e.role == "primary"]
            if multi_joint and doses["primary"].seconds() <= 1.4 * budget:
                role, pool = "primary", multi_joint
            else:
                same_role = [e for e in covering if e.role == role]
                if not same_role:
                    role = rng.choice(sorted({e.role for e in covering}))
                pool = [e for e in covering if e.role == role]
        if keep_proportion:
            # This slot's pool, kept to the exercises that leave the session in proportion; else one
            # of another role that does and fits; else the slot stays empty.
            counts = region_counts(day, [it.ex.primary_muscles for it in items])

            def in_proportion(e: CatalogueExercise, counts: dict[str, int] = counts) -> bool:
                return e.name not in chosen and proportion_allows(
                    counts, regions_of(day, e.primary_muscles), supply
                )

            kept = [e for e in pool if in_proportion(e)]
            if not kept:
                other = [
                    e
                    for e in main_pool
                    if e.role != role
                    and in_proportion(e)
                    and doses[e.role].seconds() <= budget + 0.4 * doses[e.role].seconds()
                ]
                if not other:
                    continue
                role = rng.choice(sorted({e.role for e in other}))
                kept = [e for e in other if e.role == role]
            pool = kept
        dose = doses[role]
        if dose.seconds() > budget + 0.4 * dose.seconds():
            continue
        pick = _pick(
            pool,
            rng,
            exclude=chosen,
            avoid=used_main,
            prefer=prefer_eq,
            prefer_level=request.level,
            muscle=MUSCLE_ROTATION[(offset + i) % len(MUSCLE_ROTATION)]
            if request.goal != "mobility"
            else None,
        )
        if pick is None:
            continue
        items.append(_Item(pick, dose, role))
        chosen.add(pick.name)
        budget -= dose.seconds()
    if not items:
        raise PlanningError(f"no main exercise fits the {request.minutes}-min {where}")
    if want_focus and sum(1 for it in items if set(it.ex.primary_muscles) & focus_muscles) < focus_needed(
        len(items)
    ):
        raise PlanningError(f"not enough {request.focus} exercises for the {where}")
    items.sort(key=lambda it: order_rank(it.role, it.ex.primary_muscles))

    # Land the length: adjust sets (within the standard), then the warm-up length.
    warm_work = _fit(request, items, n_warm, warm_work, n_cool, cool_sets, cool_work, target)
    warm_ex = _edge_items(warm_pool, n_warm, rng, exclude=chosen, first_cardio=rng.random() < 0.7)
    trained = [m for it in items for m in it.ex.primary_muscles]
    cool_ex = _edge_items(
        cool_pool, n_cool, rng, exclude=chosen | {e.name for e in warm_ex}, prefer_muscles=trained
    )
    if len(warm_ex) < n_warm or len(cool_ex) < n_cool:
        raise PlanningError(f"not enough distinct warm-up/cool-down exercises for the {where}")
    used_main.update(chosen)
    return WorkoutDay(
        day=day,  # type: ignore[arg-type]
        main_count=len(items),
        warmup=[TimedExercise(name=e.name, work_s=warm_work) for e in warm_ex],
        main=[_item_model(it) for it in items],
        cooldown=[TimedExercise(name=e.name, sets=cool_sets, work_s=cool_work) for e in cool_ex],
    )


def _clamp(x: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, x)))


def _fit(
    request: RequestSpec,
    items: list[_Item],
    n_warm: int,
    warm_work: int,
    n_cool: int,
    cool_sets: int,
    cool_work: int,
    target: int,
) -> int:
    """Adjust main sets (inside the standard) and then warm-up seconds until within tolerance."""

    def total(w: int) -> int:
        return (
            sum(it.dose.seconds() for it in items)
            + n_warm * (w + TRANSITION_SECONDS)
            + n_cool * (cool_sets * cool_work + TRANSITION_SECONDS)
        )

    for _ in range(8 * len(items)):
        err = total(warm_work) - target
        if abs(err) <= PLANNER_TOLERANCE * target * 0.6:
            break
        step = -1 if err > 0 else 1
        best: tuple[float, int, Dose] | None = None
        for idx, it in enumerate(items):
            p = prescription_for(request.goal, request.level, it.role)
            assert p is not None
            options = []
            if p.sets[0] <= it.dose.sets + step <= p.sets[1]:
                options.append(replace(it.dose, sets=it.dose.sets + step))
            if not p.patterns:  # rest moves one round number inside the standard's range
                rests = _nice(NICE_REST, *p.rest_s)
                j = rests.index(it.dose.rest_s) + step if it.dose.rest_s in rests else -1
                if 0 <= j < len(rests):
                    options.append(replace(it.dose, rest_s=rests[j]))
            for new in options:
                gain = abs(err + new.seconds() - it.dose.seconds())
                if gain < abs(err) and (best is None or gain < best[0]):
                    best = (gain, idx, new)
        if best is None:
            break
        items[best[1]].dose = best[2]
    err = total(warm_work) - target
    if abs(err) > PLANNER_TOLERANCE * target * 0.6:
        w_lo, w_hi = warmup_minutes(request.minutes)
        lo = max(WARMUP.work_s[0], math.ceil((w_lo * 60 / n_warm - TRANSITION_SECONDS) / 15) * 15)
        hi = min(WARMUP.work_s[1], math.floor((w_hi * 60 / n_warm - TRANSITION_SECONDS) / 15) * 15)
        ideal = warm_work - err / n_warm
        warm_work = _clamp(round(ideal / 15) * 15, lo, max(lo, hi))
    if abs(total(warm_work) - target) > PLANNER_TOLERANCE * target:
        raise PlanningError(
            f"the coaching standard cannot fill a {request.minutes}-min {request.goal} session for a "
            f"{request.level} with this catalogue (closest: {total(warm_work) / 60:.1f} min)"
        )
    return warm_work


# --------------------------------------------------------------------------------------------- titles

GOAL_TITLES: dict[str, str] = {
    "strength": "Strength",
    "hypertrophy": "Muscle Builder",
    "endurance": "Endurance",
    "fat_loss": "HIIT Burn",
    "mobility": "Mobility Flow",
    "general_fitness": "Fitness",
}
SPLIT_TITLES = {"full_body": "Full-Body", "upper_lower": "Upper/Lower", "push_pull_legs": "Push/Pull/Legs"}
TITLE_ADJECTIVES: tuple[str, ...] = (
    "Foundation",
    "Power",
    "Balanced",
    "Classic",
    "Express",
    "Steady",
    "Core",
)


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
    """The offline coach's plan for one request (deterministic). Raises :class:`PlanningError`.

    The first draw of doses and exercises usually lands the length; when it does not (a long-rest
    strength dose in a 10-minute session, an endurance circuit short of 120 minutes), the coach draws
    again, as a coach would try another set/rest scheme, up to ``PLAN_ATTEMPTS`` times; every draw
    keeps the standard. The first error is the one reported."""
    first_error: PlanningError | None = None
    for attempt in range(PLAN_ATTEMPTS):
        try:
            return _plan_attempt(request, catalogue, _seed(request) + attempt)
        except PlanningError as e:
            first_error = first_error or e
    assert first_error is not None
    raise first_error


def _plan_attempt(request: RequestSpec, catalogue: ExerciseCatalogue, seed: int) -> WorkoutPlanResponse:
    rng = random.Random(seed)
    suitable = catalogue.suitable(request.level, request.equipment, request.limitations)
    roles = _roles_for(request.goal, request.level)
    doses = {role: _draw_dose(p, rng) for role, p in roles.items()}
    if request.goal == "fat_loss":  # one interval pattern for the whole circuit
        first = doses[next(iter(doses))]
        doses = {role: first for role in doses}
    split = split_for(request.goal, request.days_per_week)
    used_main: set[str] = set()
    sessions = [_session(request, day, suitable, doses, rng, used_main) for day in SPLIT_DAYS[split]]
    title = f"{TITLE_ADJECTIVES[rng.randrange(len(TITLE_ADJECTIVES))]} {_equipment_word(request)} {GOAL_TITLES[request.goal]}"
    if split != "full_body":
        title = f"{SPLIT_TITLES[split]} {_equipment_word(request)} {GOAL_TITLES[request.goal]}"
    plan = WorkoutPlanResponse(
        title=title[:60],
        total_minutes=request.minutes,
        days_per_week=request.days_per_week,
        split=split,  # type: ignore[arg-type]
        sessions=sessions,
    )
    for mins in plan.session_minutes():
        if abs(mins - request.minutes) > PLANNER_TOLERANCE * request.minutes:  # pragma: no cover - _fit
            raise PlanningError(f"planned {mins:.1f} min for a {request.minutes} min request")
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
