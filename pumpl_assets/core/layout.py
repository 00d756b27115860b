"""Session layout rules: how a session of a given length is structured (one source of truth).

Used by the offline teacher (to write plans), by the request-aware grammar (to constrain the
served model's structure to what fits the requested time) and documented in the README.

Every goal's set takes the same 70 s (work + rest), so a session's duration depends on its
length's layout alone — block sizes, main sets and warm-up/cool-down holds — and never on which
goal's reps/rest are written.
"""

from __future__ import annotations

SET_SECONDS = 70
# goal -> (reps, work_s, rest_s) of a main-block set
GOAL_SET: dict[str, tuple[int | None, int | None, int]] = {
    "strength": (5, None, 55),
    "hypertrophy": (10, None, 40),
    "endurance": (15, None, 25),
    "general_fitness": (8, None, 46),
    "fat_loss": (None, 40, 30),
    "mobility": (None, 45, 25),
}
# minutes -> (main sets, main count, warm-up count = cool-down count, warm-up/cool-down hold seconds)
MINUTES_LAYOUT: dict[int, tuple[int, int, int, int]] = {
    15: (3, 3, 1, 60),
    20: (3, 4, 1, 90),
    30: (3, 6, 2, 60),
    45: (3, 8, 3, 90),
    60: (4, 8, 3, 150),
}


def layout_for(minutes: int) -> tuple[int, int, int, int] | None:
    return MINUTES_LAYOUT.get(minutes)
