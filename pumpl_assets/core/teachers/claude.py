"""Claude as a teacher: Anthropic's Messages API with schema-shaped answers, cached and retried.

Structured output (anthropic SDK 2.10, both supported; default ``structured="tool"``):

* ``"tool"`` — *strict tool use*: one tool ``submit_plan`` whose ``input_schema`` is the served
  grammar's schema for the request (:func:`grammar.standard_plan_schema`: allowed names per block,
  the coaching standard's ranges per role), passed through :func:`anthropic.transform_schema`
  (moves bounds the API's grammar does not support into descriptions, oneOf → anyOf),
  with ``"strict": True`` and ``tool_choice={"type": "tool", "name": "submit_plan"}``.
  The answer is the ``tool_use`` block's ``input``.
* ``"json_schema"`` — ``output_config={"format": {"type": "json_schema", "schema": ...}}``;
  the answer is the first text block.

Either way every answer is re-validated locally (:func:`validate.validate_example`):
JSON / schema failures ("malformed": no tool_use block, invalid JSON, schema
violation) get ``malformed_retries`` (default 1) fresh attempts, domain failures
(duration, equipment...) get ``domain_retries`` (default 1) follow-up turns that tell
Claude what was wrong; after that the request becomes an error result naming the
reasons, and nothing is cached (the cache stores only answers that meet the standard).
The request message states the standard for that request
(:func:`standard.describe_for_request`), so the teacher and validation share one standard.
Nothing raises for a single request.

Transport: the SDK's own retries are off (``max_retries=0``); this module retries
408/409/429/5xx/529, timeouts and connection errors up to ``max_retries`` times with
exponential backoff (``backoff_s`` × 2^attempt, capped at ``max_backoff_s``),
honouring ``retry-after`` / ``retry-after-ms``. 401/403 stop the whole run (every
remaining request gets the error without another call). Requests run on a
``ThreadPoolExecutor`` of ``max_concurrency`` workers.

Cache: :class:`TeacherCache` (SQLite under ``settings.cache_dir()`` unless
``cache_path``), keyed by (model, system + prompt, schema), written per answer as it
arrives. The API key is never logged or put in results: every error text goes
through :func:`redact`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anthropic

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.grammar import NoSuitableExercisesError, standard_plan_schema, without_prefix_items
from pumpl_assets.core.prompts import request_to_prompt
from pumpl_assets.core.schemas import (
    RequestSpec,
    dump_plan,
)
from pumpl_assets.core.standard import describe_for_request
from pumpl_assets.core.teachers.base import TeacherResult, estimate_cost_usd, redact
from pumpl_assets.core.teachers.cache import CachedAnswer, TeacherCache, cache_key
from pumpl_assets.core.validate import validate_example

log = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-haiku-4-5"
TOOL_NAME = "submit_plan"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
TARGET_TOLERANCE = 0.05

TEACHER_SYSTEM_PROMPT = (
    "You are Pumpl, a certified strength and conditioning coach. Write the week's plan for the request "
    "to the Pumpl coaching standard (ACSM 2009 resistance-training progression models, ACSM flexibility "
    "guidance, standard HIIT work:rest patterns); the request message states the standard's numbers for "
    "this person.\n"
    "Rules:\n"
    "- Use only exercise names from the schema's enums; they already suit the person's level, equipment "
    "and injuries, and each main-block variant carries the standard's ranges for that kind of exercise.\n"
    "- Each exercise has EITHER reps OR work_s (holds, stretches, drills, cardio and interval work are "
    "timed), never both.\n"
    "- total_minutes = the requested minutes per session; days_per_week = the requested days; title ≤ 60 "
    "characters and names no split but the plan's. Do the duration arithmetic before answering.\n"
    "- Omit equipment, muscles and notes."
)


class _Fail(Exception):
    """A request-level failure with a (redacted) reason."""


@dataclass
class RunStats:
    """Usage of the last ``generate`` call (cache hits cost nothing)."""

    requests: int = 0
    api_calls: int = 0
    retries: int = 0
    cache_hits: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class ClaudeTeacher:
    """The Claude teacher. See the module docstring for structure, retries and caching."""

    name = "claude"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        structured: Literal["tool", "json_schema"] = "tool",
        max_concurrency: int = 4,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        malformed_retries: int = 1,
        domain_retries: int = 1,
        max_tokens: int = 2048,
        temperature: float | None = None,
        system_prompt: str | None = None,
        cache_path: Path | str | None = None,
        use_cache: bool = True,
    ) -> None:
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ValueError(
                "the Claude teacher needs ANTHROPIC_API_KEY (or api_key=); use teacher 'offline' without one"
            )
        if structured not in ("tool", "json_schema"):
            raise ValueError(f"structured must be 'tool' or 'json_schema', got {structured!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.model = model
        self._api_key = key
        self.structured = structured
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.malformed_retries = malformed_retries
        self.domain_retries = domain_retries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.system_prompt = system_prompt or TEACHER_SYSTEM_PROMPT
        # base_url None → the SDK reads ANTHROPIC_BASE_URL, else the public endpoint.
        self._client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=timeout_s, max_retries=0)
        self.cache: TeacherCache | None = TeacherCache(cache_path) if use_cache else None
        self.stats = RunStats()
        self._abort: str | None = None

    def __repr__(self) -> str:
        return f"ClaudeTeacher(model={self.model!r}, structured={self.structured!r})"

    # -- prompt / schema ------------------------------------------------------------------------

    def build_prompt(self, request: RequestSpec) -> str:
        seconds = request.minutes * 60
        lo, hi = round(seconds * (1 - TARGET_TOLERANCE)), round(seconds * (1 + TARGET_TOLERANCE))
        standard = describe_for_request(
            request.goal, request.level, request.minutes, request.days_per_week, request.focus
        )
        return (
            f"{request_to_prompt(request)}\nTarget duration of each session: {seconds} s (allowed {lo}-{hi} s)."
            f"\nThe standard for this request:\n{standard}"
        )

    def build_schema(self, request: RequestSpec, catalogue: ExerciseCatalogue) -> dict[str, Any] | None:
        """The served grammar's schema for the request (names per block, the standard's ranges per
        role), in the form the Messages API's strict tools accept."""
        suitable = catalogue.suitable(request.level, request.equipment, request.limitations)
        try:
            schema = standard_plan_schema(request, suitable)
        except NoSuitableExercisesError:
            return None
        return anthropic.transform_schema(without_prefix_items(schema))

    def _request_kwargs(self, messages: list[dict[str, Any]], schema: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": self.system_prompt,
            "messages": messages,
        }
        if self.temperature is not None:  # SDK 2.10's create() has no sampling params; send raw
            kw["extra_body"] = {"temperature": self.temperature}
        if self.structured == "tool":
            kw["tools"] = [
                {
                    "name": TOOL_NAME,
                    "description": "Submit the workout plan that answers the request.",
                    "input_schema": schema,
                    "strict": True,
                }
            ]
            kw["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        else:
            kw["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return kw

    # -- transport --------------------------------------------------------------------------------

    def _delay(self, attempt: int, headers: Any | None) -> float:
        if headers is not None:
            for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
                value = headers.get(name)
                if value is not None:
                    try:
                        return min(max(float(value) * scale, 0.0), self.max_backoff_s)
                    except ValueError:
                        pass
        base = self.backoff_s * (2**attempt)
        return min(base * (0.5 + random.random() / 2), self.max_backoff_s)

    def _call(self, kwargs: dict[str, Any]) -> Any:
        for attempt in range(self.max_retries + 1):
            if self._abort:
                raise _Fail(self._abort)
            last = attempt == self.max_retries
            try:
                self.stats.add(api_calls=1)
                return self._client.messages.create(**kwargs)
            except anthropic.APIStatusError as e:
                status = e.status_code
                reason = redact(f"HTTP {status}: {e.message}", self._api_key)
                if status in (401, 403):
                    self._abort = f"Anthropic API refused the key ({reason}); stopping the run"
                    raise _Fail(self._abort) from None
                if status not in RETRYABLE_STATUS and status < 500:
                    raise _Fail(reason) from None
                if last:
                    raise _Fail(f"{reason} (gave up after {attempt + 1} attempts)") from None
                delay = self._delay(attempt, e.response.headers)
            except anthropic.APIConnectionError as e:
                kind = "timeout" if isinstance(e, anthropic.APITimeoutError) else "connection error"
                reason = redact(f"{kind}: {e}", self._api_key)
                if last:
                    raise _Fail(f"{reason} (gave up after {attempt + 1} attempts)") from None
                delay = self._delay(attempt, None)
            self.stats.add(retries=1)
            log.warning(
                "Claude call failed (%s); retry %d/%d in %.2fs", reason, attempt + 1, self.max_retries, delay
            )
            time.sleep(delay)
        raise _Fail("unreachable")  # pragma: no cover

    # -- one request ----------------------------------------------------------------------------------

    def _extract(self, response: Any) -> tuple[str, dict[str, Any]]:
        """(answer JSON text, assistant turn for a follow-up); raises _Fail for malformed replies."""
        content = list(getattr(response, "content", None) or [])
        assistant = {
            "role": "assistant",
            "content": [b.model_dump(exclude_none=True, warnings=False) for b in content],
        }
        if self.structured == "tool":
            block = next((b for b in content if getattr(b, "type", None) == "tool_use"), None)
            if block is None:
                raise _Fail(
                    f"malformed reply: no tool_use block (stop_reason={getattr(response, 'stop_reason', None)})"
                )
            data = block.input
            if isinstance(data, str):
                return data, assistant
            return json.dumps(data), assistant
        text = next((b.text for b in content if getattr(b, "type", None) == "text"), None)
        if text is None:
            raise _Fail("malformed reply: no text block")
        return text, assistant

    def _feedback(self, assistant: dict[str, Any], reasons: list[str]) -> dict[str, Any]:
        msg = "The plan was rejected: " + "; ".join(reasons)[:1500] + ". Fix it and answer again."
        if self.structured == "tool":
            tool_id = next((b.get("id") for b in assistant["content"] if b.get("type") == "tool_use"), None)
            if tool_id:
                return {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": tool_id, "is_error": True, "content": msg}
                    ],
                }
        return {"role": "user", "content": msg}

    def _solve(self, request: RequestSpec, catalogue: ExerciseCatalogue) -> TeacherResult:
        schema = self.build_schema(request, catalogue)
        if schema is None:
            return TeacherResult(
                request, None, "no catalogue exercise suits this request's level/equipment/limitations"
            )
        prompt = self.build_prompt(request)
        key = cache_key(self.model, self.system_prompt, prompt, schema)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.add(cache_hits=1)
                return TeacherResult(request, hit.plan_text, None, True, hit.input_tokens, hit.output_tokens)
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        tokens = [0, 0]
        malformed_left, domain_left = self.malformed_retries, self.domain_retries
        while True:
            try:
                response = self._call(self._request_kwargs(messages, schema))
            except _Fail as e:
                return TeacherResult(request, None, str(e), False, *tokens)
            usage = getattr(response, "usage", None)
            got_in, got_out = (
                int(getattr(usage, "input_tokens", 0) or 0),
                int(getattr(usage, "output_tokens", 0) or 0),
            )
            tokens[0] += got_in
            tokens[1] += got_out
            self.stats.add(input_tokens=got_in, output_tokens=got_out)
            try:
                text, assistant = self._extract(response)
                outcome = validate_example(request, text, catalogue)
                if outcome.stage in ("json", "schema") or outcome.plan is None:
                    raise _Fail("malformed reply: " + "; ".join(outcome.reasons)[:500])
            except _Fail as e:
                if malformed_left > 0:
                    malformed_left -= 1
                    log.warning("Claude reply malformed (%s); asking again", redact(str(e), self._api_key))
                    continue
                return TeacherResult(request, None, redact(str(e), self._api_key), False, *tokens)
            if not outcome.ok:
                if domain_left > 0:
                    domain_left -= 1
                    messages = [*messages, assistant, self._feedback(assistant, outcome.reasons)]
                    continue
                # Never cached: only answers that meet the standard are stored (cache.py).
                reason = "plan breaks the standard: " + "; ".join(outcome.reasons)[:500]
                return TeacherResult(request, None, redact(reason, self._api_key), False, *tokens)
            plan_text = dump_plan(outcome.plan)
            if self.cache is not None:
                self.cache.put(key, CachedAnswer(plan_text, self.model, tokens[0], tokens[1]))
            return TeacherResult(request, plan_text, None, False, *tokens)

    # -- public -------------------------------------------------------------------------------------------

    def generate(self, requests: list[RequestSpec], catalogue: ExerciseCatalogue) -> list[TeacherResult]:
        """One result per request, in order. Never raises for a single request's failure."""
        self.stats = RunStats(requests=len(requests))
        self._abort = None

        def one(req: RequestSpec) -> TeacherResult:
            try:
                return self._solve(req, catalogue)
            except Exception as e:  # a bug or an SDK surprise must not sink the whole run
                return TeacherResult(req, None, redact(f"unexpected {type(e).__name__}: {e}", self._api_key))

        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="claude") as pool:
            results = list(pool.map(one, requests))
        self.stats.errors = sum(1 for r in results if r.plan_text is None)
        self.stats.cost_usd = estimate_cost_usd(self.model, self.stats.input_tokens, self.stats.output_tokens)
        log.info("Claude teacher run: %s", self.stats.as_dict())
        return results
