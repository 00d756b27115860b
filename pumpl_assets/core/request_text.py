"""Plain-language plan requests ↔ :class:`RequestSpec` (one parser for training AND serving).

People type "Create a 30-minute HIIT workout", not the fixed layout the model is trained on.
:func:`parse_request` turns any text into a valid :class:`RequestSpec` (what it does not name
gets :data:`DEFAULTS`, and says so in ``defaults_used``), with the words that set each field
(``evidence``). The model's user message is then always the canonical line
:func:`pumpl_assets.core.prompts.request_to_prompt` renders, so training and serving show the
model the same prompt. :func:`phrase_request` writes varied natural phrasings of a spec for
training data (``parse_request(phrase_request(spec, rng)).spec == spec`` by construction and
by test); :func:`field_accuracy` scores the parser on hand-written requests
(``tests/data/heldout_requests.jsonl``).

Decisions (documented here, tested in ``tests/test_request_text.py``):

* **Canonical layout** (``Goal: … Time: … Level: … Equipment: … Days/week: … Limitations: …
  [Focus: …]``) is read exactly, field by field.
* **Goal**: HIIT / intervals / tabata / burn fat / lose weight / shred / get lean → fat_loss;
  stronger / strength / powerlifting / lift heavy → strength; build muscle / bulk / hypertrophy /
  mass / gains / **tone** → hypertrophy ("toning" is visible muscle, i.e. moderate-rep muscle
  work); stamina / endurance / cardio / run longer / marathon → endurance; stretch / flexibility
  / mobility / yoga / loosen up / stiff → mobility; get fit / in shape / general → general_fitness.
  Several goals named: the first one in the text wins.
* **Minutes**: "30-minute", "45 mins", "1h", "an hour", "half an hour", "quarter of an hour",
  "hour and a half", "1h30", "1.5 hours", "90'". A range ("20-30 min") takes its lower bound
  (the plan must fit the smaller promise); "quick"/"short" with no number → 20. Values are
  clamped to the spec's 10..120.
* **Level**: newbie / beginner / just starting / never worked out / out of shape → beginner;
  intermediate / some experience / "not a beginner" → intermediate; advanced / expert /
  experienced / athlete / years of lifting → expert.
* **Equipment** is additive ("body only" is always there); "no equipment" / bodyweight →
  body only; "full gym" / "at the gym" → barbell + dumbbell + cable + machine; "no dumbbells"
  removes dumbbells.
* **Days/week**: "3 days a week", "three times a week", "twice a week", "5x/week", "daily" /
  "every day" → 7 (what was said; the coaching standard decides the split), "every other day"
  → 3, "weekdays" → 5, "weekends" → 2, named days ("Mon/Wed/Fri") → their count; ranges take
  the lower bound.
* **Limitations** need the body part AND a problem word in the same clause ("bad knee",
  "knee pain", "my shoulder hurts"), or a condition (ACL, meniscus, sciatica, herniated disc,
  rotator cuff, impingement, carpal tunnel); "no jumping" / "low impact" → knees; negations
  ("no knee problems", "my knees are fine") are not limitations.
* **Focus**: core / abs → core; upper body / chest / "arms and chest" → upper_body; legs /
  lower body → lower_body; glutes / booty / butt → glutes; arms / biceps / triceps → arms.
  Upper and lower areas together (or "full body") → no focus; "belly fat" is fat loss, not a
  core focus (spot reduction is not a thing).
* Number words are read as numbers; common typos of the keywords are corrected (difflib,
  keyword vocabulary only).
"""

from __future__ import annotations

import difflib
import functools
import random
import re
from dataclasses import dataclass, field
from typing import Any

from pumpl_assets.core.schemas import (
    EQUIPMENT,
    FOCUSES,
    GOALS,
    LEVELS,
    LIMITATIONS,
    RequestSpec,
)

FIELDS: tuple[str, ...] = ("goal", "minutes", "level", "equipment", "days_per_week", "limitations", "focus")

DEFAULTS: dict[str, Any] = {
    "goal": "general_fitness",  # no stated goal: an all-round plan
    "minutes": 30,  # the product's example session length
    "level": "beginner",  # the safe assumption when nobody says otherwise
    "equipment": ["body only"],  # nothing named: nothing needed
    "days_per_week": 3,  # the usual starting frequency
    "limitations": [],  # none stated
    "focus": None,  # whole body
}

FULL_GYM: tuple[str, ...] = ("barbell", "dumbbell", "cable", "machine")


@dataclass
class UnderstoodRequest:
    """What :func:`parse_request` understood: the spec, which fields fell back to defaults, and why."""

    spec: RequestSpec
    defaults_used: list[str] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON for HTTP responses: the spec's fields, ``defaults_used`` and ``evidence``."""
        return {
            **self.spec.model_dump(mode="json"),
            "defaults_used": list(self.defaults_used),
            "evidence": dict(self.evidence),
        }


# ------------------------------------------------------------------------------------------
# Normalisation
# ------------------------------------------------------------------------------------------

_UNITS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}  # fmt: skip
_NUMWORD = re.compile(
    r"\b(?:("
    + "|".join(_TENS)
    + r")(?:[\s-]+(one|two|three|four|five|six|seven|eight|nine))?|("
    + "|".join(_UNITS)
    + r"))\b"
)

# Keywords typos are corrected towards (only words of 5+ letters are corrected).
_VOCAB = sorted(
    {
        "beginner",
        "beginners",
        "intermediate",
        "advanced",
        "experienced",
        "experience",
        "dumbbell",
        "dumbbells",
        "kettlebell",
        "kettlebells",
        "barbell",
        "strength",
        "stronger",
        "flexibility",
        "flexible",
        "stretching",
        "mobility",
        "minutes",
        "minute",
        "endurance",
        "stamina",
        "hypertrophy",
        "muscle",
        "muscles",
        "resistance",
        "shoulder",
        "shoulders",
        "equipment",
        "bodyweight",
        "workout",
        "exercise",
        "cardio",
        "glutes",
        "triceps",
        "biceps",
        "weekly",
        "sciatica",
        "herniated",
        "impingement",
        "medicine",
        "stability",
        "machines",
        "injury",
        "injured",
        "wrists",
        "lower",
        "knees",
        "weight",
        "weights",
        "hours",
        "times",
    }
)


