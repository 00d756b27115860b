"""The served post-step: the arithmetic of a plan, done by code after constrained decoding.

The served grammar (:mod:`pumpl_assets.core.grammar`) leaves the model every coaching decision: which
exercises go on each day and how many, and their sets, reps or seconds and rest inside the standard's
ranges. What is left is arithmetic a 135M model does badly — summing seconds to a requested length,
sorting by a rule, copying a count — and a coach's software would never leave it to chance. So the
served configuration finishes each plan here, the same function for the server and for evaluation:

1. **order** [ACSM09]: a resistance session's main work is sorted multi-joint and large muscles first,
   small muscles next, holds last (stable: the model's order within a rank is kept);
2. **warm-up and cool-down**: work seconds (cool-down: then sets) move inside their ranges until the
   block lasts what :func:`standard.warmup_minutes` / :func:`standard.cooldown_minutes` allow;
3. **length**: main sets, then rest, move inside each exercise's ranges for its role until the session
   lasts the requested minutes ±10%; then warm-up and cool-down inside their allowed lengths; only if
   it is still too long at the shortest in-range prescription are trailing main exercises dropped (one
   is always kept; the last one whose loss keeps the focus share and the day's balance regions goes
   first);
4. **declared figures**: ``main_count`` is the length of the main list, ``total_minutes`` the mean
   session length.

It never adds, renames or swaps an exercise, and never leaves the standard's ranges: reps (the
intensity) stay the model's. When the model's choices leave no in-range fit (too few exercises for a
long session), the nearest fit is kept and ``duration`` fails on merit. Every change is listed so the
server can return it. Evaluation scores each served answer before this step (what the model decided)
and after it (what the person gets); :data:`FINALIZED_CHECKS` says which checks it settles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.schemas import (
    DURATION_TOLERANCE,
    RepsExercise,
    RequestSpec,
    TimedExercise,
    WorkoutDay,
    WorkoutPlanResponse,
    exercise_seconds,
)
from pumpl_assets.core.standard import (
    COOLDOWN,
    FOCUS_MUSCLES,
    RESISTANCE_GOALS,
    WARMUP,
    EdgeBlock,
    Prescription,
    balance_needed,
    cooldown_minutes,
    focus_needed,
    order_rank,
    out_of_proportion,
    prescription_for,
    proportion_applies,
    region_counts,
    regions_of,
    warmup_minutes,
)
from pumpl_assets.core.validate import available_regions, cooldown_needed, region_supply, stretches_for

# Settled by this step whatever the model wrote: the order rule and the declared figures. Length and
# the warm-up/cool-down size are fitted when the model's choices allow it (scored, not guaranteed).
FINALIZED_CHECKS: tuple[str, ...] = ("order", "declared")
FITTED_CHECKS: tuple[str, ...] = ("duration", "blocks")
REST_STEP_S = 15  # rest moves in coach-like steps
WARMUP_STEP_S = 15
COOLDOWN_STEP_S = 5
_MAX_STEPS = 400

Item = RepsExercise | TimedExercise


@dataclass
class Finalized:
    plan: WorkoutPlanResponse
    adjustments: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.adjustments)


def _seconds(items: list[Item]) -> int:
    return sum(exercise_seconds(e) for e in items)


def _order(session: WorkoutDay, catalogue: ExerciseCatalogue, tag: str, out: list[str]) -> None:
    def rank(e: Item) -> int:
        cat = catalogue.get(e.name)
        return order_rank(cat.role, cat.primary_muscles) if cat is not None else 3

    ordered = sorted(session.main, key=rank)  # stable
    if [e.name for e in ordered] != [e.name for e in session.main]:
        session.main = ordered
        out.append(f"{tag}: main work reordered multi-joint and large muscles first")


def _fit_edge(
    items: list[Item], lo_s: float, hi_s: float, work: tuple[int, int], sets: tuple[int, int], step: int
) -> bool:
    """Move work seconds (then sets) of ``items`` inside their ranges until the block lasts lo..hi s."""
    changed = False
    for _ in range(_MAX_STEPS):
        total = _seconds(items)
        if lo_s - 1e-9 <= total <= hi_s + 1e-9:
            break
        grow = total < lo_s
        # One step on the item with the most room, work seconds before sets.
        moves: list[tuple[int, int, str]] = []
        for i, e in enumerate(items):
            assert isinstance(e, TimedExercise)
            if grow and e.work_s < work[1]:
                moves.append((work[1] - e.work_s, i, "work"))
            elif not grow and e.work_s > work[0]:
                moves.append((e.work_s - work[0], i, "work"))
        if not moves:
            for i, e in enumerate(items):
                if _room(e.sets, sets, grow):
                    moves.append((0, i, "sets"))
        if not moves:
            break
        _, i, what = max(moves, key=lambda m: (m[0], -m[1]))
        e = items[i]
        assert isinstance(e, TimedExercise)
        if what == "work":
            e.work_s = min(work[1], e.work_s + step) if grow else max(work[0], e.work_s - step)
        else:
            e.sets += 1 if grow else -1
        changed = True
    return changed


def _room(value: int, bounds: tuple[int, int], grow: bool) -> bool:
    """Can ``value`` move up (``grow``) or down and stay inside ``bounds``?"""
    return value < bounds[1] if grow else value > bounds[0]


def _shift_edge(
    items: list[Item], block: EdgeBlock, step: int, bounds: tuple[float, float], gap: float
) -> bool:
    """Lengthen (``gap`` > 0) or shorten a warm-up / cool-down by about ``gap`` seconds, staying inside
    its allowed length ``bounds`` and its items' ranges."""
    want = min(bounds[1], max(bounds[0], _seconds(items) + gap))
    if gap > 0:
        return _fit_edge(items, want, bounds[1], block.work_s, block.sets, step)
    return _fit_edge(items, bounds[0], want, block.work_s, block.sets, step)


