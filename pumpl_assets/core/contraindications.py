"""Contraindications by movement pattern: which exercises a limitation rules out, and why.

Exercises carry movement-pattern tags (the shipped catalogue's ``patterns`` field). An exercise
without tags (user raw data, other catalogues) gets them from :func:`infer_patterns`, rules over its
name, category, force, mechanic, equipment and muscles; the rule that fired is recorded beside the
tags (``patterns_source``), so every verdict can be traced.

Limitation → excluded patterns (:data:`LIMITATION_PATTERNS`). Sources: the knee rules follow the
usual patellofemoral / knee-osteoarthritis guidance (avoid impact — jumping, landing, sprinting,
cutting — and deep loaded knee flexion; open-chain leg extension loads the patellofemoral joint;
cycling and hip-dominant work are the usual substitutes: e.g. NICE NG226 (2022) and the ACSM
exercise guidance for arthritis); lower back follows the McGill spine-sparing approach (avoid loaded
spinal flexion — sit-ups, crunches, weighted twists — and heavy hinges while symptomatic; McGill,
"Low Back Disorders", 3rd ed., 2016); shoulders follow impingement / rotator-cuff guidance (avoid
overhead pressing and hanging, dips, upright rows, behind-the-neck work and end-range barbell
pressing; NSCA Essentials of Strength Training, 4th ed., ch. on exercise technique, and the
subacromial-pain rehabilitation literature); wrists: avoid loaded wrist extension (push-ups, high
planks, crawling and quadruped work on the palms, handstands, dips, front-rack holds) — forearm
planks keep the wrist neutral and stay allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

Pattern = str
PATTERNS: dict[Pattern, str] = {
    "jump": "jumping and landing",
    "run": "running, sprinting and cutting drills",
    "deep_knee_flexion": "deep or loaded knee flexion (squats, lunges, split squats, pistols, step-ups, wall sits)",
    "knee_extension": "open-chain knee extension (leg extension)",
    "spinal_flexion": "loaded spinal flexion (sit-ups, crunches, weighted twists, leg raises, slams)",
    "hinge": "heavy hip hinges (deadlifts, good mornings, bent-over rows, swings, cleans)",
    "overhead_press": "overhead pressing and holding a load overhead",
    "hanging": "hanging and overhead pulling (pull-ups, pulldowns)",
    "dip": "dips",
    "upright_row": "upright rows",
    "behind_neck": "behind-the-neck work (behind-the-neck presses, shoulder dislocates)",
    "barbell_press": "end-range barbell bench pressing",
    "wrist_extension": "loaded wrist extension (push-ups, high planks, quadruped work on the palms, handstands, dips, front rack)",
}  # fmt: skip

LIMITATION_PATTERNS: dict[str, frozenset[Pattern]] = {
    "knees": frozenset({"jump", "run", "deep_knee_flexion", "knee_extension"}),
    "lower back": frozenset({"spinal_flexion", "hinge"}),
    "shoulders": frozenset({"overhead_press", "hanging", "dip", "upright_row", "behind_neck", "barbell_press"}),
    "wrists": frozenset({"wrist_extension"}),
}  # fmt: skip

# (pattern, rule name, regex over the lower-cased name). Order is irrelevant: every rule that fires adds.
_NAME_RULES: tuple[tuple[Pattern, str, re.Pattern[str]], ...] = tuple(
    (p, rule, re.compile(rx))
    for p, rule, rx in (
        ("jump", "name:jump", r"\bjump|\bhop\b|\bhops\b|bound|burpee|(?<!step )\bjacks?\b|tuck jump|skater|plyo"),
        ("run", "name:run", r"sprint|high knees|butt kick|\brun\b|running|\bjog|fast feet|shuffle|carioca|shuttle"),
        ("deep_knee_flexion", "name:squat/lunge",
         r"squat|lunge|pistol|step-?up|wall sit|leg press|hack|thruster|wall ball|skater|stair|world's greatest"),
        ("knee_extension", "name:leg extension", r"leg extension|knee extension"),
        ("spinal_flexion", "name:flexion",
         r"sit-?up|crunch|russian twist|v-?up|(?<!side-lying )leg raise|dragon flag|toes to bar|jack-?knife|\bslam|woodchop"),
        ("hinge", "name:hinge",
         r"deadlift|good morning|bent-?over|pendlay|t-bar row|\bswing\b|\bclean\b|snatch|stiff-?leg|romanian|windmill"),
        ("overhead_press", "name:overhead",
         r"overhead (press|triceps ext)|shoulder press|military|push press|jerk|pike push|handstand|clean and press|"
         r"thruster|wall ball|arnold|seated dumbbell press|snatch|get-?up|\bhalo\b|squat to press|pullover|windmill"),
        ("hanging", "name:hanging", r"pull-?up|chin-?up|hanging|dead hang|muscle-?up|pulldown"),
        ("dip", "name:dip", r"(?<!hip )\bdips?\b"),
        ("upright_row", "name:upright row", r"upright row|high pull"),
        ("behind_neck", "name:behind neck", r"behind[- ]the[- ]neck|dislocate"),
        ("wrist_extension", "name:palms",
         r"push-?up|(?<!forearm )(?<!side )plank|handstand|mountain climber|crawl|burpee|inchworm|renegade|"
         r"(?<!hip )\bdips?\b|front squat|front rack|\bclean\b|wall ball|cat-?cow|bird dog|kickback|quadruped|"
         r"fire hydrant|downward dog|cobra|squat thrust"),
    )
)  # fmt: skip
# Wrist-neutral variants: on the fists, on dumbbell handles, on the forearms; standing kickbacks.
_WRIST_NEUTRAL = re.compile(r"knuckle|handle|forearm|triceps kickback|cable glute kickback|side plank")
# Angled or horizontal presses that the "push + compound + shoulders" rule must not call overhead.
_NOT_OVERHEAD = re.compile(r"landmine|bench|decline|incline push|push-?up|floor press|chest")
# Static stretches hold a position without load: only the hand-support and behind-the-neck rules apply.
_STATIC_STRETCH_PATTERNS = frozenset({"behind_neck", "wrist_extension"})
_LOWER = frozenset({"quadriceps", "hamstrings", "glutes", "calves", "adductors", "abductors"})


def infer_patterns(
    name: str,
    category: str | None = None,
    force: str | None = None,
    mechanic: str | None = None,
    equipment: str | None = None,
    muscles: Iterable[str] = (),
) -> tuple[tuple[Pattern, ...], str]:
    """(patterns, rule) for an exercise that carries no tags; ``rule`` names every rule that fired."""
    low = name.lower()
    found: dict[Pattern, str] = {}
    static_stretch = category == "stretching" and force == "static"
    for pattern, rule, rx in _NAME_RULES:
        if pattern == "wrist_extension" and _WRIST_NEUTRAL.search(low):
            continue
        if rx.search(low) and not (static_stretch and pattern not in _STATIC_STRETCH_PATTERNS):
            found.setdefault(pattern, rule)
    mus = set(muscles)
    if category == "plyometrics" and mus & _LOWER:
        found.setdefault("jump", "category:plyometrics+lower-body")
    if "bench press" in low and equipment == "barbell":
        found.setdefault("barbell_press", "name:barbell bench press")
    if (
        category != "stretching"
        and force == "push"
        and mechanic == "compound"
        and "shoulders" in mus
        and "overhead_press" not in found
        and "row" not in low
        and not _NOT_OVERHEAD.search(low)
    ):
        found.setdefault("overhead_press", "force:push+compound+shoulders")
    rules = sorted(set(found.values()))
    return tuple(sorted(found)), ("rule:" + ",".join(rules)) if rules else "rule:none"


def excluded_by(patterns: Iterable[Pattern], limitation: str) -> list[Pattern]:
    """The patterns among ``patterns`` that ``limitation`` rules out (empty: safe for it)."""
    bad = LIMITATION_PATTERNS.get(limitation)
    if bad is None:
        raise ValueError(f"unknown limitation {limitation!r}; known: {sorted(LIMITATION_PATTERNS)}")
    return sorted(set(patterns) & bad)


def verdict(patterns: Iterable[Pattern], limitations: Iterable[str]) -> dict[str, list[Pattern]]:
    """limitation → excluded patterns, only for the limitations that exclude something."""
    pats = list(patterns)
    return {lim: bad for lim in limitations if (bad := excluded_by(pats, lim))}