@functools.lru_cache(maxsize=4096)
def _fix_word(w: str) -> str:
    if len(w) < 5 or not w.isalpha():
        return w
    if w in _VOCAB_SET:
        return w
    m = difflib.get_close_matches(w, _VOCAB, n=1, cutoff=0.84)
    return m[0] if m else w


_VOCAB_SET = frozenset(_VOCAB)


def _numword(m: re.Match[str]) -> str:
    if m.group(3):
        return str(_UNITS[m.group(3)])
    n = _TENS[m.group(1)]
    if m.group(2):
        n += _UNITS[m.group(2)]
    return str(n)


def normalize(text: str) -> str:
    """Lower case, plain dashes/quotes, typos of keywords fixed, number words as digits."""
    t = text.lower()
    t = t.replace("\u2013", "-").replace("\u2014", "-").replace("\u2019", "'").replace("\u2018", "'")
    t = re.sub(r"[a-z]+", lambda m: _fix_word(m.group(0)), t)
    t = _NUMWORD.sub(_numword, t)
    t = re.sub(r"\s+", " ", t)
    return t.strip()


# ------------------------------------------------------------------------------------------
# Canonical layout (prompts.request_to_prompt) — read exactly
# ------------------------------------------------------------------------------------------

_CANON = re.compile(
    r"^\s*goal:\s*([a-z_]+)\.\s*time:\s*(\d{1,3})\s*min\.\s*level:\s*([a-z]+)\.\s*"
    r"equipment:\s*([^.]+?)\.\s*days/week:\s*(\d)\.\s*limitations:\s*([^.]+?)\."
    r"(?:\s*focus:\s*([a-z_]+)\.)?\s*$",
    re.I,
)


def _parse_canonical(text: str) -> UnderstoodRequest | None:
    m = _CANON.match(text)
    if not m:
        return None
    goal, minutes, level, equip, days, lims, focus = m.groups()
    equipment = [x.strip().lower() for x in equip.split(",")]
    limitations = [] if lims.strip().lower() == "none" else [x.strip().lower() for x in lims.split(",")]
    if (
        goal.lower() not in GOALS
        or level.lower() not in LEVELS
        or any(e not in EQUIPMENT for e in equipment)
        or any(x not in LIMITATIONS for x in limitations)
        or (focus is not None and focus.lower() not in FOCUSES)
    ):
        return None
    try:
        spec = RequestSpec(
            goal=goal.lower(),  # type: ignore[arg-type]
            minutes=int(minutes),
            level=level.lower(),  # type: ignore[arg-type]
            equipment=equipment,  # type: ignore[arg-type]
            days_per_week=int(days),
            limitations=limitations,  # type: ignore[arg-type]
            focus=focus.lower() if focus else None,  # type: ignore[arg-type]
        )
    except ValueError:
        return None
    ev = {
        "goal": goal,
        "minutes": f"{minutes} min",
        "level": level,
        "equipment": equip,
        "days_per_week": days,
        "limitations": lims,
    }
    if focus:
        ev["focus"] = focus
    return UnderstoodRequest(spec=spec, defaults_used=[] if focus else ["focus"], evidence=ev)


# ------------------------------------------------------------------------------------------
# Free text
# ------------------------------------------------------------------------------------------

_NEG = r"(?:no|not|without|zero|never|don't|dont|do not|doesn't|does not|isn't|aren't|avoid|skip|none)"

_GOAL_PATTERNS: list[tuple[str, str]] = [
    ("fat_loss", r"fat[ _-]?loss|hiit|h\.i\.i\.t|high[- ]intensity|intervals?|tabata|emom|amrap|metcon|"
     r"fat[- ]burn\w*|lose (?:some )?(?:weight|fat|pounds|lbs|kilos|kg|the)|"
     r"(?:los(?:e|ing)|drop(?:ping)?|shed(?:ding)?) (?:\w+ ){0,2}?\d+ ?(?:lbs?|pounds|kg|kilos)|(?:to|a|on a) cut\b|cutting\b|dad bod|"
     r"burn(?:s|ing)? (?:some |more )?(?:fat|calories|cals)|weight ?loss|slim(?:ming)? down|shred\w*|cut(?:ting)? (?:phase|season)|"
     r"get(?:ting)? (?:lean|leaner|slim|slimmer|thinner|skinny)|lean(?:er)? out|drop (?:some |a few |a couple of )?(?:weight|pounds|fat|lbs|kilos|a size)|"
     r"belly fat|lose the gut|torch\w*|sweat\w*|calorie burn\w*"),
    ("strength", r"strength|stronger|strong|powerlift\w*|power ?lift\w*|lift(?:ing)? heavy|heavy (?:lift\w*|weights?|compound)|"
     r"heavier|1 ?rm|one rep max|(?:increase|improve|boost|raise|up) my (?:bench|squat|deadlift|lifts|total)|max(?:imum)? lifts?|pr(?:s)? on|personal record|5 ?x ?5|strongman"),
    ("hypertrophy", r"hypertrophy|build(?:ing)? (?:some |more |lean )?muscles?|put(?:ting)? on (?:some |more )?(?:muscle|size|mass)|muscle[- ]?(?:building|gain|growth|mass)|"
     r"gain(?:ing)? (?:some )?(?:muscle|mass|size|weight)|bulk\w*|\bmass\b|get(?:ting)? (?:big|bigger|huge|jacked|swole|buff|ripped)|"
     r"gains|bigger|make me big|bodybuild\w*|body build\w*|aesthetic\w*|ton(?:e|ed|ing)(?: up)?|definition|sculpt\w*|size"),
    ("endurance", r"endurance|stamina|cardio\w*|aerobic|run(?:ning)? (?:longer|further|farther|a|my first)|run longer|"
     r"marathon|half[- ]marathon|\d+ ?k run|\b(?:5|10) ?k\b|triathlon|conditioning|not (?:get(?:ting)? )?(?:winded|out of breath|gassed)|"
     r"winded|out of breath|gassed|go (?:longer|the distance)|last longer|cycling|hiking|hike"),
    ("mobility", r"mobility|flexib\w*|stretch\w*|yoga|pilates|loosen(?: up)?|limber|stiff(?:ness)?|tight hips|tightness|"
     r"range of motion|\brom\b|mobile\b|touch my toes|recovery|supple|desk job|sitting all day"),
    ("general_fitness", r"general[ _]fitness|general|overall|all[- ]round|all[- ]around|get(?:ting)? (?:fit|fitter|in shape|back in shape)|"
     r"in shape|stay(?:ing)? (?:fit|active|healthy|in shape)|keep fit|be healthier|healthier|get moving|fitness"),
]  # fmt: skip

