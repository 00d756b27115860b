"""LitServe APIs: ``POST /generate`` (dynamically batched) and ``POST /v1/chat/completions`` (OpenAI).

Each API runs in its own LitServe inference worker process(es); every worker loads its
own engine in ``setup`` (so ``/health`` turns 200 only once the model is loaded), watches
the registry in a background thread when serving an alias, and publishes what it serves
and its batching counters to ``<state_dir>/<api>-<worker>.json`` for ``/info``.

Prompt formatting is :func:`pumpl_assets.core.prompts.render_prompt` with the partition's
prompt style (``PUMPL_PROMPT_STYLE`` honoured) and system prompt (the request's
``system_prompt``, else ``PUMPL_SYSTEM_PROMPT``, else the built-in one): the same code
training uses.

Every plan request is read from plain language: the prompt (chat: the last user message) goes
through :func:`pumpl_assets.core.request_text.parse_request` (the parser training uses), the
model sees the canonical line :func:`pumpl_assets.core.prompts.request_to_prompt` renders (as in
training), and the response says back what was understood (``request``: the spec,
``defaults_used`` and ``evidence``). A client corrects it with a ``request`` object in the
``/generate`` body (any subset of :class:`RequestSpec`'s fields; validated, 422 naming the field)
or the ``equipment``/``level`` fields; both override what the text says. Constrained decoding is
on by default for plan requests (``constrained: false`` turns it off); the JSON schema is
:func:`pumpl_assets.core.grammar.request_plan_schema` (exercise names restricted to what the
person's level, equipment and limitations allow).

``raw: true`` on ``/generate`` (or ``response_format: json_schema`` on the chat route) sends the
text to the model as typed instead: no request is read, and only an explicit ``constrained:
true`` (``/generate``) or the caller's schema (chat) constrains it.

Chat: the understood request travels as a ``pumpl`` extension object, ``{"request": {...}}`` — a
top-level field of the non-streamed response, and of the FIRST streamed chunk.

This module deliberately does not use ``from __future__ import annotations``: LitServe
and FastAPI read the real classes from ``decode_request`` / ``chat_completion`` signatures.
"""

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import BackgroundTasks, HTTPException
from litserve.specs.openai import ChatCompletionRequest, OpenAISpec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import JSONResponse

from pumpl_assets.core import artifacts as A
from pumpl_assets.core import prompts, settings
from pumpl_assets.core.request_text import UnderstoodRequest, parse_request
from pumpl_assets.core.schemas import (
    Equipment,
    Focus,
    Goal,
    InferenceRequest,
    InferenceResponse,
    Level,
    Limitation,
    RequestSpec,
    WorkoutPlanResponse,
)
from pumpl_serving.config import CHAT_PATH, GENERATE_PATH, ServeConfig
from pumpl_serving.model_source import EngineSlot, Loaded, ModelRef, RegistryPoller, RegistrySource

log = logging.getLogger("pumpl_serving")

MAX_TOKENS_LIMIT = 2048
# Budgets when a client sets no max_tokens. A plan is decoded under its grammar, which closes it; the
# budget is only a guard, so it is the largest one (a 6-day split runs past 1,000 tokens; the former
# 448 default cut about half the test split's plans mid-JSON, answering 200 with plan: null). Free
# text (raw, or a caller's own json_schema) keeps a short default.
PLAN_MAX_TOKENS = MAX_TOKENS_LIMIT
DEFAULT_MAX_TOKENS = 448


def default_max_tokens(plan_grammar: bool) -> int:
    """The budget for a request that sets no ``max_tokens`` (see :data:`PLAN_MAX_TOKENS`)."""
    return PLAN_MAX_TOKENS if plan_grammar else DEFAULT_MAX_TOKENS


MAX_CHAT_CHARS = 12_000


class RequestCorrection(BaseModel):
    """Fields of a :class:`RequestSpec` a client sets to correct what was read from the text."""

    model_config = ConfigDict(extra="forbid")

    goal: Goal | None = None
    minutes: int | None = Field(default=None, ge=10, le=120)
    level: Level | None = None
    equipment: list[Equipment] | None = Field(default=None, min_length=1, max_length=12)
    days_per_week: int | None = Field(default=None, ge=1, le=7)
    limitations: list[Limitation] | None = Field(default=None, max_length=4)
    focus: Focus | None = None