def _main_moves(
    session: WorkoutDay, pres: list[Prescription | None], grow: bool
) -> list[tuple[int, int, str]]:
    """Candidate in-range changes (priority, index, kind): sets first, then rest."""
    moves: list[tuple[int, int, str]] = []
    for i, (e, p) in enumerate(zip(session.main, pres, strict=True)):
        if p is None:
            continue
        if _room(e.sets, p.sets, grow):
            moves.append((0, i, "sets"))
        if not p.patterns and e.sets > 1 and _room(e.rest_s, p.rest_s, grow):
            moves.append((1, i, "rest"))
    return moves


def _apply(e: Item, kind: str, grow: bool, p: Prescription) -> None:
    """One step of ``kind`` (a set, or ``REST_STEP_S`` of rest clamped to the range)."""
    if kind == "sets":
        e.sets += 1 if grow else -1
    else:
        e.rest_s = (
            min(p.rest_s[1], e.rest_s + REST_STEP_S) if grow else max(p.rest_s[0], e.rest_s - REST_STEP_S)
        )


def _fit_main(
    request: RequestSpec,
    session: WorkoutDay,
    catalogue: ExerciseCatalogue,
    lo_s: float,
    hi_s: float,
    target_s: float,
    *,
    allow_drop: bool,
) -> list[str]:
    """Bring the session inside lo..hi seconds by in-range sets/rest changes, dropping trailing main
    exercises only when even the shortest prescription is too long."""
    notes: list[str] = []
    roles = [catalogue.get(e.name) for e in session.main]
    pres = [prescription_for(request.goal, request.level, c.role) if c is not None else None for c in roles]
    sets_changed = rest_changed = 0
    for _ in range(_MAX_STEPS):
        total = _seconds(session.all_exercises())
        if lo_s - 1e-9 <= total <= hi_s + 1e-9:
            break
        grow = total < lo_s
        moves = _main_moves(session, pres, grow)
        best: tuple[tuple[float, float, int], int, str] | None = None
        for prio, i, kind in moves:
            e = session.main[i]
            p = pres[i]
            assert p is not None
            saved = (e.sets, e.rest_s)
            before = exercise_seconds(e)
            _apply(e, kind, grow, p)
            after_total = total - before + exercise_seconds(e)
            e.sets, e.rest_s = saved  # this only measures the move
            # Prefer a move that lands inside the band nearest the target; else sets before rest, the
            # exercise with the most (fewest) sets first, so the volume spreads evenly.
            inside = lo_s - 1e-9 <= after_total <= hi_s + 1e-9
            key = (
                0.0 if inside else 1.0,
                abs(after_total - target_s) if inside else float(prio),
                (-1 if grow else 1) * e.sets,
            )
            if best is None or key < best[0]:
                best = (key, i, kind)
        if best is not None:
            _, i, kind = best
            p = pres[i]
            assert p is not None
            _apply(session.main[i], kind, grow, p)
            sets_changed += kind == "sets"
            rest_changed += kind == "rest"
            continue
        if allow_drop and not grow and len(session.main) > 1:
            drop = _drop_index(request, session, catalogue)
            notes.append(
                f"'{session.main[drop].name}' dropped: the session was too long at the shortest prescription"
            )
            del session.main[drop]
            del pres[drop]
            continue
        break  # no in-range change left: the model's choices cannot reach the length
    if sets_changed or rest_changed:
        notes.insert(
            0,
            f"main volume fitted to {request.minutes} min ({sets_changed} set and {rest_changed} rest changes)",
        )
    return notes