_LEVEL_PATTERNS: list[tuple[str, str]] = [
    ("intermediate", r"not (?:a |an )?(?:total |complete |absolute )?(?:beginner|newbie|novice)|intermediate|"
     r"some experience|bit of experience|a little experience|moderate(?:ly)?(?: fit| experienced)?|mid[- ]?level|"
     r"(?:train|lift|work)\w* (?:out )?(?:for )?(?:about |around |over |almost |nearly )?(?:a|1|2) years?|"
     r"(?:train|lift|work)\w* (?:out )?(?:for )?(?:about |around |over |almost |nearly )?(?:a few|some|6|7|8|9|10|11) months|decent shape|fairly fit|reasonably fit|"
     r"somewhat fit|regular gym|been around the gym|know my way around"),
    ("expert", r"advanced|expert|very experienced|experienced|athlete|athletic|pro\b|professional|veteran|seasoned|"
     r"competitive|compete|elite|(?:[3-9]|\d\d)\+? years? (?:of )?(?:training|lifting|experience|in the gym)|"
     r"(?:train|lift|work)\w* (?:out )?(?:for )?(?:over |about |around )?(?:[3-9]|\d\d) years|years of (?:training|lifting)|"
     r"in great shape|very fit|super fit"),
    ("beginner", r"beginner|beginners|newbie|noob|novice|new to|just start\w*|starting out|start(?:ing)? from (?:zero|scratch)|"
     r"first time|never (?:worked out|exercised|trained|lifted|been to a gym|done)|haven't (?:worked out|exercised|trained)|"
     r"out of shape|unfit|couch|sedentary|total newb|getting back into|rusty|easy|gentle|entry[- ]level|basic"),
]  # fmt: skip

_EQUIP_PATTERNS: list[tuple[str, str]] = [
    ("dumbbell", r"dumb ?bells?|dumbells?|dumbbels?|\bdbs?\b|hand weights|free weights"),
    ("kettlebells", r"kettle ?bells?|\bkbs?\b|kettlebels?"),
    ("bands", r"resistance bands?|resistance tubes?|\bbands?\b|loop bands?|mini bands?|therabands?|tubing"),
    ("barbell", r"barbells?|bar bells?|squat rack|power rack|olympic bar|plates and a bar"),
    ("cable", r"cables?|pulley|cable (?:machine|station)"),
    ("machine", r"(?<!cable )machines?|smith"),
    ("medicine ball", r"medicine ?balls?|med ?balls?|slam ?balls?|wall ?balls?"),
    ("exercise ball", r"stability ?balls?|swiss ?balls?|exercise ?balls?|yoga ?balls?|physio ?balls?|balance ?balls?|gym ?balls?"),
    ("foam roll", r"foam ?roll\w*"),
    ("e-z curl bar", r"e-?z(?: curl)? bar|curl bar"),
    ("other", r"other (?:equipment|gear|stuff)|misc(?:ellaneous)? (?:equipment|gear)"),
]  # fmt: skip

_FULL_GYM = re.compile(
    r"(?:full|fully[- ]equipped|commercial|big|whole|real|proper|regular|public|hotel|planet fitness|local|nice|the|a|my)"
    r" gym\b(?! at home)|\bgym membership|\bat (?:the|a|my) gym|\bgym access|\bin the gym|\bgo to the gym|everything available"
    r"|all the equipment|any equipment|all equipment"
)
_ANY_GYM = re.compile(r"\bgym\b(?! (?:ball|mat))")
_EXPLICIT_GYM = re.compile(
    r"(?:full|fully[- ]equipped|commercial|big|whole|proper) gym|all the equipment|any equipment|all equipment"
)
_HOME_GYM = re.compile(r"home gym|garage gym|basement gym")
_NO_EQUIP = re.compile(
    r"no equipment|without (?:any )?equipment|no gear|bodyweight|body weight|body only|nothing but my body|no weights|"
    r"zero equipment|equipment[- ]free|calisthenics|with nothing|don't have (?:any )?(?:equipment|weights)|no gym|"
    r"don't have anything|nothing at home|just my body|own body"
)

_DAY_NAMES = re.compile(
    r"\b(mon(?:day)?s?|tue(?:s(?:day)?)?s?|wed(?:nesday|s)?|thu(?:r(?:s(?:day)?)?)?s?|fri(?:day)?s?|sat(?:urday)?s?|sun(?:day)?s?)\b"
)

