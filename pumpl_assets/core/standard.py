"""The coaching standard, as data: what a plan for a goal × level must look like (one source of truth).

Teachers write to it, validation and evaluation score against it, the served grammar guarantees the
part of it a grammar can honestly guarantee (names per block, prescription ranges per role), and the
Claude teacher's prompt states it. Every number has its source beside it.

Sources
* [ACSM09] American College of Sports Medicine position stand, "Progression Models in Resistance
  Training for Healthy Adults", Med Sci Sports Exerc 41(3):687-708, 2009.
  - novices: 8-12 RM, 1-3 sets, 2-3 days/week, full body;
  - strength (intermediate/advanced): emphasis 1-6 RM, 3-5 min rest on the heavy multi-joint lifts,
    1-2 min on assistance work; 3-6 sets for the advanced;
  - hypertrophy: 6-12 RM, 1-2 min rest, 3-6 sets for the advanced;
  - local muscular endurance: 10-25 reps, 2-4 sets, 30-60 s rest (< 1 min for 10-15 reps);
  - order: multi-joint before single-joint, large muscle groups before small;
  - frequency/split: total body 2-3 days/week; upper/lower 4 days/week; muscle-group splits
    (e.g. push/pull/legs) 4-6 days/week for advanced lifters.
* [ACSM-FLEX] ACSM's Guidelines for Exercise Testing and Prescription (11th ed.), flexibility:
  static stretches held 10-30 s (30-60 s for older adults), 2-4 repetitions each, after a warm-up
  or at the end of a session; warm-up 5-10 min of light-to-moderate dynamic activity; cool-down
  5-10 min.
* [HIIT] Interval protocols in standard work:rest patterns: 20:10 (Tabata et al., Med Sci Sports
  Exerc 28(10), 1996), 30:30, 40:20, 45:15 (ACSM Health & Fitness Journal HIIT guidance, 2014):
  beginners at 1:1, trained people at 2:1 or 3:1.
* [ACSM11] Garber CE et al., ACSM position stand "Quantity and Quality of Exercise for Developing and
  Maintaining Cardiorespiratory, Musculoskeletal, and Neuromotor Fitness in Apparently Healthy
  Adults", Med Sci Sports Exerc 43(7):1334-1359, 2011: train each major muscle group 2-3 days/week
  with multi-joint exercises for agonist AND antagonist groups.
* [NSCA16] Haff & Triplett (eds.), NSCA "Essentials of Strength Training and Conditioning", 4th ed.,
  2016, ch. 17 (exercise selection): balance pushing with pulling, and knee-dominant with
  hip-dominant lower-body work.

Roles. Every catalogue exercise has one main-block role (:func:`main_role`): ``primary``
(multi-joint resistance), ``assistance`` (single-joint resistance), ``hold`` (isometric: planks,
wall sits, hollow holds — prescribed in seconds), ``conditioning`` (cardio and plyometrics),
``stretch`` (static stretch) or ``drill`` (dynamic mobility). Which exercises are prescribed in
seconds follows from the role: holds, stretches, drills, cardio and carries in seconds, the rest in
reps — except in fat-loss interval circuits, where every exercise is a timed interval [HIIT].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pumpl_assets.core.schemas import SECONDS_PER_REP, TRANSITION_SECONDS

Role = Literal["primary", "assistance", "hold", "conditioning", "stretch", "drill"]
ROLES: tuple[Role, ...] = ("primary", "assistance", "hold", "conditioning", "stretch", "drill")
RESISTANCE_GOALS = frozenset({"strength", "hypertrophy", "endurance", "general_fitness"})
TIMED_ROLES = frozenset({"hold", "conditioning", "stretch", "drill"})


@dataclass(frozen=True)
class Prescription:
    """Allowed ranges for one main-block exercise (inclusive). Exactly one of reps / work_s is set."""

    sets: tuple[int, int]
    rest_s: tuple[int, int]
    reps: tuple[int, int] | None = None
    work_s: tuple[int, int] | None = None
    # Interval work: the allowed (work, rest) pairs; when set, rest_s/work_s are their hull.
    patterns: tuple[tuple[int, int], ...] = ()

    @property
    def timed(self) -> bool:
        return self.work_s is not None

    def admits(self, sets: int, rest_s: int, reps: int | None, work_s: int | None) -> bool:
        if not self.sets[0] <= sets <= self.sets[1]:
            return False
        if self.patterns:
            return reps is None and work_s is not None and (work_s, rest_s) in self.patterns
        # A single set has no rest between sets, so its rest is free (but bounded by the schema).
        if sets > 1 and not self.rest_s[0] <= rest_s <= self.rest_s[1]:
            return False
        if self.reps is not None:
            return reps is not None and self.reps[0] <= reps <= self.reps[1]
        assert self.work_s is not None
        return work_s is not None and self.work_s[0] <= work_s <= self.work_s[1]

    def describe(self) -> str:
        if self.patterns:
            pats = ", ".join(f"{w}:{r}" for w, r in self.patterns)
            return f"{self.sets[0]}-{self.sets[1]} rounds of {pats} s work:rest"
        what = (
            f"{self.reps[0]}-{self.reps[1]} reps"
            if self.reps is not None
            else f"{self.work_s[0]}-{self.work_s[1]} s"  # type: ignore[index]
        )
        return f"{self.sets[0]}-{self.sets[1]} sets × {what}, rest {self.rest_s[0]}-{self.rest_s[1]} s"


def _p(sets: tuple[int, int], rest: tuple[int, int], reps: tuple[int, int] | None = None,
       work: tuple[int, int] | None = None) -> Prescription:  # fmt: skip
    return Prescription(sets=sets, rest_s=rest, reps=reps, work_s=work)


def _intervals(sets: tuple[int, int], *patterns: tuple[int, int]) -> Prescription:
    works, rests = [w for w, _ in patterns], [r for _, r in patterns]
    return Prescription(
        sets=sets, rest_s=(min(rests), max(rests)), work_s=(min(works), max(works)), patterns=patterns
    )


# Isometric core/trunk holds inside resistance sessions: 20-60 s, 2-4 sets, 30-90 s rest.
_HOLD = {"beginner": _p((2, 3), (30, 60), work=(20, 40)), "intermediate": _p((2, 4), (30, 90), work=(30, 45)),
         "expert": _p((3, 4), (30, 90), work=(30, 60))}  # fmt: skip

# goal -> level -> role -> ranges. A role missing for a goal is not allowed in its main block.
STANDARD: dict[str, dict[str, dict[str, Prescription]]] = {
    # [ACSM09] novices 8-12 RM; trained: 1-6 RM, 3-5 min on heavy lifts, 1-2 min assistance.
    "strength": {
        "beginner": {"primary": _p((2, 3), (90, 180), reps=(8, 12)),
                     "assistance": _p((2, 3), (60, 120), reps=(8, 12)), "hold": _HOLD["beginner"]},
        "intermediate": {"primary": _p((3, 5), (180, 300), reps=(3, 6)),
                         "assistance": _p((2, 4), (60, 120), reps=(6, 10)), "hold": _HOLD["intermediate"]},
        "expert": {"primary": _p((3, 6), (180, 300), reps=(1, 6)),
                   "assistance": _p((3, 4), (60, 120), reps=(6, 10)), "hold": _HOLD["expert"]},
    },
    # [ACSM09] 6-12 RM, 1-2 min rest; 3-6 sets for the advanced.
    "hypertrophy": {
        "beginner": {"primary": _p((2, 3), (60, 120), reps=(8, 12)),
                     "assistance": _p((2, 3), (60, 90), reps=(8, 12)), "hold": _HOLD["beginner"]},
        "intermediate": {"primary": _p((3, 4), (60, 120), reps=(6, 12)),
                         "assistance": _p((3, 4), (60, 90), reps=(8, 12)), "hold": _HOLD["intermediate"]},
        "expert": {"primary": _p((3, 6), (60, 120), reps=(6, 12)),
                   "assistance": _p((3, 5), (60, 90), reps=(8, 12)), "hold": _HOLD["expert"]},
    },
    # [ACSM09] local muscular endurance: 10-25 reps, 2-4 sets, 30-60 s rest.
    "endurance": {
        "beginner": {"primary": _p((2, 3), (30, 60), reps=(10, 15)),
                     "assistance": _p((2, 3), (30, 60), reps=(12, 15)), "hold": _HOLD["beginner"]},
        "intermediate": {"primary": _p((2, 4), (30, 60), reps=(12, 20)),
                         "assistance": _p((2, 4), (30, 60), reps=(15, 20)), "hold": _HOLD["intermediate"]},
        "expert": {"primary": _p((3, 4), (30, 60), reps=(15, 25)),
                   "assistance": _p((3, 4), (30, 60), reps=(15, 25)), "hold": _HOLD["expert"]},
    },
    # [ACSM09] healthy adults: 8-12 reps, 2-4 sets (novices 1-3), 1-2 min rest.
    "general_fitness": {
        "beginner": {"primary": _p((2, 3), (60, 120), reps=(8, 12)),
                     "assistance": _p((2, 3), (60, 90), reps=(10, 12)), "hold": _HOLD["beginner"]},
        "intermediate": {"primary": _p((3, 4), (60, 120), reps=(8, 12)),
                         "assistance": _p((2, 3), (60, 90), reps=(10, 15)), "hold": _HOLD["intermediate"]},
        "expert": {"primary": _p((3, 4), (60, 120), reps=(8, 12)),
                   "assistance": _p((3, 4), (60, 90), reps=(10, 15)), "hold": _HOLD["expert"]},
    },
    # [HIIT] circuits of timed intervals: beginners 1:1, trained 2:1 / 3:1 / Tabata 20:10.
    "fat_loss": {
        level: {role: pres for role in ("primary", "assistance", "hold", "conditioning")}
        for level, pres in (
            ("beginner", _intervals((2, 4), (30, 30))),
            ("intermediate", _intervals((3, 5), (30, 30), (40, 20))),
            ("expert", _intervals((3, 8), (40, 20), (45, 15), (20, 10))),
        )
    },
    # [ACSM-FLEX] static stretches 10-30 s, 2-4 times; dynamic drills 30-60 s.
    "mobility": {
        "beginner": {"stretch": _p((2, 3), (10, 20), work=(15, 30)), "drill": _p((2, 3), (15, 30), work=(30, 45))},
        "intermediate": {"stretch": _p((2, 4), (10, 20), work=(20, 30)),
                         "drill": _p((2, 3), (15, 30), work=(30, 60))},
        "expert": {"stretch": _p((2, 4), (10, 20), work=(20, 30)), "drill": _p((2, 4), (15, 30), work=(30, 60))},
    },
}  # fmt: skip


@dataclass(frozen=True)
class EdgeBlock:
    """Warm-up or cool-down: item count and per-item prescription (one set unless said)."""

    min_items: int
    max_items: int
    sets: tuple[int, int]
    work_s: tuple[int, int]


# [ACSM-FLEX] warm-up: light dynamic movement and cardio, 5-10 min; cool-down: static stretching.
WARMUP = EdgeBlock(min_items=1, max_items=3, sets=(1, 1), work_s=(60, 180))
COOLDOWN = EdgeBlock(min_items=1, max_items=3, sets=(1, 3), work_s=(20, 60))


def warmup_minutes(session_minutes: int) -> tuple[float, float]:
    """Allowed warm-up length (minutes, transitions included): 5-10 min [ACSM-FLEX], shorter for
    very short sessions, up to a quarter of a long one."""
    lo = 2.0 if session_minutes <= 15 else 3.0 if session_minutes <= 20 else 5.0
    hi = max(lo + 2.0, min(15.0, session_minutes * 0.25))
    return lo, hi


def cooldown_minutes(session_minutes: int) -> tuple[float, float]:
    """Allowed cool-down length (minutes): a few static stretches, up to a fifth of the session."""
    lo = 1.5 if session_minutes <= 20 else 3.0
    hi = max(lo + 2.0, min(12.0, session_minutes * 0.2))
    return lo, hi


# --------------------------------------------------------------------------------------------- splits
# [ACSM09] total body 2-3 days; upper/lower 4; push/pull/legs 5-6 (one per session in rotation).
# Fat-loss circuits and mobility work are whole-body by nature, so they stay full body every day.
SPLIT_DAYS: dict[str, tuple[str, ...]] = {
    "full_body": ("full_body",),
    "upper_lower": ("upper", "lower"),
    "push_pull_legs": ("push", "pull", "legs"),
}
UPPER_MUSCLES = frozenset(
    {"chest", "lats", "middle back", "shoulders", "traps", "biceps", "triceps", "forearms", "neck"}
)
LOWER_MUSCLES = frozenset(
    {"quadriceps", "hamstrings", "glutes", "calves", "adductors", "abductors", "lower back"}
)
CORE_MUSCLES = frozenset({"abdominals"})
PUSH_MUSCLES = frozenset({"chest", "shoulders", "triceps"})
PULL_MUSCLES = frozenset({"lats", "middle back", "traps", "biceps", "forearms"})  # fmt: skip


def split_for(goal: str, days_per_week: int) -> str:
    if goal not in RESISTANCE_GOALS or days_per_week <= 3:
        return "full_body"
    return "upper_lower" if days_per_week == 4 else "push_pull_legs"


def fits_day(day: str, muscles: tuple[str, ...] | frozenset[str], force: str | None) -> bool:
    """Does an exercise with these primary muscles belong in a session of ``day``? Core fits every day."""
    m = set(muscles)
    if day == "full_body" or not m or m <= CORE_MUSCLES:
        return True
    m -= CORE_MUSCLES
    if day == "upper":
        return m <= UPPER_MUSCLES
    if day == "lower" or day == "legs":
        return m <= LOWER_MUSCLES
    if day == "push":
        return m <= UPPER_MUSCLES and (bool(m & PUSH_MUSCLES) and force != "pull")
    if day == "pull":
        return m <= UPPER_MUSCLES and (bool(m & PULL_MUSCLES) or force == "pull")
    return False


# --------------------------------------------------------------------------------------------- balance
# [ACSM11] every major muscle group each training day of a full-body week (so a full-body session
# holds lower-body, pushing and pulling work); [NSCA16] an upper day pushes and pulls, a lower or
# legs day holds knee-dominant and hip-dominant work. A push or pull day is one region by itself.
# An exercise covers a region when one of its primary muscles is the region's.
BALANCE_REGIONS: dict[str, dict[str, frozenset[str]]] = {
    "full_body": {
        "lower body": frozenset({"quadriceps", "hamstrings", "glutes"}),
        "push": frozenset({"chest", "shoulders", "triceps"}),
        "pull": frozenset({"lats", "middle back", "traps", "biceps"}),
    },
    "upper": {
        "push": frozenset({"chest", "shoulders", "triceps"}),
        "pull": frozenset({"lats", "middle back", "traps", "biceps"}),
    },
    "lower": {"knee-dominant": frozenset({"quadriceps"}), "hip-dominant": frozenset({"hamstrings", "glutes"})},
    "legs": {"knee-dominant": frozenset({"quadriceps"}), "hip-dominant": frozenset({"hamstrings", "glutes"})},
}  # fmt: skip


def regions_of(day: str, muscles: tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    """The balance regions of ``day`` an exercise with these primary muscles covers."""
    m = set(muscles)
    return frozenset(r for r, rm in BALANCE_REGIONS.get(day, {}).items() if m & rm)


def balance_needed(
    goal: str,
    day: str,
    n_main: int,
    available: frozenset[str] | set[str],
    focus: str | None,
    focus_reach: frozenset[str] | set[str] | None = None,
) -> int:
    """How many of ``day``'s regions a session of ``n_main`` main exercises must cover (resistance goals).

    Only regions the person can train count (``available``: a knee limitation may leave no
    knee-dominant exercise), and a short session covers as many as it has exercises. A requested focus
    takes its share of the main work first (:func:`focus_needed`); those exercises cover at most the
    regions the focus exercises the person can do reach (``focus_reach``; default: every region a
    focus muscle belongs to), so the rest of the session covers the others.
    """
    if goal not in RESISTANCE_GOALS or day not in BALANCE_REGIONS or n_main == 0:
        return 0
    slots = n_main
    if focus:
        k = min(n_main, focus_needed(n_main)) if focus_possible(day, focus) else 0
        reach_set = regions_of(day, FOCUS_MUSCLES[focus]) if focus_reach is None else focus_reach
        reach = len(set(reach_set) & set(available))
        slots = n_main - k + min(k, reach)
    return min(len(available), slots)


# --------------------------------------------------------------------------------------------- proportion
# [NSCA16] ch. 17: balance pushing with pulling and knee- with hip-dominant work; [ACSM11] agonist AND
# antagonist groups. Covering each region once (balance) is not enough: a session of four presses and
# one row trains both yet is lopsided. So no region of a resistance day holds more than this many
# times the exercises of another region the session trains, while the person has more exercises for
# the smaller region (a knee limitation may leave one knee-dominant exercise; then nothing is owed).
PROPORTION_RATIO = 2


def proportion_applies(goal: str, day: str, focus: str | None) -> bool:
    """Resistance sessions of a day with several regions; a focus day may lean on purpose."""
    if goal not in RESISTANCE_GOALS or len(BALANCE_REGIONS.get(day, {})) < 2:
        return False
    return not (focus and focus_possible(day, focus))


def region_counts(
    day: str, muscle_sets: list[tuple[str, ...]] | tuple[tuple[str, ...], ...]
) -> dict[str, int]:
    """How many of a session's main exercises (given by their primary muscles) cover each region."""
    counts = dict.fromkeys(BALANCE_REGIONS.get(day, {}), 0)
    for muscles in muscle_sets:
        for r in regions_of(day, muscles):
            counts[r] += 1
    return counts