class GenerateRequest(InferenceRequest):
    """:class:`InferenceRequest` plus the plan-request extensions of this server.

    ``request`` corrects the request read from the prompt (its set fields win); ``raw`` sends the
    prompt to the model as typed (no request read). A prompt must not be blank.
    """

    request: RequestCorrection | None = None
    raw: bool = False

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must contain non-whitespace text")
        return v


# ------------------------------------------------------------------------------------------
# Shared worker-side logic
# ------------------------------------------------------------------------------------------


def load_catalogue(partition: str, explicit: str | None = None) -> tuple[Any, str | None]:
    """The exercise catalogue for request-aware grammars, and where it came from.

    Order: ``explicit`` path (parquet or JSON) → the materialized raw asset's
    ``exercises.parquet`` → the shipped ``exercises.json``. None when none exists (names then
    stay unrestricted, which still yields schema-valid plans).
    """
    from pumpl_assets.core.exercises import ExerciseCatalogue

    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    candidates.append(settings.artifacts_dir(partition, A.ASSET_RAW) / A.FILE_EXERCISES)
    candidates.append(settings.shipped_raw_dir() / "exercises.json")
    for path in candidates:
        if path.is_file():
            cat = (
                ExerciseCatalogue.from_parquet(path)
                if path.suffix == ".parquet"
                else ExerciseCatalogue.from_json_file(path)
            )
            return cat, str(path)
    log.warning("no exercise catalogue found (%s); constrained plans use unrestricted names", candidates)
    return None, None


class GenerateResponse(InferenceResponse):
    """:class:`InferenceResponse` plus ``request``: what the server understood (None for ``raw``), and
    ``adjustments``: what the served post-step (:mod:`pumpl_assets.core.finalize`) changed in the
    model's plan — ``text`` is the model's own answer, ``plan`` the finished plan."""

    request: dict[str, Any] | None = None
    adjustments: list[str] = Field(default_factory=list)


def understand(
    text: str,
    correction: RequestCorrection | None = None,
    *,
    equipment: list[str] | None = None,
    level: str | None = None,
) -> UnderstoodRequest:
    """The request read from ``text``, with a client's corrections applied (they win).

    Raises ``pydantic.ValidationError`` when the corrected request is not a valid RequestSpec.
    """
    understood = parse_request(text)
    fields: dict[str, Any] = correction.model_dump(exclude_unset=True) if correction is not None else {}
    if equipment:
        fields["equipment"] = list(equipment)
    if level:
        fields["level"] = level
    if not fields:
        return understood
    spec = RequestSpec.model_validate({**understood.spec.model_dump(), **fields})
    evidence = {k: v for k, v in understood.evidence.items() if k not in fields}
    evidence.update(dict.fromkeys(fields, "set by the client"))
    return UnderstoodRequest(
        spec=spec,
        defaults_used=[f for f in understood.defaults_used if f not in fields],
        evidence=evidence,
    )


def plan_request(req: InferenceRequest) -> tuple[bool, UnderstoodRequest | None]:
    """(constrained?, the understood request the prompt and grammar are built from).

    Every prompt is a plan request unless ``raw`` is set (then the request is None and only an
    explicit ``constrained: true`` constrains, to every catalogue name).
    """
    if getattr(req, "raw", False):
        return bool(req.constrained), None
    understood = understand(
        req.prompt,
        getattr(req, "request", None),
        equipment=list(req.equipment) if req.equipment else None,
        level=req.level,
    )
    constrained = req.constrained if req.constrained is not None else True
    return constrained, understood


def model_user_message(prompt: str, understood: UnderstoodRequest | None) -> str:
    """What the model's user turn holds: the canonical request line (as in training), or the raw text."""
    return prompts.request_to_prompt(understood.spec) if understood is not None else prompt