_PARTS: dict[str, str] = {
    "knees": r"knees?|acl|mcl|pcl|meniscus|patella\w*|runner's knee",
    "lower back": r"lower back|low back|lumbar|back|spine|spinal|sciatica|herniated|slipped disc|bulging disc|disc|discs",
    "shoulders": r"shoulders?|rotator cuff|labrum|ac joint",
    "wrists": r"wrists?|carpal tunnel",
}
# Words that are a condition on their own (no problem word needed).
_CONDITIONS: dict[str, str] = {
    "knees": r"\b(?:acl|mcl|pcl|meniscus|patellar?\w*|runner's knee|knee replacement|knee surgery)\b",
    "lower back": r"\b(?:sciatica|herniated|slipped disc|bulging disc|disc (?:issue|problem|injury)\w*|lumbar|back pain|backache|bad back)\b",
    "shoulders": r"\b(?:rotator cuff|impingement|labrum|frozen shoulder|dislocated shoulder)\b",
    "wrists": r"\b(?:carpal tunnel|wrist pain)\b",
}
_PROBLEM = re.compile(
    r"\b(?:bad|pain\w*|hurt\w*|sore\w*|ache\w*|aching|achy|injur\w*|surgery|surgeries|operat\w*|torn|tear|tore|"
    r"replace\w*|arthritis|arthritic|tendin\w*|tendon\w*|bursitis|weak|problem\w*|issue\w*|trouble\w*|dodgy|gammy|"
    r"busted|wonky|creaky|cranky|recover\w*|rehab\w*|tweak\w*|strain\w*|sprain\w*|pull(?:ed)?|gives? out|"
    r"careful|easy on|go easy|protect\w*|spare|friendly|gentle on|impinge\w*|dislocat\w*|herniat\w*|bulging|"
    r"fractur\w*|broke|broken|niggl\w*|twinge\w*|flare\w*|acting up|not great|messed up|screwed up|stiff|"
    r"condition|limited|limitation\w*|killing|wrecked|shot|bother\w*|bug(?:s|ging|ged)|physio\w*|doctor|chiro\w*|osteo\w*|clicks?|clicking|unstable|instability)\b"
)
_LIM_NEG_BEFORE = r"\b(?:no|without|zero|never had|don't have|do not have|dont have|not any|free of)\s+(?:\w+\s+){0,3}?(?:{part})"
_LIM_FINE_AFTER = (
    r"(?:{part})\w*\s+(?:are|is|'re|feel|feels|seem|seems)\s+(?:\w+\s+)?"
    r"(?:fine|ok|okay|good|great|healthy|perfect|strong|solid|alright|all right|100)"
)
_NO_JUMP = re.compile(
    r"no (?:jumping|jumps|jump\w*|plyo\w*|impact)|(?:can't|cannot|unable to|no) kneel\w*|low[- ]impact|without (?:jumping|jumps|impact)|can't jump|cannot jump|"
    r"joint[- ]friendly|easy on (?:the|my) joints|nothing (?:that involves )?jump\w*|avoid (?:jumping|jumps|impact)|"
    r"don't jump|no high[- ]impact"
)
_CLAUSE_SPLIT = re.compile(r"[.;!?\n,]| but | and | also | though | although | plus ")

_FOCUS_TERMS: list[tuple[str, str]] = [
    ("full", r"full[- ]body|total[- ]body|whole[- ]body|everything|all over"),
    (
        "upper",
        r"upper[ _-]?body|upper half|chest|pecs|back and|and back|back day|lats|shoulders|delts|torso|push day|pull day",
    ),
    ("lower", r"lower[ _-]?body|lower half|legs?|leg day|quads|hamstrings|calves|thighs"),
    ("glutes", r"glutes?|booty|butt|bum|peach|behind|backside|hip thrust\w*"),
    (
        "arms",
        r"arms|arm[- ](?:focused|day|work|workout|blaster|session|routine|pump)|biceps?|triceps?|guns|bis|tris|forearms",
    ),
    ("core", r"core|abs|ab\b|six[- ]?pack|stomach|midsection|obliques|abdominals?|tummy|flat belly"),
]


def _first(patterns: list[tuple[str, str]], text: str) -> tuple[str, str] | None:
    """The label whose pattern matches earliest in ``text`` (and the matched words)."""
    best: tuple[int, str, str] | None = None
    for label, pat in patterns:
        for m in re.finditer(r"\b(?:" + pat + r")", text):
            if _negated(text, m.start()):
                continue
            if best is None or m.start() < best[0]:
                best = (m.start(), label, m.group(0))
            break
    return (best[1], best[2]) if best else None


def _negated(text: str, start: int) -> bool:
    before = text[max(0, start - 20) : start]
    return (
        re.search(r"\b(?:not|no|don't|dont|without|never|isn't|aren't|nothing)\s+(?:\w+\s+)?$", before)
        is not None
    )


def _clamp_minutes(n: float) -> int:
    return int(max(10, min(120, round(n))))


_MIN_UNIT = r"(?:m|min|mins|minute|minutes|mn|mins?\.|')"
_HOUR_UNIT = r"(?:h|hr|hrs|hour|hours)"


def _minutes(t: str) -> tuple[int, str] | None:
    rules: list[tuple[str, Any]] = [
        (r"\b(?:an?|1) (?:hour|hr) and (?:a )?half\b|\b1 and a half hours?\b|\bhour and a half\b|\b90 ?'", lambda m: 90),
        (r"\b(?:an?|1) (?:hour|hr) and (\d{1,2}) ?" + _MIN_UNIT + r"?", lambda m: 60 + int(m.group(1))),
        (r"\b(\d)\s*" + _HOUR_UNIT + r"\s*(?:and\s*)?(\d{1,2})\s*" + _MIN_UNIT + r"?(?![\w/])",
         lambda m: 60 * int(m.group(1)) + int(m.group(2))),
        (r"\b3 quarters? of an hour\b|\bthree[- ]quarters of an hour\b", lambda m: 45),
        (r"\b(?:a )?quarter (?:of an )?hour\b", lambda m: 15),
        (r"\bhalf (?:an |a )?hour\b|\b1/2 (?:an )?hour\b|\bhalf-hour\b", lambda m: 30),
        (r"\b(\d{1,3})\s*(?:-|to|or|–)\s*\d{1,3}\s*-?\s*" + _MIN_UNIT + r"(?![a-z])", lambda m: int(m.group(1))),
        (r"\b(\d{1,3}(?:\.\d+)?)\s*-?\s*" + _MIN_UNIT + r"(?![a-z])", lambda m: float(m.group(1))),
        (r"\b(\d(?:\.\d+)?)\s*-?\s*" + _HOUR_UNIT + r"(?![a-z])", lambda m: 60 * float(m.group(1))),
        (r"\b(?:an?|one) (?:full )?(?:hour|hr)\b|\bhour[- ]long\b|\bhourly\b", lambda m: 60),
        (r"\b(?:a )?couple (?:of )?hours\b", lambda m: 120),
    ]  # fmt: skip
    best: tuple[int, int, str] | None = None
    for pat, fn in rules:
        m = re.search(pat, t)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), _clamp_minutes(fn(m)), m.group(0))
    if best is not None:
        return best[1], best[2]
    m = re.search(r"\b(?:quick|short|fast|brief|little|mini)\b", t)
    if m:
        return 20, m.group(0)
    return None