def _drop_index(request: RequestSpec, session: WorkoutDay, catalogue: ExerciseCatalogue) -> int:
    """The last main exercise whose loss keeps what the session still meets of the focus share, the
    day's balance regions, proportion between them and a cool-down on the trained muscles (else the
    one that loses the fewest of them)."""
    muscles = FOCUS_MUSCLES[request.focus] if request.focus else frozenset()
    trained = [c.primary_muscles if (c := catalogue.get(e.name)) is not None else () for e in session.main]
    trainable = available_regions(request, session.day, catalogue)
    supply = region_supply(request, session.day, catalogue)
    keep_proportion = proportion_applies(request.goal, session.day, request.focus)
    stretches = stretches_for(request, catalogue)
    stretched = [
        c.primary_muscles if (c := catalogue.get(e.name)) is not None else () for e in session.cooldown
    ]

    def meets(keep: list[int]) -> tuple[bool, ...]:
        n_focus = sum(1 for i in keep if set(trained[i]) & muscles)
        covered: set[str] = set()
        for i in keep:
            covered |= regions_of(session.day, trained[i])
        need = balance_needed(request.goal, session.day, len(keep), trainable, request.focus)
        counts = region_counts(session.day, [trained[i] for i in keep])
        worked = {m for i in keep for m in trained[i]}
        on_target = sum(1 for m in stretched if set(m) & worked)
        return (
            not muscles or n_focus >= focus_needed(len(keep)),
            len(covered & trainable) >= need,
            not keep_proportion or not out_of_proportion(counts, supply),
            on_target >= cooldown_needed(len(stretched), worked, stretches),
        )

    everything = list(range(len(session.main)))
    had = meets(everything)
    # When every drop costs something, the one that loses the fewest of what the session meets (the
    # latest of those), not simply the last exercise, which may cost several at once.
    best, best_lost = len(session.main) - 1, len(had) + 1
    for i in range(len(session.main) - 1, -1, -1):
        after = meets([j for j in everything if j != i])
        lost = sum(1 for a, h in zip(after, had, strict=True) if h and not a)
        if lost == 0:
            return i
        if lost < best_lost:
            best, best_lost = i, lost
    return best


def finalize_plan(request: RequestSpec, plan: WorkoutPlanResponse, catalogue: ExerciseCatalogue) -> Finalized:
    """The served post-step (see module doc) on a copy of ``plan``; returns it with its adjustments."""
    plan = plan.model_copy(deep=True)
    out: list[str] = []
    tol = DURATION_TOLERANCE
    target = request.minutes * 60.0
    lo, hi = target * (1 - tol), target * (1 + tol)
    w_lo, w_hi = (60 * m for m in warmup_minutes(request.minutes))
    c_lo, c_hi = (60 * m for m in cooldown_minutes(request.minutes))
    for si, session in enumerate(plan.sessions):
        tag = f"session {si + 1} ({session.day})"
        if request.goal in RESISTANCE_GOALS:
            _order(session, catalogue, tag, out)
        timed_warm = all(isinstance(e, TimedExercise) for e in session.warmup)
        timed_cool = all(isinstance(e, TimedExercise) for e in session.cooldown)
        if timed_warm and _fit_edge(session.warmup, w_lo, w_hi, WARMUP.work_s, WARMUP.sets, WARMUP_STEP_S):
            out.append(f"{tag}: warm-up sized to {_seconds(session.warmup) / 60:.1f} min")
        if timed_cool and _fit_edge(
            session.cooldown, c_lo, c_hi, COOLDOWN.work_s, COOLDOWN.sets, COOLDOWN_STEP_S
        ):
            out.append(f"{tag}: cool-down sized to {_seconds(session.cooldown) / 60:.1f} min")
        out += [
            f"{tag}: {n}" for n in _fit_main(request, session, catalogue, lo, hi, target, allow_drop=False)
        ]
        total = _seconds(session.all_exercises())
        if not lo - 1e-9 <= total <= hi + 1e-9 and timed_warm and timed_cool:
            # Main work is at the end of its ranges: warm-up and cool-down take up (or give back) the
            # rest inside their own allowed lengths.
            for items, (b_lo, b_hi), block, step, what in (
                (session.warmup, (w_lo, w_hi), WARMUP, WARMUP_STEP_S, "warm-up"),
                (session.cooldown, (c_lo, c_hi), COOLDOWN, COOLDOWN_STEP_S, "cool-down"),
            ):
                total = _seconds(session.all_exercises())
                gap = (lo - total) if total < lo else (hi - total)
                if lo - 1e-9 <= total <= hi + 1e-9:
                    break
                if _shift_edge(items, block, step, (b_lo, b_hi), gap):
                    out.append(
                        f"{tag}: {what} sized to {_seconds(items) / 60:.1f} min to fit the session's length"
                    )
        # Last resort for a session too long at every shortest prescription: drop trailing work.
        out += [
            f"{tag}: {n}" for n in _fit_main(request, session, catalogue, lo, hi, target, allow_drop=True)
        ]
        if session.main_count != len(session.main):
            out.append(f"{tag}: main_count {session.main_count} → {len(session.main)}")
            session.main_count = len(session.main)
    minutes = plan.session_minutes()
    mean = sum(minutes) / len(minutes)
    declared = min(180, max(5, round(mean)))  # the schema's bounds
    if all(lo / 60 - 1e-9 <= m <= hi / 60 + 1e-9 for m in minutes):
        # Rounding the mean must not carry an in-band length out of the band.
        declared = min(max(declared, math.ceil(lo / 60 - 1e-9)), math.floor(hi / 60 + 1e-9))
    if plan.total_minutes != declared:
        out.append(f"total_minutes {plan.total_minutes} → {declared} (the sessions' mean length)")
        plan.total_minutes = declared
    return Finalized(plan=plan, adjustments=out)


__all__ = ["FINALIZED_CHECKS", "FITTED_CHECKS", "Finalized", "finalize_plan"]
