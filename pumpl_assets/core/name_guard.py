"""Decode-time guard: no exercise twice in one session of a served plan.

The coaching standard forbids repeating an exercise within a session (``validate.py``'s ``duplicates``
check), and repeating one is the most common fault of the small fine-tuned model (README: 89 of the
served failure reasons). A JSON schema cannot say "a name not used earlier in this session" (xgrammar
has no ``uniqueItems``), so this guard runs after the grammar's token mask: while the model writes an
exercise name inside a session, it removes every token that would complete a name already used in that
session, or start a name whose only continuations are used ones. The grammar decides which names a block
allows; the guard only narrows that set, so the output stays grammar-valid.

When a block's allowed names are all used already (its pool is exhausted), nothing is removed and the
plan keeps the repeat (counted in ``fallbacks``): ``duplicates`` is guaranteed in served mode except
then, and the evaluation still scores it on every served plan.

Given the request's :class:`PlanRules` (built by :func:`grammar.request_plan_rules`), the guard also keeps
five rules of the standard reachable that a grammar cannot state, because each depends on what the
session already holds:

* **balance** [ACSM09, NSCA16]: a resistance session covers its day's regions (full body: lower body,
  push, pull; upper: push, pull; lower: knee- and hip-dominant), as ``validate``'s ``balance`` check
  counts them (:func:`standard.balance_needed`);
* **focus**: a requested focus gets ≥ 40% of the main work (:func:`standard.focus_needed`);
* **proportion** [NSCA16, ACSM11]: no region of a resistance day gets more than twice the exercises of
  another it trains while the person has more for that one (:func:`standard.proportion_allows`, the
  increment rule the offline coach follows; ``validate``'s ``proportion`` check);
* **cool-down** [ACSM-FLEX]: at least half of the stretches work muscles the session's main work
  trained, as far as the person's stretches allow (``validate``'s ``cooldown`` check);
* **length**: the main list does not close while its exercises, even at the top of their ranges, leave
  the session short of the requested length −10% (what :mod:`finalize` can fit is all it may count on).

Balance and focus are debts: the session's size is the model's ``main_count`` (at least the grammar's
``minItems``, at most the items its length holds once the written ones sit at the bottom of their ranges
— more would be dropped by :mod:`finalize`); while the slots left can still pay every debt, the model chooses freely; when they can
only just pay, a name must pay one (the narrowest layer), and the main list does not close while a
debt remains that one more exercise can pay and fit. Each layer steps aside when it would leave the
grammar nothing (counted in ``rule_fallbacks``); then the next wider set applies (names in
proportion among those that pay, then those that pay, then unused names, then the grammar's). The
cool-down layer narrows a stretch to the trained muscles' while fewer than half would work them. Which exercises, how many, their prescriptions and their order stay the model's; the
evaluation scores ``balance``, ``focus`` and ``duration`` on every plan (they are not guaranteed).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pumpl_assets.core.schemas import SECONDS_PER_REP, TRANSITION_SECONDS
from pumpl_assets.core.standard import (
    WARMUP,
    Prescription,
    balance_needed,
    focus_needed,
    proportion_allows,
    region_counts,
)

# The compact JSON the grammar writes (separators "," and ":"; no whitespace).
# Checks the guard's rules keep reachable while the model writes (scored on every plan, not guaranteed:
# a rule steps aside when it would leave the grammar nothing). ``duration`` is also helped (the length
# rule) but the post-step fits it, so the report calls it "fitted".
GUARDED_CHECKS: tuple[str, ...] = ("balance", "focus", "proportion", "cooldown")

_SESSION_START = '{"day":'
_BLOCK_KEYS = {'"warmup":[': "warmup", '"main":[': "main", '"cooldown":[': "cooldown"}
_NAME_KEY = '"name":"'
_DONE_NAME = re.compile(r'"name":"([^"\\]*)"')
_MAIN_OPEN = '"main":['
_COOLDOWN_OPEN = '"cooldown":['
_MAIN_COUNT = re.compile(r'"main_count":(\d+)')


@dataclass(frozen=True)
class DayRules:
    """One session's facts for the guard's rules: per main name the day's regions it trains (of those
    the person can train) and its role's prescription; which names train the focus."""

    day: str
    regions: Mapping[str, frozenset[str]]
    trainable: frozenset[str]
    focus_names: frozenset[str]
    focus_applies: bool
    prescriptions: Mapping[str, Prescription]
    # Primary muscles of every main and cool-down name of the day (the cool-down layer's "trained").
    muscles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Proportion between the day's regions (None: not applied): main exercises per region the person has.
    supply: Mapping[str, int] | None = None

    def stretches_on(self, trained: set[str], pool: Sequence[str]) -> list[str]:
        """Names of ``pool`` whose primary muscles include a ``trained`` one."""
        return [n for n in pool if self.muscles.get(n, frozenset()) & trained]