def _days(t: str) -> tuple[int, str] | None:
    rules: list[tuple[str, Any]] = [
        (r"\bevery other day\b|\balternate days\b", lambda m: 3),
        (r"\b(?:every ?day|daily|7 days straight|all week)\b", lambda m: 7),
        (r"\b(?:week ?days|mon(?:day)?\s*(?:-|to|thru|through)\s*fri(?:day)?)\b", lambda m: 5),
        (r"\b(?:week ?ends?|sat(?:urday)?s? and sun(?:day)?s?)\b", lambda m: 2),
        (r"\bonce (?:a|per|each|every) ?(?:week|wk)\b|\bonce weekly\b", lambda m: 1),
        (r"\btwice (?:a|per|each|every|in a) ?(?:week|wk)\b|\btwice weekly\b", lambda m: 2),
        (r"\bthrice\b", lambda m: 3),
        (r"\b(?:a )?couple (?:of )?(?:days|times|sessions|workouts)\b", lambda m: 2),
        (r"\b(?:a )?few (?:days|times|sessions|workouts) (?:a|per|each|every) ?(?:week|wk)\b", lambda m: 3),
        (r"\b([1-7])\s*(?:-|to|or|/)\s*[1-7]\s*(?:x|days?|times?|sessions?|workouts?)?\s*(?:a|per|/|each|every|in a)\s*(?:week|wk)\b",
         lambda m: int(m.group(1))),
        (r"\b([1-7])\s*(?:x|days?|times?|sessions?|workouts?|trainings?|runs|rides|swims|classes|d)\s*(?:a|per|/|each|every|in a|in the)?\s*(?:week|wk)\b",
         lambda m: int(m.group(1))),
        (r"\b([1-7])x\b(?!\s*\d)", lambda m: int(m.group(1))),
        (r"\b([1-7])[- ]?days?[- ]split\b", lambda m: int(m.group(1))),
        (r"\b([1-7])\s*(?:-|to|or)\s*[1-7] days\b", lambda m: int(m.group(1))),
        (r"\b([1-7]) days?\b(?![- ]?(?:plan|program|programme|challenge|streak|rest|off|in a row|split))",
         lambda m: int(m.group(1))),
        (r"\b([1-7]) times\b", lambda m: int(m.group(1))),
        (r"\b([1-7]) (?:mornings|evenings|nights|lunch(?:es|times)?|afternoons)\b", lambda m: int(m.group(1))),
        (r"\bweekly\b", lambda m: 1),
    ]  # fmt: skip
    best: tuple[int, int, str] | None = None
    for pat, fn in rules:
        m = re.search(pat, t)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), int(fn(m)), m.group(0))
    if best is not None:
        return best[1], best[2]
    days = []
    for m in _DAY_NAMES.finditer(t):
        d = m.group(1)[:2]
        if d not in days:
            days.append(d)
    if len(days) >= 2:
        return len(days), "/".join(days)
    m = re.search(
        r"\b(?:a|per|each) day\b|\bevery (?:morning|evening|night)\b|\beach (?:morning|evening|night)\b", t
    )
    if m:
        return 7, m.group(0)
    return None


def _equipment(t: str) -> tuple[list[str], str] | None:
    found: list[tuple[int, str, str]] = []
    removed: set[str] = set()
    for label, pat in _EQUIP_PATTERNS:
        for m in re.finditer(r"\b(?:" + pat + r")", t):
            if label == "machine" and re.search(
                r"\b(?:no|not|without) (?:\w+ )?$", t[max(0, m.start() - 12) : m.start()]
            ):
                removed.add(label)
                continue
            if label == "bands" and re.search(
                r"rubber band|band ?width", t[max(0, m.start() - 8) : m.end() + 6]
            ):
                continue
            if _negated(t, m.start()) or re.search(
                r"\b(?:no|without|scared of|afraid of|hate|not)\s+(?:\w+\s+){0,2}$",
                t[max(0, m.start() - 25) : m.start()],
            ):
                removed.add(label)
                continue
            found.append((m.start(), label, m.group(0)))
    # A gym means its usual kit, unless the person lists what they have there ("hotel gym: dumbbells
    # and a cable"); "full/commercial gym" always means everything.
    gym = _EXPLICIT_GYM.search(t) or (None if found else (_FULL_GYM.search(t) or _ANY_GYM.search(t)))
    if (
        gym
        and not _HOME_GYM.search(t[max(0, gym.start() - 8) : gym.end() + 2])
        and not re.search(
            r"\b(?:no|not|without|can't|cannot|don't|never|hate|skip|avoid|instead of)\b[^.]{0,12}$",
            t[max(0, gym.start() - 20) : gym.start()],
        )
    ):
        for eq in FULL_GYM:
            found.append((gym.start(), eq, gym.group(0)))
    found.sort(key=lambda x: x[0])  # order of mention (stable: a full gym keeps FULL_GYM order)
    labels = [lab for _, lab, _ in found if lab not in removed]
    if labels:
        ordered = list(dict.fromkeys(labels))
        words = ", ".join(dict.fromkeys(w for _, lab, w in found if lab in ordered))
        return ["body only", *ordered], words
    none = _NO_EQUIP.search(t)
    if none:
        return ["body only"], none.group(0)
    return None