def out_of_proportion(counts: Mapping[str, int], supply: Mapping[str, int]) -> list[tuple[str, str]]:
    """(big, small) region pairs where ``big`` holds more than :data:`PROPORTION_RATIO` × the exercises
    of a trained region ``small`` for which the person has more exercises than the session uses."""
    return [
        (big, small)
        for big, n_big in counts.items()
        for small, n_small in counts.items()
        if big != small
        and n_small >= 1
        and n_big > PROPORTION_RATIO * n_small
        and supply.get(small, 0) > n_small
    ]


def proportion_allows(counts: Mapping[str, int], regions: frozenset[str], supply: Mapping[str, int]) -> bool:
    """May one more exercise covering ``regions`` join a session with these ``counts``? An increment
    rule for writers (the coach, the decode guard), stricter than :func:`out_of_proportion`: a region
    not yet trained counts as 1, so a session never needs to take an exercise back."""
    for r in regions:
        after = counts.get(r, 0) + 1
        for small, n_small in counts.items():
            if small in regions or supply.get(small, 0) <= n_small:
                continue
            if after > PROPORTION_RATIO * max(n_small, 1):
                return False
    return True


# --------------------------------------------------------------------------------------------- focus
FOCUS_MUSCLES: dict[str, frozenset[str]] = {
    "core": CORE_MUSCLES | {"lower back"},
    "upper_body": UPPER_MUSCLES,
    "lower_body": LOWER_MUSCLES,
    "glutes": frozenset({"glutes"}),
    "arms": frozenset({"biceps", "triceps", "forearms"}),
}
FOCUS_SHARE = 0.4  # in every session that can train the focus, at least this share of the main work