@dataclass(frozen=True)
class PlanRules:
    """The request's rules for the guard: goal and focus, the session length band and the warm-up /
    cool-down lengths :mod:`finalize` may size to (seconds), one :class:`DayRules` per session in order."""

    goal: str
    focus: str | None
    lo_s: float
    hi_s: float
    warm_s: tuple[float, float]
    cool_s: tuple[float, float]
    days: tuple[DayRules, ...]

    def debts(self, session: int, names: Sequence[str], n_main: int) -> int:
        """Balance regions plus focus exercises a session of ``n_main`` main exercises still owes after
        ``names`` (``validate``'s ``balance`` and ``focus`` arithmetic)."""
        day = self.days[min(session, len(self.days) - 1)]
        covered: set[str] = set()
        for n in names:
            covered |= day.regions.get(n, frozenset())
        need = balance_needed(self.goal, day.day, n_main, day.trainable, self.focus)
        owed = max(0, need - len(covered & day.trainable))
        if day.focus_applies:
            owed += max(0, focus_needed(n_main) - sum(n in day.focus_names for n in names))
        return owed


def _amount_s(item: Mapping[str, Any]) -> int:
    reps = item.get("reps")
    return int(reps) * SECONDS_PER_REP if reps is not None else int(item.get("work_s") or 0)


def item_max_seconds(item: Mapping[str, Any], p: Prescription | None) -> float:
    """The longest :mod:`finalize` can make a written main item: sets, then rest, to the top of the
    role's ranges (reps or seconds stay the model's; an interval's rest is its pattern's)."""
    amount, rest, sets = _amount_s(item), int(item.get("rest_s") or 0), int(item.get("sets") or 1)
    if p is None:
        return sets * (amount + rest) + TRANSITION_SECONDS
    top_sets = max(sets, p.sets[1])
    top_rest = rest if p.patterns or top_sets == 1 else max(rest, p.rest_s[1])
    return top_sets * (amount + top_rest) + TRANSITION_SECONDS


def item_min_seconds(item: Mapping[str, Any], p: Prescription | None) -> float:
    """The shortest :mod:`finalize` can make a written main item (sets, then rest, to the bottom)."""
    amount, rest, sets = _amount_s(item), int(item.get("rest_s") or 0), int(item.get("sets") or 1)
    if p is None:
        return sets * (amount + rest) + TRANSITION_SECONDS
    low_sets = min(sets, p.sets[0])
    low_rest = rest if p.patterns else min(rest, p.rest_s[0])
    return low_sets * (amount + low_rest) + TRANSITION_SECONDS


def session_block_names(schema: dict[str, Any]) -> list[dict[str, frozenset[str]]] | None:
    """Allowed names per block for each session of a served plan schema, in order (sessions given per
    day with ``prefixItems``: one entry each; one ``items`` schema: one entry for every session)."""
    try:
        sessions = schema["properties"]["sessions"]
        items = sessions.get("prefixItems") or [sessions["items"]]
        day_props = [s["properties"] for s in items]
    except (KeyError, TypeError, AttributeError):
        return None
    out: list[dict[str, frozenset[str]]] = []
    for session in day_props:
        blocks: dict[str, frozenset[str]] = {}
        for block in ("warmup", "main", "cooldown"):
            block_items = session.get(block, {}).get("items", {})
            names: set[str] = set()
            for v in block_items.get("oneOf", [block_items]):
                enum = v.get("properties", {}).get("name", {}).get("enum")
                if not enum:
                    return None
                names.update(enum)
            blocks[block] = frozenset(names)
        out.append(blocks)
    return out


def session_main_min(schema: dict[str, Any]) -> list[int]:
    """The ``minItems`` of each session's main list in a served plan schema (empty when it has none)."""
    try:
        sessions = schema["properties"]["sessions"]
        items = sessions.get("prefixItems") or [sessions["items"]]
        return [int(s["properties"]["main"].get("minItems", 1)) for s in items]
    except (KeyError, TypeError, AttributeError):
        return []