def _limitations(t: str) -> tuple[list[str], str] | None:
    found: dict[str, str] = {}
    pos: dict[str, int] = {}  # where each was named: the order of mention is kept
    for lim in LIMITATIONS:
        part = _PARTS[lim]
        negs = [(m.start(), m.end()) for m in re.finditer(_LIM_NEG_BEFORE.replace("{part}", part), t)] + [
            (m.start(), m.end()) for m in re.finditer(_LIM_FINE_AFTER.replace("{part}", part), t)
        ]

        def negated(s: int, e: int, negs: list[tuple[int, int]] = negs) -> bool:
            return any(a <= s and e <= b for a, b in negs)

        m = re.search(_CONDITIONS[lim], t)
        if m and not negated(m.start(), m.end()):
            found[lim], pos[lim] = m.group(0), m.start()
            continue
        cursor = 0
        clauses = _CLAUSE_SPLIT.split(t)
        for ci, clause in enumerate(clauses):
            start = t.find(clause, cursor)
            cursor = start + len(clause)
            # "… my lower back? it's been killing me": a pronoun clause continues the one before.
            follow = clauses[ci + 1] if ci + 1 < len(clauses) else ""
            if re.match(r"\s*(?:it|it's|its|they|they're|which)\b", follow):
                clause = clause + " " + follow
            # A problem word anywhere in the clause (not a wish to prevent one): computed once per clause.
            if not _PROBLEM.search(clause) or re.search(r"\bprevent\w*|\bavoid (?:an? )?injur", clause):
                continue
            back_ok = lim != "lower back" or bool(
                re.search(
                    r"\b(?:my|bad|sore|hurt\w*|injur\w*|lower|low|the)\s+back\b|\bback (?:pain|problems?|issues?|injur\w*|hurts|is)",
                    clause,
                )
            )
            for pm in re.finditer(r"\b(?:" + part + r")\b", clause):
                s, e = start + pm.start(), start + pm.end()
                if negated(s, e) or (pm.group(0) == "back" and not back_ok):
                    continue
                found[lim], pos[lim] = clause.strip(), s
                break
            if lim in found:
                break
    if "knees" not in found:
        m = _NO_JUMP.search(t)
        if m:
            found["knees"], pos["knees"] = m.group(0), m.start()
    if not found:
        return None
    order = sorted(found, key=lambda lim: pos.get(lim, len(t)))
    return order, "; ".join(found[lim] for lim in order)


_FOCUS_MAP = {
    "upper": "upper_body",
    "lower": "lower_body",
    "glutes": "glutes",
    "arms": "arms",
    "core": "core",
}
_FOCUS_MARK = re.compile(
    r"^[- ]?(?:focus\w*|emphasis|heavy|dominant)|(?:focus(?:ing|ed)? on|emphasis on|especially) (?:my |the )?$"
)
_FINE = re.compile(
    r"^\w* (?:are|is|feel|feels) (?:\w+ )?(?:fine|ok|okay|good|great|healthy|perfect|strong|alright)"
)
_LIM_OF_PART = {"shoulders": "shoulders", "wrists": "wrists", "knees": "knees"}


def _focus(t: str, limitations: list[str]) -> tuple[str, str] | None:
    hits: list[tuple[int, str, str, bool]] = []
    for label, pat in _FOCUS_TERMS:
        for m in re.finditer(r"\b(?:" + pat + r")\b", t):
            word = m.group(0)
            if _negated(t, m.start()) or _FINE.match(t[m.end() : m.end() + 60]):
                continue
            # A body part named as a problem is a limitation, not a focus.
            if word == "shoulders" and "shoulders" in limitations:
                continue
            # A few words either side, within the clause.
            before = re.split(r"[.,;!?]", t[max(0, m.start() - 20) : m.start()])[-1]
            after = re.split(r"[.,;!?]", t[m.end() : m.end() + 20])[0]
            near = " ".join((before + word + after).split(" ")[1:-1])
            if label in ("upper", "lower") and _PROBLEM.search(near) and not re.search(r"\bprevent", near):
                continue
            if label == "glutes" and word == "behind" and not re.search(r"\bmy behind\b", t):
                continue
            if label == "lower" and re.search(r"\blower back\b", t[m.start() : m.end() + 6]):
                continue
            if (
                label == "upper"
                and word in ("back and", "and back")
                and not re.search(
                    r"(?:chest|biceps?|arms|shoulders) and back|back and (?:chest|biceps?|arms|shoulders)", t
                )
            ):
                continue
            marked = bool(
                _FOCUS_MARK.search(t[m.end() : m.end() + 10])
                or _FOCUS_MARK.search(t[max(0, m.start() - 24) : m.start()])
            )
            hits.append((m.start(), label, word, marked))
    if not hits:
        return None
    hits.sort()
    labels = [lab for _, lab, _, _ in hits]
    words = ", ".join(dict.fromkeys(w for _, _, w, _ in hits))
    if "full" in labels:
        return None
    marked_areas = [lab for _, lab, _, mk in hits if mk and lab != "full"]
    if len(set(marked_areas)) == 1:  # "glute focused lower body day": the marked_areas area wins
        return _FOCUS_MAP[marked_areas[0]], words
    kinds = set(labels)
    if kinds & {"upper", "arms"} and kinds & {"lower", "glutes"}:
        return None  # upper and lower together: a whole-body plan
    if kinds <= {"upper", "arms"} and "upper" in kinds:
        return "upper_body", words
    if kinds <= {"lower", "glutes"} and "lower" in kinds:
        return "lower_body", words
    return _FOCUS_MAP[labels[0]], words  # otherwise the first area named


def _level(t: str) -> tuple[str, str] | None:
    # "not a beginner" starts before "beginner", so the earliest match reads it as intermediate.
    return _first(_LEVEL_PATTERNS, t)