def focus_needed(n_main: int) -> int:
    return max(1, math.ceil(FOCUS_SHARE * n_main))


def focus_possible(day: str, focus: str) -> bool:
    """Can a session of ``day`` train ``focus`` at all (core fits every day; arms not on leg day)?"""
    return any(fits_day(day, (m,), None) for m in FOCUS_MUSCLES[focus])


# --------------------------------------------------------------------------------------------- order
LARGE_MUSCLES = frozenset(
    {"quadriceps", "hamstrings", "glutes", "chest", "lats", "middle back", "lower back"}
)


def order_rank(role: str, muscles: tuple[str, ...]) -> int:
    """[ACSM09] multi-joint before single-joint, large muscle groups before small; holds last."""
    if role == "primary":
        return 0
    if role == "assistance":
        return 1 if set(muscles) & LARGE_MUSCLES else 2
    return 3


def prescription_for(goal: str, level: str, role: str) -> Prescription | None:
    return STANDARD.get(goal, {}).get(level, {}).get(role)


def set_seconds(reps: int | None, work_s: int | None, rest_s: int) -> int:
    return (reps * SECONDS_PER_REP if reps is not None else int(work_s or 0)) + rest_s


__all__ = [
    "BALANCE_REGIONS",
    "COOLDOWN",
    "FOCUS_MUSCLES",
    "RESISTANCE_GOALS",
    "ROLES",
    "SPLIT_DAYS",
    "STANDARD",
    "TIMED_ROLES",
    "TRANSITION_SECONDS",
    "WARMUP",
    "Prescription",
    "balance_needed",
    "cooldown_minutes",
    "fits_day",
    "focus_needed",
    "focus_possible",
    "order_rank",
    "prescription_for",
    "regions_of",
    "split_for",
    "warmup_minutes",
]


