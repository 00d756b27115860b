"""The teacher interface: anything that turns workout requests into compact plan JSON.

A teacher never raises for a single bad example: each request yields one
:class:`TeacherResult` carrying either ``plan_text`` (compact plan JSON, the
:func:`pumpl_assets.core.schemas.dump_plan` form) or an ``error`` naming the
reason. Downstream code (:mod:`pumpl_assets.core.distill`) turns errors into
quarantine rows, so nothing is silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.schemas import RequestSpec


@dataclass
class TeacherResult:
    """One request's outcome. Exactly one of ``plan_text`` / ``error`` is set."""

    request: RequestSpec
    plan_text: str | None
    error: str | None
    cache_hit: bool = False
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.plan_text is not None


@runtime_checkable
class Teacher(Protocol):
    """``generate`` returns one result per request, in the same order."""

    name: str
    model: str

    def generate(self, requests: list[RequestSpec], catalogue: ExerciseCatalogue) -> list[TeacherResult]: ...


# Anthropic keys look like sk-ant-...; also catch bearer / x-api-key header echoes.
_KEY_PATTERNS = (
    re.compile(r"sk-ant-[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?bearer\s+)[^\s'\",}]+"),
)
REDACTED = "[REDACTED]"


def redact(text: str, *secrets: str | None) -> str:
    """Remove API keys from ``text``: every given secret verbatim, plus anything key-shaped."""
    out = str(text)
    for s in secrets:
        if s:
            out = out.replace(s, REDACTED)
    out = _KEY_PATTERNS[0].sub(REDACTED, out)
    for pat in _KEY_PATTERNS[1:]:
        out = pat.sub(lambda m: m.group(1) + REDACTED, out)
    return out


# $ per million tokens (input, output). Prefix match, so dated model ids resolve too.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-3-5-haiku": (0.8, 4.0),
}


def price_per_mtok(model: str) -> tuple[float, float]:
    """(input, output) $/MTok for ``model``; (0, 0) for unknown / offline models."""
    for prefix in sorted(PRICES_PER_MTOK, key=len, reverse=True):
        if model.startswith(prefix):
            return PRICES_PER_MTOK[prefix]
    return (0.0, 0.0)


def estimate_cost_usd(model: str, input_tokens: int, output_tokens: int) -> float:
    p_in, p_out = price_per_mtok(model)
    return round((input_tokens * p_in + output_tokens * p_out) / 1_000_000, 6)