def _parse_free(text: str) -> UnderstoodRequest:
    t = normalize(text)
    found: dict[str, Any] = {}
    ev: dict[str, str] = {}
    g = _first(_GOAL_PATTERNS, t)
    if g:
        found["goal"], ev["goal"] = g
    mins = _minutes(t)
    if mins:
        found["minutes"], ev["minutes"] = mins
    lv = _level(t)
    if lv:
        found["level"], ev["level"] = lv
    eq = _equipment(t)
    if eq:
        found["equipment"], ev["equipment"] = eq
    d = _days(t)
    if d:
        found["days_per_week"], ev["days_per_week"] = d
    lim = _limitations(t)
    if lim:
        found["limitations"], ev["limitations"] = lim
    fo = _focus(t, found.get("limitations", []))
    if fo:
        found["focus"], ev["focus"] = fo
    defaults_used = [f for f in FIELDS if f not in found]
    values = {f: found.get(f, DEFAULTS[f]) for f in FIELDS}
    spec = RequestSpec.model_validate(values)
    return UnderstoodRequest(spec=spec, defaults_used=defaults_used, evidence=ev)


def parse_request(text: str) -> UnderstoodRequest:
    """Always a valid :class:`RequestSpec`: the canonical layout exactly, else the words people type."""
    canon = _parse_canonical(text)
    if canon is not None:
        return canon
    return _parse_free(text)


# ------------------------------------------------------------------------------------------
# Phrasings for training data
# ------------------------------------------------------------------------------------------

_GOAL_PHRASES: dict[str, list[str]] = {
    "fat_loss": ["lose weight", "burn fat", "a HIIT workout", "fat loss", "get lean", "shred some fat",
                 "drop a few pounds", "interval training to burn fat", "weight loss"],
    "strength": ["get stronger", "build strength", "strength training", "lift heavier", "a strength workout",
                 "powerlifting-style training", "get strong"],
    "hypertrophy": ["build muscle", "bulk up", "hypertrophy", "muscle growth", "put on some muscle",
                    "gain muscle mass", "a muscle-building workout"],
    "endurance": ["build endurance", "improve my stamina", "cardio endurance", "run longer", "better stamina",
                  "an endurance workout", "improve my cardio"],
    "mobility": ["improve my flexibility", "mobility", "stretching", "loosen up", "a mobility routine",
                 "get more flexible", "yoga-style stretching"],
    "general_fitness": ["get fit", "get in shape", "general fitness", "stay in shape", "overall fitness",
                        "get fitter"],
}  # fmt: skip
_LEVEL_PHRASES: dict[str, list[str]] = {
    "beginner": ["I'm a beginner", "beginner level", "I'm new to working out", "I've never worked out",
                 "total newbie here", "I'm just starting out", "novice"],
    "intermediate": ["I'm intermediate", "intermediate level", "I have some experience",
                     "I've been training for a year", "I'm not a beginner", "moderate experience"],
    "expert": ["I'm advanced", "expert level", "I'm very experienced", "I've been lifting for 6 years",
               "advanced lifter", "I'm an athlete"],
}  # fmt: skip
_EQUIP_WORDS: dict[str, list[str]] = {
    "dumbbell": ["dumbbells", "a pair of dumbbells", "DBs", "some dumbbells"],
    "barbell": ["a barbell", "barbell", "a squat rack and barbell"],
    "kettlebells": ["kettlebells", "a kettlebell", "KBs"],
    "cable": ["a cable machine", "cables", "a cable station"],
    "machine": ["machines", "weight machines", "a Smith machine"],
    "bands": ["resistance bands", "a resistance band", "bands"],
    "medicine ball": ["a medicine ball", "a med ball"],
    "exercise ball": ["a stability ball", "a swiss ball", "an exercise ball"],
    "foam roll": ["a foam roller", "foam roller"],
    "e-z curl bar": ["an EZ bar", "an EZ curl bar", "a curl bar"],
    "other": ["other equipment"],
}
_LIM_PHRASES: dict[str, list[str]] = {
    "knees": ["a bad knee", "knee pain", "sore knees", "an old ACL injury", "dodgy knees"],
    "lower back": ["lower back pain", "a bad back", "a herniated disc", "sciatica"],
    "shoulders": ["shoulder impingement", "a bad shoulder", "a rotator cuff injury", "shoulder pain"],
    "wrists": ["wrist pain", "carpal tunnel", "sore wrists"],
}
_FOCUS_PHRASES: dict[str, list[str]] = {
    "core": ["focus on my core", "with extra ab work", "core-focused", "emphasis on abs"],
    "upper_body": ["focus on upper body", "upper-body focused", "with emphasis on chest and arms"],
    "lower_body": ["focus on legs", "lower-body focused", "with emphasis on my legs"],
    "glutes": ["focus on glutes", "glute-focused", "with extra booty work"],
    "arms": ["focus on arms", "with extra biceps and triceps work", "arm-focused"],
}
_NUM_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 10: "ten",
              15: "fifteen", 20: "twenty", 25: "twenty-five", 30: "thirty", 40: "forty", 45: "forty-five",
              50: "fifty", 60: "sixty", 75: "seventy-five", 90: "ninety"}  # fmt: skip


def _minutes_phrase(n: int, rng: random.Random) -> str:
    options = [f"{n} minutes", f"{n}-minute", f"{n} min", f"{n} mins", f"{n}min"]
    special = {
        15: ["a quarter of an hour"],
        30: ["half an hour", "30-min"],
        60: ["an hour", "1 hour", "1h", "one hour"],
        90: ["an hour and a half", "1.5 hours", "90 minutes"],
        120: ["2 hours", "two hours"],
        45: ["45 mins", "forty-five minutes"],
    }
    options += special.get(n, [])
    if n in _NUM_WORDS and n not in (1, 2, 3, 4, 5, 6, 7):
        options.append(f"{_NUM_WORDS[n]} minutes")
    choice = rng.choice(options)
    if choice.endswith("-minute") or choice == "30-min":
        return choice  # adjective form; callers add "workout"/"session"
    return choice