def describe_for_request(goal: str, level: str, minutes: int, days_per_week: int, focus: str | None) -> str:
    """The standard for one request, as instructions (the Claude teacher's prompt states exactly
    what validation will check)."""
    split = split_for(goal, days_per_week)
    w_lo, w_hi = warmup_minutes(minutes)
    c_lo, c_hi = cooldown_minutes(minutes)
    lines = [
        f"- Split: {split} — write exactly these sessions in this order: {', '.join(SPLIT_DAYS[split])}; "
        "each session's main work trains only its day's muscles (core work fits any day).",
        f"- Every session lasts {minutes} min ±10%: each exercise takes sets × (reps × {SECONDS_PER_REP} s "
        f"or work_s + rest_s) + {TRANSITION_SECONDS} s; fewer exercises rather than shorter rests.",
        f"- Warm-up: {w_lo:g}-{w_hi:g} min of light dynamic drills or easy cardio, one timed set each "
        f"({WARMUP.work_s[0]}-{WARMUP.work_s[1]} s). Cool-down: {c_lo:g}-{c_hi:g} min of static stretches "
        f"({COOLDOWN.sets[0]}-{COOLDOWN.sets[1]} sets of {COOLDOWN.work_s[0]}-{COOLDOWN.work_s[1]} s), "
        "at least half of them for muscles the session's main work trained.",
    ]
    for role, pres in STANDARD[goal][level].items():
        lines.append(f"- Main, {role} exercises: {pres.describe()}.")
    if goal in RESISTANCE_GOALS:
        lines.append(
            "- Order: multi-joint before single-joint, large muscle groups before small, holds last."
        )
    if focus:
        lines.append(
            f"- Focus {focus}: at least {int(FOCUS_SHARE * 100)}% of the main exercises of every session that "
            f"can train it work {', '.join(sorted(FOCUS_MUSCLES[focus]))}."
        )
    days_with_regions = [d for d in SPLIT_DAYS[split] if d in BALANCE_REGIONS]
    if goal in RESISTANCE_GOALS and days_with_regions:
        lines.append(
            "- Balance: "
            + "; ".join(f"a {d} session covers {', '.join(BALANCE_REGIONS[d])}" for d in days_with_regions)
            + " (as many as its exercise count allows, of what the person can do)."
        )
    lines.append("- No exercise twice in a session; vary exercises between sessions.")
    return "\n".join(lines)