def block_names(schema: dict[str, Any]) -> dict[str, frozenset[str]] | None:
    """Allowed names per session block (warmup / main / cooldown) of a served plan schema, over all its
    sessions; None when the schema is not one (no sessions, or a block without a name enum)."""
    per_session = session_block_names(schema)
    if per_session is None:
        return None
    return {b: frozenset().union(*(s[b] for s in per_session)) for b in ("warmup", "main", "cooldown")}


@dataclass
class SessionNameGuard:
    """One row's guard; ``token_text[i]`` is the decoded text of token ``i``. ``names``: allowed names
    per block, one dict for every session, or a list with one dict per session in order (each day of
    a split allows its own names; the last entry serves any further session). ``rules`` (optional):
    the request's balance / focus / length rules; ``main_min``: the grammar's ``minItems`` of each
    session's main list."""

    names: dict[str, frozenset[str]] | list[dict[str, frozenset[str]]]
    token_text: Sequence[str]
    rules: PlanRules | None = None
    main_min: Sequence[int] = ()
    fallbacks: int = 0
    banned_tokens: int = 0
    rule_bans: int = 0  # decisions a rule narrowed (a name's first token, or a close of the main list)
    rule_fallbacks: int = 0
    _sorted: list[dict[str, list[str]]] = field(default_factory=list)
    _permitted: dict[tuple[int, str], list[list[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        per_session = self.names if isinstance(self.names, list) else [self.names]
        self._sorted = [{b: sorted(n) for b, n in s.items()} for s in per_session]

    def _state(self, text: str) -> tuple[int, str, str, set[str], str] | None:
        """(session index, block, the name written so far — "" at its first character —, names already
        used in the session, the session's text) while ``text`` ends inside an exercise name of a
        session; None elsewhere."""
        start = text.rfind(_SESSION_START)
        if start < 0:
            return None
        seg = text[start:]
        pos = seg.rfind(_NAME_KEY)
        if pos < 0:
            return None
        partial = seg[pos + len(_NAME_KEY) :]
        if '"' in partial:
            return None  # the last name is closed: not inside a name value
        block_at = max(((seg.rfind(k), b) for k, b in _BLOCK_KEYS.items()), default=(-1, ""))
        if block_at[0] < 0:
            return None
        used = set(_DONE_NAME.findall(seg[:pos]))
        return text.count(_SESSION_START) - 1, block_at[1], partial, used, seg[:pos]

    def _pool(self, session: int, block: str) -> list[str]:
        return self._sorted[min(session, len(self._sorted) - 1)][block]

    def _main_size(self, session: int, seg: str, written: int) -> int:
        """The session's main size as planned: the model's ``main_count``, at least the grammar's
        ``minItems`` and one more than already written."""
        m = _MAIN_COUNT.search(seg)
        declared = int(m.group(1)) if m else 0
        floor = self.main_min[min(session, len(self.main_min) - 1)] if self.main_min else 1
        return max(declared, floor, written + 1)

    def _slots_left(self, session: int, body: str, written: int, size: int) -> int:
        """Main slots left, this one included: what the planned size leaves, and no more than the
        session's length holds once the written items sit at the bottom of their ranges and every
        further one is the day's shortest (an item past that would be dropped by :mod:`finalize`)."""
        assert self.rules is not None
        rules, by_count = self.rules, size - written
        day = rules.days[min(session, len(rules.days) - 1)]
        cut = body.rfind("{")
        try:
            items = json.loads("[" + body[:cut].rstrip(",") + "]") if cut >= 0 else []
        except json.JSONDecodeError:
            return by_count
        bottom = sum(item_min_seconds(i, day.prescriptions.get(str(i.get("name")))) for i in items)
        room = rules.hi_s - rules.warm_s[0] - rules.cool_s[0] - bottom
        shortest = min((_shortest_item_s(p) for p in day.prescriptions.values()), default=0.0)
        if shortest <= 0:
            return by_count
        return max(1, min(by_count, int(room // shortest)))

    def _rule_names(self, session: int, seg: str, used: set[str]) -> list[list[str]]:
        """Layers of sorted unused main names, narrowest first: those that keep the session in
        proportion among those that keep its debts payable, then those that keep its debts payable
        (a layer that narrows nothing is left out)."""
        assert self.rules is not None
        key = (session, seg)  # the session so far, up to the name being written
        if key in self._permitted:
            return self._permitted[key]
        main_at = seg.rfind(_MAIN_OPEN)
        body = seg[main_at + len(_MAIN_OPEN) :] if main_at >= 0 else ""
        written = _DONE_NAME.findall(body)
        size = self._main_size(session, seg, len(written))
        slots_left = self._slots_left(session, body, len(written), size)
        size = len(written) + slots_left  # the debts of the session that can actually be written
        candidates = [n for n in self._pool(session, "main") if n not in used]
        after = {n: self.rules.debts(session, [*written, n], size) for n in candidates}
        layers: list[list[str]] = []
        paying = candidates
        if after:
            limit = max(min(after.values()), slots_left - 1)
            paying = [n for n in candidates if after[n] <= limit]
        day = self.rules.days[min(session, len(self.rules.days) - 1)]
        if day.supply is not None:
            counts = region_counts(day.day, [tuple(day.muscles.get(n, ())) for n in written])
            in_proportion = [
                n for n in paying if proportion_allows(counts, day.regions.get(n, frozenset()), day.supply)
            ]
            if len(in_proportion) < len(paying):
                layers.append(in_proportion)
        if len(paying) < len(candidates):
            layers.append(paying)
        self._permitted[key] = layers
        return layers

    def _cool_names(self, session: int, seg: str, used: set[str]) -> list[list[str]]:
        """The cool-down layer: only unused stretches of the muscles the session's main work trained
        while fewer than half of the stretches (this one included) would work them — as far as the
        person's stretches allow ([ACSM-FLEX]; ``validate``'s ``cooldown`` check)."""
        assert self.rules is not None
        key = (session, seg)
        if key in self._permitted:
            return self._permitted[key]
        day = self.rules.days[min(session, len(self.rules.days) - 1)]
        main_at, cool_at = seg.rfind(_MAIN_OPEN), seg.rfind(_COOLDOWN_OPEN)
        layers: list[list[str]] = []
        if 0 <= main_at < cool_at:
            main = _DONE_NAME.findall(seg[main_at:cool_at])
            cool = _DONE_NAME.findall(seg[cool_at:])
            trained = {m for n in main for m in day.muscles.get(n, frozenset())}
            pool = self._pool(session, "cooldown")
            on_target = day.stretches_on(trained, pool)
            written_on = sum(1 for n in cool if n in on_target)
            # after this stretch there are len(cool) + 1: at least half must be on target
            if written_on < min((len(cool) + 2) // 2, len(on_target)):
                layers.append([n for n in on_target if n not in used])
        self._permitted[key] = layers
        return layers

    def _ban_outside(
        self, allowed: Sequence[int], partial: str, names: list[str], taken: set[str]
    ) -> list[int]:
        """Tokens of ``allowed`` that cannot continue ``partial`` into a name of sorted ``names`` not in
        ``taken``."""
        out: list[int] = []
        for tok in allowed:
            piece = self.token_text[tok] if tok < len(self.token_text) else ""
            if '"' in piece:
                name = partial + piece[: piece.index('"')]
                i = bisect.bisect_left(names, name)
                if not (i < len(names) and names[i] == name) or name in taken:
                    out.append(tok)
            elif piece and not _alive(names, partial + piece, taken):
                out.append(tok)
        return out

    def _close_ban(self, text: str, allowed_fn: Callable[[], Sequence[int]]) -> list[int]:
        """Tokens that would close a session's main list while the session is too short at the top
        of its items' ranges, or still owes a debt one more (fitting) exercise can pay."""
        assert self.rules is not None
        if not text or not (text[-1] == "}" or text[-1].isdigit()):
            return []
        start = text.rfind(_SESSION_START)
        if start < 0:
            return []
        seg = text[start:]
        main_at = seg.rfind(_MAIN_OPEN)
        if main_at < 0 or _COOLDOWN_OPEN in seg[main_at:]:
            return []
        body = seg[main_at + len(_MAIN_OPEN) :]
        if "]" in body:
            return []  # main is closed already
        allowed = allowed_fn()
        closing = [t for t in allowed if t < len(self.token_text) and "]" in self.token_text[t]]
        if not closing or len(closing) == len(allowed):
            return []
        try:
            items = json.loads("[" + body + ("}" if body[-1].isdigit() else "") + "]")
            warm_at = seg.find('"warmup":[')
            warm = json.loads(seg[warm_at + len('"warmup":') : main_at].rstrip(",")) if warm_at >= 0 else []
        except (json.JSONDecodeError, IndexError):
            return []
        session = text.count(_SESSION_START) - 1
        rules = self.rules
        day = rules.days[min(session, len(rules.days) - 1)]
        pres = [day.prescriptions.get(str(i.get("name"))) for i in items]
        warm_top = sum(
            WARMUP.sets[1] * (WARMUP.work_s[1] + int(w.get("rest_s") or 0)) + TRANSITION_SECONDS for w in warm
        )
        top = sum(item_max_seconds(i, p) for i, p in zip(items, pres, strict=True))
        short = top + min(warm_top, rules.warm_s[1]) + rules.cool_s[1] < rules.lo_s - 1e-9
        owes = False
        if not short:
            names = [str(i.get("name")) for i in items]
            if rules.debts(session, names, len(names)) > 0:
                used = set(_DONE_NAME.findall(seg))
                # One more exercise must pay something, be unused, and fit at its role's shortest.
                payers = [
                    n
                    for n in self._pool(session, "main")
                    if n not in used
                    and rules.debts(session, [*names, n], len(names) + 1)
                    < rules.debts(session, names, len(names) + 1)
                ]
                bottom = sum(item_min_seconds(i, p) for i, p in zip(items, pres, strict=True))
                room = rules.hi_s - bottom - rules.warm_s[0] - rules.cool_s[0]
                owes = any(_shortest_item_s(day.prescriptions.get(n)) <= room for n in payers)
        if not (short or owes):
            return []
        self.rule_bans += 1
        return closing

    def banned(self, text: str, allowed_fn: Callable[[], Sequence[int]]) -> list[int]:
        """Tokens among ``allowed_fn()`` (what the grammar permits next; only computed where a rule
        applies) that would repeat a name already used in the session, or (with ``rules``) leave a
        debt of the session unpayable or close its main list too early (see module doc)."""
        state = self._state(text)
        if state is None:
            return self._close_ban(text, allowed_fn) if self.rules is not None else []
        session, block, partial, used, seg = state
        layers: list[list[str]] = []
        if self.rules is not None and block == "main":
            layers = self._rule_names(session, seg, used)
        elif self.rules is not None and block == "cooldown":
            layers = self._cool_names(session, seg, used)
        if not layers and not used:
            return []
        allowed = allowed_fn()
        for layer in layers:  # narrowest first; a layer that leaves nothing steps aside
            out = self._ban_outside(allowed, partial, layer, set())
            if len(out) < len(allowed):
                if out and not partial:
                    self.rule_bans += 1
                self.banned_tokens += len(out)
                return out
            self.rule_fallbacks += not partial
        out = self._ban_outside(allowed, partial, self._pool(session, block), used)
        if len(out) == len(allowed):
            self.fallbacks += 1  # the block's pool is exhausted: keep the grammar's choice
            return []
        self.banned_tokens += len(out)
        return out


def _alive(names: list[str], prefix: str, taken: set[str]) -> bool:
    """Some name of sorted ``names`` not in ``taken`` starts with ``prefix``."""
    i = bisect.bisect_left(names, prefix)
    while i < len(names) and names[i].startswith(prefix):
        if names[i] not in taken:
            return True
        i += 1
    return False


def _shortest_item_s(p: Prescription | None) -> float:
    """The shortest a main exercise of prescription ``p`` can last (its role's bottom of the ranges)."""
    if p is None:
        return TRANSITION_SECONDS
    if p.patterns:
        return min(p.sets[0] * (w + r) for w, r in p.patterns) + TRANSITION_SECONDS
    amount = p.reps[0] * SECONDS_PER_REP if p.reps is not None else (p.work_s or (0, 0))[0]
    rest = p.rest_s[0] if p.sets[0] > 1 else 0
    return p.sets[0] * (amount + rest) + TRANSITION_SECONDS


def token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """Decoded text of every token id (once per tokenizer; ~1 s for a 49k vocabulary)."""
    n = min(vocab_size, len(tokenizer))
    return [tokenizer.decode([i], skip_special_tokens=False) for i in range(n)]


def allowed_from_bitmask(row_bitmask: Any, vocab_size: int) -> list[int]:
    """Token ids set in one row of an xgrammar token bitmask (int32 words, bit i of word w = token 32w+i)."""
    import numpy as np

    bits = np.unpackbits(row_bitmask.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits).tolist()  # type: ignore[no-any-return]