def _days_phrase(n: int, rng: random.Random) -> str:
    options = [f"{n} days a week", f"{n}x/week", f"{n} times per week", f"{n} days per week"]
    if n in _NUM_WORDS:
        options.append(f"{_NUM_WORDS[n]} times a week")
        options.append(f"{_NUM_WORDS[n]} days a week")
    if n == 1:
        options = ["once a week", "1 day a week", "one day per week"]
    if n == 2:
        options += ["twice a week"]
    if n == 3:
        options += ["Mon/Wed/Fri"]
    if n == 5:
        options += ["on weekdays"]
    if n == 7:
        options += ["every day", "daily"]
    return rng.choice(options)


def _join(items: list[str], rng: random.Random) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + rng.choice([" and ", ", and ", " & "]) + items[-1]


def phrase_request(spec: RequestSpec, rng: random.Random) -> str:
    """One natural phrasing of ``spec`` (templates, synonyms, field orders; defaults sometimes left out).

    A field is left out only when its value equals :data:`DEFAULTS`, so parsing the phrase gives
    ``spec`` back exactly.
    """
    extra = [e for e in spec.equipment if e != "body only"]

    def omit(name: str, value: Any) -> bool:
        return value == DEFAULTS[name] and rng.random() < 0.45

    mins = _minutes_phrase(spec.minutes, rng)
    adjective = mins.endswith("-minute") or mins.endswith("-min")
    goal = rng.choice(_GOAL_PHRASES[spec.goal])
    parts: list[str] = []
    lead = rng.choice(["", "Please ", "Hey, ", "Hi! ", "Can you "])
    verb = rng.choice(["make me", "create", "give me", "write me", "build me", "design", "I need", "I want"])
    if lead == "Can you " and verb in ("I need", "I want"):
        verb = "make me"
    noun = rng.choice(["workout", "plan", "routine", "training plan", "program", "session"])
    if omit("minutes", spec.minutes):
        head = f"{lead}{verb} a {noun}"
    elif adjective:
        head = f"{lead}{verb} a {mins} {noun}"
    else:
        head = f"{lead}{verb} a {noun} of {mins}" if rng.random() < 0.3 else f"{lead}{verb} a {noun}, {mins}"
    head = head[0].upper() + head[1:]
    if not omit("goal", spec.goal):
        parts.append(rng.choice([f"to {goal}", f"goal: {goal}", f"I want to {goal}", f"for {goal}"])
                     if not goal.startswith(("a ", "an ")) else f"something like {goal}")  # fmt: skip
    if not omit("level", spec.level):
        parts.append(rng.choice(_LEVEL_PHRASES[spec.level]))
    if extra:
        words = [rng.choice(_EQUIP_WORDS[e]) for e in extra]
        parts.append(
            rng.choice(["I have ", "I've got ", "equipment: ", "using ", "with "]) + _join(words, rng)
        )
    elif not omit("equipment", spec.equipment):
        parts.append(
            rng.choice(["no equipment", "bodyweight only", "I have no equipment", "without equipment"])
        )
    if not omit("days_per_week", spec.days_per_week):
        parts.append(
            rng.choice(["", "training ", "I can train ", "I work out "])
            + _days_phrase(spec.days_per_week, rng)
        )
    if spec.limitations:
        words = [rng.choice(_LIM_PHRASES[x]) for x in spec.limitations]
        parts.append(rng.choice(["I have ", "I've got ", "careful, I have ", "note: "]) + _join(words, rng))
    elif not omit("limitations", spec.limitations):
        parts.append(rng.choice(["no injuries", "no limitations", "nothing hurts"]))
    if spec.focus is not None:
        parts.append(rng.choice(_FOCUS_PHRASES[spec.focus]))
    rng.shuffle(parts)
    sep = rng.choice([". ", ", ", "; "])
    body = sep.join(parts)
    text = head + (sep + body if body else "") + rng.choice([".", "", "!", " please."])
    return text.lower() if rng.random() < 0.1 else text


def phrase_for(spec: RequestSpec, seed: int | str = 0) -> str:
    """A phrasing of ``spec`` that depends only on (spec, seed): stable across reruns of a data step."""
    return phrase_request(spec, random.Random(f"pumpl-phrase:{seed}:{spec.key()}"))


# ------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------


def expected_spec(row: dict[str, Any]) -> dict[str, Any]:
    """A labelled row's expected fields (a field the row does not name is the default)."""
    exp = {f: row.get(f, DEFAULTS[f]) for f in FIELDS}
    exp["equipment"] = sorted({"body only", *exp["equipment"]})
    exp["limitations"] = sorted(set(exp["limitations"]))
    return exp


def _comparable(spec: RequestSpec) -> dict[str, Any]:
    d = spec.model_dump(mode="json")
    d["equipment"] = sorted(set(d["equipment"]))
    d["limitations"] = sorted(set(d["limitations"]))
    return d


def field_accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Parse each row's ``text``; per-field and overall accuracy against its labels, and the failing rows.

    Every field of every row counts once (equipment and limitations compared as sets).
    """
    per_field = dict.fromkeys(FIELDS, 0)
    failures: list[dict[str, Any]] = []
    for row in rows:
        exp = expected_spec(row)
        got = _comparable(parse_request(row["text"]).spec)
        wrong = {f: {"expected": exp[f], "got": got[f]} for f in FIELDS if exp[f] != got[f]}
        for f in FIELDS:
            per_field[f] += int(f not in wrong)
        if wrong:
            failures.append({"text": row["text"], "wrong": wrong})
    n = len(rows)
    return {
        "rows": n,
        "overall": (sum(per_field.values()) / (n * len(FIELDS))) if n else 0.0,
        "per_field": {f: (c / n if n else 0.0) for f, c in per_field.items()},
        "failures": failures,
    }
