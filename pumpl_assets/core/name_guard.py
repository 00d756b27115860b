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
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The compact JSON the grammar writes (separators "," and ":"; no whitespace).
_SESSION_START = '{"day":'
_BLOCK_KEYS = {'"warmup":[': "warmup", '"main":[': "main", '"cooldown":[': "cooldown"}
_NAME_KEY = '"name":"'
_DONE_NAME = re.compile(r'"name":"([^"\\]*)"')


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
    a split allows its own names; the last entry serves any further session)."""

    names: dict[str, frozenset[str]] | list[dict[str, frozenset[str]]]
    token_text: Sequence[str]
    fallbacks: int = 0
    banned_tokens: int = 0
    _sorted: list[dict[str, list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        per_session = self.names if isinstance(self.names, list) else [self.names]
        self._sorted = [{b: sorted(n) for b, n in s.items()} for s in per_session]

    def _state(self, text: str) -> tuple[int, str, str, set[str]] | None:
        """(session index, block, the name written so far — "" at its first character —, names already
        used in the session) while ``text`` ends inside an exercise name of a session; None elsewhere."""
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
        return text.count(_SESSION_START) - 1, block_at[1], partial, used

    def _alive(self, session: int, block: str, prefix: str, used: set[str]) -> bool:
        """Some allowed, unused name of ``block`` in that session starts with ``prefix``."""
        names = self._sorted[min(session, len(self._sorted) - 1)][block]
        i = bisect.bisect_left(names, prefix)
        while i < len(names) and names[i].startswith(prefix):
            if names[i] not in used:
                return True
            i += 1
        return False

    def banned(self, text: str, allowed_fn: Callable[[], Sequence[int]]) -> list[int]:
        """Tokens among ``allowed_fn()`` (what the grammar permits next; only computed inside a name)
        that would repeat a name already used in the session."""
        state = self._state(text)
        if state is None:
            return []
        session, block, partial, used = state
        if not used:
            return []
        allowed = allowed_fn()
        out: list[int] = []
        for tok in allowed:
            piece = self.token_text[tok] if tok < len(self.token_text) else ""
            if '"' in piece:
                if partial + piece[: piece.index('"')] in used:
                    out.append(tok)
            elif piece and not self._alive(session, block, partial + piece, used):
                out.append(tok)
        if len(out) == len(allowed):
            self.fallbacks += 1  # the block's pool is exhausted: keep the grammar's choice
            return []
        self.banned_tokens += len(out)
        return out


def token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """Decoded text of every token id (once per tokenizer; ~1 s for a 49k vocabulary)."""
    n = min(vocab_size, len(tokenizer))
    return [tokenizer.decode([i], skip_special_tokens=False) for i in range(n)]


def allowed_from_bitmask(row_bitmask: Any, vocab_size: int) -> list[int]:
    """Token ids set in one row of an xgrammar token bitmask (int32 words, bit i of word w = token 32w+i)."""
    import numpy as np

    bits = np.unpackbits(row_bitmask.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits).tolist()  # type: ignore[no-any-return]