def model_max_positions(model_path: str | Path) -> int | None:
    """Context length from the model's config.json (None when it does not say); a model file
    (a GGUF) reads the config.json beside it."""
    path = Path(model_path)
    cfg = (path.parent if path.is_file() else path) / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        v = data.get(key) or (data.get("text_config") or {}).get(key)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _write_json(path: Path, obj: Any) -> None:
    """Atomic small-file write (no fsync: this is ephemeral run state, rewritten per batch)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _worker_logging(level: str) -> None:
    """Spawned workers start with bare logging; give our logger a stderr handler once."""
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"))
        log.addHandler(h)
        log.setLevel(level.upper())
        log.propagate = False


class ItemError(Exception):
    """A per-request problem found in the worker (answered 4xx without failing the batch)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _ModelWorker:
    """Engine, catalogue, hot swap and state publishing, shared by both LitAPIs."""

    api_name = "api"
    cfg: ServeConfig

    def _setup_model(self, device: str) -> None:
        from pumpl_assets.core.catalogue import CATALOGUE

        _worker_logging(self.cfg.log_level)
        if self.cfg.threads:
            import torch

            torch.set_num_threads(self.cfg.threads)
        self.worker_id = os.environ.get("LITSERVE_WORKER_ID", "0")
        self.engine_device = str(device) if str(device).startswith("cuda") else "cpu"
        spec = CATALOGUE.get(self.cfg.partition)
        self.prompt_style = prompts.resolve_style(spec.prompt_style if spec else "chat_template")
        self.catalogue, self.catalogue_path = load_catalogue(self.cfg.partition, self.cfg.exercises_path)
        self.source = self.cfg.source()
        self.metrics: dict[str, Any] = {
            "requests": 0,
            "batches": 0,
            "max_batch": 0,
            "batch_sizes": {},
            "item_errors": 0,
            "completion_tokens": 0,
            "constrained": 0,
        }
        self.last_error: str | None = None
        ref = self.source.resolve()
        if not self.cfg.exercises_path and getattr(ref, "catalogue", None) is not None:
            # The registered version's own catalogue: a server on another host restricts names to what
            # this model was trained and gated with, not to whatever its local data root holds.
            self.catalogue, self.catalogue_path = load_catalogue(self.cfg.partition, str(ref.catalogue))
        t0 = time.perf_counter()
        try:
            engine = self._load(ref)
        except Exception as exc:
            # Name the folder and the cause up front; the traceback alone rarely names the bad file.
            logging.getLogger(__name__).error(
                "cannot load model %s (engine %s): %s: %s",
                getattr(ref, "path", ref),
                self.cfg.engine,
                type(exc).__name__,
                exc,
            )
            raise
        self.slot = EngineSlot(Loaded(ref=ref, engine=engine, load_seconds=time.perf_counter() - t0))
        self.poller: RegistryPoller | None = None
        if isinstance(self.source, RegistrySource) and self.cfg.poll_interval > 0:
            self.poller = RegistryPoller(
                self.source,
                self.slot,
                self._load,
                self.cfg.poll_interval,
                on_change=lambda _new: self._publish(),
                on_error=self._on_poll_error,
            )
            self.poller.start()
        self._publish()
        log.info(
            "%s worker %s serving %s version %s (%s) from %s",
            self.api_name,
            self.worker_id,
            ref.name,
            ref.version,
            self.cfg.engine,
            ref.path,
        )

    def _load(self, ref: ModelRef) -> Any:
        from pumpl_assets.core.generation import load_engine

        return load_engine(self.cfg.engine, ref.path, device=self.engine_device, threads=self.cfg.threads)

    def _on_poll_error(self, msg: str) -> None:
        self.last_error = msg
        self._publish()

    def _state(self) -> dict[str, Any]:
        cur = self.slot.current
        eng = cur.engine
        return {
            "api": self.api_name,
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "model": cur.ref.describe(),
            "model_path": str(cur.ref.path),
            "engine": getattr(eng, "name", self.cfg.engine),
            "quantization": getattr(eng, "quantization", None),
            "device": self.engine_device,
            "prompt_style": self.prompt_style,
            "catalogue": self.catalogue_path,
            "loaded_at": cur.loaded_at,
            "load_seconds": round(cur.load_seconds, 3),
            "swaps": self.slot.swaps,
            "last_error": self.last_error,
            "metrics": self.metrics,
            "updated_at": time.time(),
        }

    def _publish(self) -> None:
        if not self.cfg.state_dir:
            return
        try:
            _write_json(Path(self.cfg.state_dir) / f"{self.api_name}-{self.worker_id}.json", self._state())
        except OSError as exc:  # pragma: no cover - state is informational
            log.warning("could not publish worker state: %s", exc)

    def _count_batch(self, size: int) -> None:
        m = self.metrics
        m["batches"] += 1
        m["requests"] += size
        m["max_batch"] = max(m["max_batch"], size)
        m["batch_sizes"][str(size)] = m["batch_sizes"].get(str(size), 0) + 1

    def _render(self, engine: Any, user: str, system: str | None) -> str:
        try:
            return prompts.render_prompt(engine.tokenizer, user, system=system, style=self.prompt_style)
        except ValueError as exc:
            raise ItemError(400, str(exc)) from exc

    def _schema_for(self, spec: RequestSpec | None) -> dict[str, Any]:
        from pumpl_assets.core.grammar import NoSuitableExercisesError, request_plan_schema

        try:
            return request_plan_schema(spec, self.catalogue)
        except NoSuitableExercisesError as exc:
            raise ItemError(422, str(exc)) from exc

    def _rules_for(self, spec: RequestSpec | None, schema: dict[str, Any] | None) -> Any:
        """The decode guard's balance / focus / length rules for a served plan request (None when the
        answer runs without a plan grammar)."""
        from pumpl_assets.core.grammar import request_plan_rules

        return request_plan_rules(spec, self.catalogue) if schema is not None else None

    def _finish(self, spec: RequestSpec | None, text: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The plan in ``text`` (None if it is not one) after the served post-step when the request
        is known (order, length and declared figures inside the standard; core/finalize.py)."""
        from pumpl_assets.core.finalize import finalize_plan

        try:
            plan = WorkoutPlanResponse.model_validate_json(text)
        except ValidationError:
            return None, []
        adjustments: list[str] = []
        if spec is not None and self.catalogue is not None:
            done = finalize_plan(spec, plan, self.catalogue)
            plan, adjustments = done.plan, done.adjustments
        return plan.model_dump(mode="json", exclude_none=True), adjustments

    def _budget(self, engine: Any, prompt: str, max_tokens: int) -> tuple[int, int]:
        """(prompt tokens, max new tokens clipped to the context); ItemError if the prompt alone is too long."""
        n = len(engine.tokenizer(prompt, add_special_tokens=False).input_ids)
        limit = model_max_positions(engine.model_path)
        if limit is None:
            return n, max_tokens
        if n >= limit:
            raise ItemError(
                413,
                f"prompt is {n} tokens after formatting; this model's context is {limit} tokens "
                "(shorten the prompt or system prompt)",
            )
        return n, min(max_tokens, limit - n)

    def teardown(self) -> None:
        if getattr(self, "poller", None) is not None:
            self.poller.stop()  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------
# POST /generate
# ------------------------------------------------------------------------------------------


@dataclass
class _Job:
    req: InferenceRequest
    received: float
    understood: UnderstoodRequest | None = None
    prompt: str = ""
    params: Any = None
    schema: dict[str, Any] | None = None
    error: ItemError | None = None


class GenerateAPI(_ModelWorker, ls.LitAPI):
    """``POST /generate``: one InferenceRequest in, one InferenceResponse out, batched in the worker."""

    api_name = "generate"

    def __init__(self, cfg: ServeConfig):
        super().__init__(
            max_batch_size=cfg.max_batch_size,
            batch_timeout=cfg.batch_timeout if cfg.max_batch_size > 1 else 0.0,
            api_path=GENERATE_PATH,
        )
        self.cfg = cfg

    def setup(self, device):
        self._setup_model(device)

    def decode_request(self, request: GenerateRequest):
        return _Job(req=request, received=time.perf_counter())

    def batch(self, inputs):
        return list(inputs)

    def predict(self, jobs):
        from pumpl_assets.core.generation import GenerationParams

        single = not isinstance(jobs, list)  # max_batch_size == 1 → LitServe's unbatched loop
        jobs = [jobs] if single else jobs
        self._count_batch(len(jobs))
        with self.slot.lease() as loaded:
            engine = loaded.engine
            runnable: list[_Job] = []
            for job in jobs:
                r = job.req
                try:
                    constrained, job.understood = plan_request(r)
                    spec = job.understood.spec if job.understood is not None else None
                    user = model_user_message(r.prompt, job.understood)
                    job.prompt = self._render(engine, user, r.system_prompt)
                    job.schema = self._schema_for(spec) if constrained else None
                    wanted = r.max_tokens or default_max_tokens(spec is not None and job.schema is not None)
                    _, max_new = self._budget(engine, job.prompt, wanted)
                    job.params = GenerationParams(
                        max_new_tokens=max_new,
                        temperature=r.temperature,
                        top_p=r.top_p,
                        seed=r.seed,
                        stop=r.stop,
                        plan_rules=self._rules_for(spec, job.schema),
                    )
                    runnable.append(job)
                except ItemError as exc:
                    job.error = exc
                except ValidationError as exc:
                    job.error = ItemError(422, f"the corrected request is not valid: {_errors(exc)}")
            by_job: dict[int, Any] = {}
            try:
                gens = (
                    engine.generate(
                        [j.prompt for j in runnable],
                        [j.params for j in runnable],
                        [j.schema for j in runnable],
                    )
                    if runnable
                    else []
                )
                by_job = {id(j): g for j, g in zip(runnable, gens, strict=True)}
            except Exception:
                if len(runnable) <= 1:
                    raise
                # One bad row must not fail the requests it was batched with: retry row by row.
                for j in runnable:
                    try:
                        by_job[id(j)] = engine.generate([j.prompt], [j.params], [j.schema])[0]
                    except Exception as exc:
                        j.error = ItemError(500, f"generation failed: {type(exc).__name__}")
            outputs: list[Any] = []
            now = time.perf_counter()
            for job in jobs:
                if job.error is not None:
                    self.metrics["item_errors"] += 1
                    outputs.append(job.error)
                    continue
                g = by_job[id(job)]
                self.metrics["completion_tokens"] += g.completion_tokens
                self.metrics["constrained"] += int(job.schema is not None)
                spec = job.understood.spec if job.understood is not None and job.schema is not None else None
                plan, adjustments = self._finish(spec, g.text)
                outputs.append(
                    {
                        "text": g.text,
                        "plan": plan,
                        "usage": {
                            "prompt_tokens": g.prompt_tokens,
                            "completion_tokens": g.completion_tokens,
                            "total_tokens": g.prompt_tokens + g.completion_tokens,
                        },
                        "model": {
                            "name": loaded.ref.name,
                            "version": loaded.ref.version,
                            "alias": loaded.ref.alias,
                        },
                        "latency_ms": round((now - job.received) * 1000.0, 2),
                        "request": job.understood.to_dict() if job.understood is not None else None,
                        "adjustments": adjustments,
                        "finish_reason": g.finish_reason,
                        "constrained": job.schema is not None,
                    }
                )
        self._publish()
        return outputs[0] if single else outputs

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        if isinstance(output, ItemError):
            return JSONResponse(status_code=output.status, content={"detail": output.message})
        finish = output.pop("finish_reason")
        constrained = output.pop("constrained")
        resp = GenerateResponse.model_validate(output)  # the documented response shape, checked
        body = resp.model_dump(mode="json")
        body["plan"] = resp.plan.model_dump(mode="json", exclude_none=True) if resp.plan is not None else None
        return JSONResponse(
            content=body, headers={"X-Finish-Reason": finish, "X-Constrained": str(constrained).lower()}
        )


# ------------------------------------------------------------------------------------------
# POST /v1/chat/completions (OpenAI)
# ------------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if getattr(part, "type", None) != "text":
            raise HTTPException(
                400, f"only text message content is supported, got {getattr(part, 'type', part)!r}"
            )
        parts.append(part.text)
    return "".join(parts)


def _errors(exc: ValidationError) -> str:
    """``field: message`` for each error, without echoing input values."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors())


def _bad(msg: str, status: int = 400) -> HTTPException:
    return HTTPException(status, msg)


PUMPL_KEY = "pumpl"


class _ExtensionTap:
    """Wraps one choice's (response, status) stream; lifts the ``pumpl`` key out of the messages."""

    def __init__(self, source: Any):
        self.source = source
        self.ext: dict[str, Any] | None = None
        self.unsent: dict[str, Any] = {}  # keys that arrived after the first message (streaming)

    async def __aiter__(self) -> Any:
        async for response, status in self.source:
            if isinstance(response, str) and f'"{PUMPL_KEY}"' in response:
                try:
                    msg = json.loads(response)
                except ValueError:
                    msg = None
                if isinstance(msg, dict) and PUMPL_KEY in msg:
                    ext = msg.pop(PUMPL_KEY)
                    if isinstance(ext, dict):
                        if self.ext is None:
                            self.ext = dict(ext)
                        else:
                            self.ext.update(ext)
                            self.unsent.update(ext)
                    response = json.dumps(msg)
            yield response, status


class PumplOpenAISpec(OpenAISpec):
    """OpenAISpec that rejects what this server cannot honour with a 4xx before queueing it, and
    returns the understood plan request as a ``pumpl`` extension object (non-streamed: a top-level
    field of the response; streamed: a top-level field of the first chunk), and with it the finished
    plan and the post-step's adjustments (streamed: on the last chunk)."""

    async def chat_completion(self, request: ChatCompletionRequest, background_tasks: BackgroundTasks):
        validate_chat_request(request)
        # Explicit nulls for optional fields mean "default" (LitServe would iterate range(None)).
        if request.n is None:
            request.n = 1
        if request.model is None:
            request.model = ""
        return await super().chat_completion(request, background_tasks)

    async def non_streaming_completion(self, request: ChatCompletionRequest, generator_list: list[Any]):
        taps = [_ExtensionTap(g) for g in generator_list]
        resp = await super().non_streaming_completion(request, taps)
        body = resp.model_dump(mode="json")
        body[PUMPL_KEY] = taps[0].ext if taps and taps[0].ext is not None else {"request": None}
        return JSONResponse(content=body)

    async def streaming_completion(self, request: ChatCompletionRequest, pipe_responses: list[Any]):
        taps = [_ExtensionTap(p) for p in pipe_responses]
        first = True
        async for line in super().streaming_completion(request, taps):
            if first and line.startswith("data: {") and taps and taps[0].ext is not None:
                try:
                    chunk = json.loads(line[len("data: ") :])
                except ValueError:
                    chunk = None
                if isinstance(chunk, dict) and "choices" in chunk:
                    chunk[PUMPL_KEY] = taps[0].ext
                    line = f"data: {json.dumps(chunk)}\n\n"
                    first = False
            elif taps and taps[0].unsent and line.startswith("data: {"):
                try:
                    chunk = json.loads(line[len("data: ") :])
                except ValueError:
                    chunk = None
                if isinstance(chunk, dict) and "choices" in chunk:
                    chunk[PUMPL_KEY] = dict(taps[0].unsent)
                    taps[0].unsent.clear()
                    line = f"data: {json.dumps(chunk)}\n\n"
            yield line


def validate_chat_request(request: ChatCompletionRequest) -> None:
    """Raise HTTPException(400/422) naming the first thing wrong with an OpenAI chat request."""
    if request.n not in (None, 1):
        raise _bad(f"n={request.n} is not supported; this server returns one choice (n=1)")
    if request.tools:
        raise _bad("tools / function calling are not supported by this server")
    if not request.messages:
        raise _bad("messages must contain at least one user message")
    total = 0
    users = 0
    for i, m in enumerate(request.messages):
        if m.role not in ("system", "user", "assistant"):
            raise _bad(f"messages[{i}].role={m.role!r} is not supported; use system, user or assistant")
        text = _text_of(m.content)
        total += len(text)
        if m.role == "user":
            if not text.strip():
                raise _bad(f"messages[{i}] (user) has empty content")
            users += 1
    if users == 0:
        raise _bad("messages must contain at least one user message")
    if total > MAX_CHAT_CHARS:
        raise _bad(f"messages total {total} characters; at most {MAX_CHAT_CHARS} are accepted", 413)
    t = request.temperature
    if t is not None and not (0.0 <= t <= 2.0):
        raise _bad(f"temperature must be between 0 and 2, got {t}", 422)
    p = request.top_p
    if p is not None and not (0.0 < p <= 1.0):
        raise _bad(f"top_p must be in (0, 1], got {p}", 422)
    for name in ("max_tokens", "max_completion_tokens"):
        v = getattr(request, name)
        if v is not None and not (1 <= v <= MAX_TOKENS_LIMIT):
            raise _bad(f"{name} must be between 1 and {MAX_TOKENS_LIMIT}, got {v}", 422)
    stop = request.stop
    if isinstance(stop, list) and len(stop) > 4:
        raise _bad("stop accepts at most 4 sequences", 422)
    rf = request.response_format
    if rf is not None and getattr(rf, "type", None) == "json_schema":
        schema = rf.json_schema.schema_  # type: ignore[union-attr]
        if not isinstance(schema, dict) or not schema:
            raise _bad("response_format.json_schema.schema must be a non-empty JSON schema object", 422)


class ChatAPI(_ModelWorker, ls.LitAPI):
    """OpenAI-compatible chat completions (stream and non-stream) on the same model."""

    api_name = "chat"

    def __init__(self, cfg: ServeConfig):
        super().__init__(spec=PumplOpenAISpec(), api_path=CHAT_PATH)
        self.cfg = cfg

    def setup(self, device):
        self._setup_model(device)

    def _chat_prompt(
        self, engine: Any, request: ChatCompletionRequest, understood: UnderstoodRequest | None
    ) -> str:
        """The rendered prompt.

        A plan request (``understood``) is one turn holding the canonical request line, rendered
        by render_prompt exactly like training (earlier turns are not shown to the model: it was
        trained on single requests). A raw conversation keeps every turn (the chat template).
        """
        systems = [_text_of(m.content) for m in request.messages if m.role == "system"]
        system = "\n\n".join(s for s in systems if s) or None
        turns = [(m.role, _text_of(m.content)) for m in request.messages if m.role != "system"]
        last_user = next(t for r, t in reversed(turns) if r == "user")
        if understood is not None:
            return self._render(engine, model_user_message(last_user, understood), system)
        if len(turns) == 1:
            return self._render(engine, last_user, system)
        system = settings.system_prompt() if system is None else system
        if self.prompt_style == "mistral_inst":
            text, first = "<s>", True
            for role, content in turns:
                if role == "user":
                    body = f"{system}\n\n{content}" if first and system else content
                    text += f"[INST] {body} [/INST]"
                    first = False
                else:
                    text += f" {content}</s>"
            return text
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": r, "content": c} for r, c in turns
        ]
        try:
            rendered = engine.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise ItemError(
                400, f"cannot format this conversation with the model's chat template: {exc}"
            ) from exc
        return str(rendered)

    def predict(self, request: ChatCompletionRequest) -> Iterator[dict[str, Any]]:
        from pumpl_assets.core.generation import GenerationParams

        self._count_batch(1)
        with self.slot.lease() as loaded:
            engine = loaded.engine
            try:
                schema: dict[str, Any] | None = None
                understood: UnderstoodRequest | None = None
                rf = request.response_format
                rf_type = getattr(rf, "type", None)
                if rf_type == "json_schema":  # the caller's own schema: a raw conversation
                    schema = dict(rf.json_schema.schema_)  # type: ignore[union-attr,arg-type]
                else:  # a plan request read from the last user message
                    last_user = next(
                        _text_of(m.content) for m in reversed(request.messages) if m.role == "user"
                    )
                    understood = parse_request(last_user)
                    schema = self._schema_for(understood.spec)
                prompt = self._chat_prompt(engine, request, understood)
                max_tokens = (
                    request.max_completion_tokens
                    or request.max_tokens
                    or default_max_tokens(understood is not None and schema is not None)
                )
                n_prompt, max_new = self._budget(engine, prompt, max_tokens)
            except ItemError as exc:
                self.metrics["item_errors"] += 1
                raise HTTPException(exc.status, exc.message) from exc
            stop = request.stop
            params = GenerationParams(
                max_new_tokens=max_new,
                temperature=0.0 if request.temperature is None else float(request.temperature),
                top_p=1.0 if request.top_p is None else float(request.top_p),
                stop=[stop] if isinstance(stop, str) else stop,
                plan_rules=self._rules_for(understood.spec if understood else None, schema),
            )
            pieces: list[str] = []
            # The understood request rides on the first message (PumplOpenAISpec moves it to `pumpl`).
            ext: dict[str, Any] = {PUMPL_KEY: {"request": understood.to_dict() if understood else None}}
            try:
                stream = engine.stream(prompt, params, schema)
                for piece in stream:
                    pieces.append(piece)
                    yield {"role": "assistant", "content": piece, **ext}
                    ext = {}
            except ValueError as exc:
                raise HTTPException(422, f"cannot generate with this request: {exc}") from exc
            text = "".join(pieces)
            n_completion = len(engine.tokenizer(text, add_special_tokens=False).input_ids) if text else 0
            self.metrics["completion_tokens"] += n_completion
            self.metrics["constrained"] += int(schema is not None)
            if understood is not None:  # the finished plan rides on the last message
                plan, adjustments = self._finish(understood.spec, text)
                ext = {PUMPL_KEY: {**ext.get(PUMPL_KEY, {}), "plan": plan, "adjustments": adjustments}}
            yield {
                "role": "assistant",
                "content": "",
                "prompt_tokens": n_prompt,
                "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion,
                **ext,
            }
        self._publish()
