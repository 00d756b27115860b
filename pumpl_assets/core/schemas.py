"""The single source of truth for every data shape in Pumpl.

Workout plans, request specs, training examples, training recipes and inference
requests are pydantic v2 models. The JSON Schema exported from them
(:func:`plan_json_schema`) is what teachers (Claude's structured output) and
constrained decoding (xgrammar, vLLM) use, so every structural rule a grammar can
enforce lives in the schema itself: ``oneOf`` reps-or-seconds, ``maxItems``,
enums, integer bounds. Semantic rules that need the catalogue or arithmetic
(duration, equipment, level) live in :mod:`pumpl_assets.core.validate`.

The plan JSON is deliberately compact (short keys, derivable facts such as an
exercise's equipment and muscles optional): a 135M model learns and generates a
~180-token answer about twice as fast as a ~370-token one.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Level = Literal["beginner", "intermediate", "expert"]
LEVELS: tuple[Level, ...] = ("beginner", "intermediate", "expert")

Goal = Literal["strength", "hypertrophy", "endurance", "fat_loss", "mobility", "general_fitness"]
GOALS: tuple[Goal, ...] = ("strength", "hypertrophy", "endurance", "fat_loss", "mobility", "general_fitness")

# Vocabulary of the free-exercise-db catalogue, so public and own catalogues share one enum.
Equipment = Literal[
    "body only",
    "dumbbell",
    "barbell",
    "kettlebells",
    "cable",
    "machine",
    "bands",
    "medicine ball",
    "exercise ball",
    "foam roll",
    "e-z curl bar",
    "other",
]
EQUIPMENT: tuple[Equipment, ...] = (
    "body only",
    "dumbbell",
    "barbell",
    "kettlebells",
    "cable",
    "machine",
    "bands",
    "medicine ball",
    "exercise ball",
    "foam roll",
    "e-z curl bar",
    "other",
)

Muscle = Literal[
    "abdominals",
    "abductors",
    "adductors",
    "biceps",
    "calves",
    "chest",
    "forearms",
    "glutes",
    "hamstrings",
    "lats",
    "lower back",
    "middle back",
    "neck",
    "quadriceps",
    "shoulders",
    "traps",
    "triceps",
]

Limitation = Literal["knees", "lower back", "shoulders", "wrists"]
LIMITATIONS: tuple[Limitation, ...] = ("knees", "lower back", "shoulders", "wrists")

# A body area a request may ask the plan to emphasise (muscles per focus: core/standard.py).
Focus = Literal["core", "upper_body", "lower_body", "glutes", "arms"]
FOCUSES: tuple[Focus, ...] = ("core", "upper_body", "lower_body", "glutes", "arms")

# How the week is organised (days/week → split: core/standard.py) and what one session trains.
Split = Literal["full_body", "upper_lower", "push_pull_legs"]
SPLITS: tuple[Split, ...] = ("full_body", "upper_lower", "push_pull_legs")
Day = Literal["full_body", "upper", "lower", "push", "pull", "legs"]
DAYS: tuple[Day, ...] = ("full_body", "upper", "lower", "push", "pull", "legs")

# Session lengths the request sampler draws (the schema accepts any 10..120): the usual ones and
# non-standard ones, so no length is a special case a model could memorise.
MINUTES_CHOICES: tuple[int, ...] = (10, 15, 20, 25, 30, 40, 45, 50, 60, 75, 90, 120)

# Duration model shared by teachers, validation and evaluation (one source of truth).
SECONDS_PER_REP = 3
TRANSITION_SECONDS = 30  # moving between exercises, setting up equipment
DURATION_TOLERANCE = 0.10  # computed duration must be within ±10% of the request

MAX_WARMUP = 3
MAX_MAIN = 10
MAX_COOLDOWN = 3


def printable(lo: int, hi: int) -> str:
    """Pattern of a free-text field: ``lo``..``hi`` characters, none of them a control character.

    JSON forbids raw U+0000-U+001F inside a string, and xgrammar's string rule admits them: a tab
    sampled into a served title made the answer unparsable. xgrammar ignores ``minLength`` /
    ``maxLength`` beside a ``pattern``, so the pattern carries the length too.
    """
    return rf"^[^\x00-\x1f]{{{lo},{hi}}}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class _ExerciseBase(_Strict):
    name: str = Field(
        min_length=2,
        max_length=80,
        pattern=printable(2, 80),
        description="Exact catalogue name of the exercise",
    )
    # Defaults (1 set, no rest) are omitted from the compact JSON: warm-up/cool-down items are shorter.
    sets: int = Field(default=1, ge=1, le=8)
    rest_s: int = Field(default=0, ge=0, le=300, description="Rest after each set, seconds")
    equipment: Equipment | None = Field(default=None, description="Optional; derivable from the catalogue")
    muscles: list[Muscle] | None = Field(default=None, max_length=4, description="Primary muscles (optional)")
    notes: str | None = Field(default=None, max_length=120, pattern=printable(0, 120))


class RepsExercise(_ExerciseBase):
    """An exercise prescribed in repetitions."""

    reps: int = Field(ge=1, le=30)


class TimedExercise(_ExerciseBase):
    """An exercise prescribed as work seconds (planks, carries, cardio, stretches)."""

    work_s: int = Field(ge=5, le=600)


# Exactly one of reps / work_s: the two variants forbid extra keys, so they are disjoint.
Exercise = Annotated[RepsExercise | TimedExercise, Field(union_mode="left_to_right")]


def exercise_work_seconds(ex: RepsExercise | TimedExercise) -> int:
    if isinstance(ex, RepsExercise):
        return ex.reps * SECONDS_PER_REP
    return ex.work_s


def exercise_seconds(ex: RepsExercise | TimedExercise) -> int:
    """Wall time of one exercise: sets × (work + rest) + one transition."""
    return ex.sets * (exercise_work_seconds(ex) + ex.rest_s) + TRANSITION_SECONDS


class WorkoutDay(_Strict):
    """One session of the split: what it trains, then warm-up, main work, cool-down."""

    day: Day = Field(
        description="Which session of the split this is (full_body, upper, lower, push, pull, legs)"
    )
    # Written before the blocks: how many main exercises fit this session. A small model decides the
    # session's size first and then counts to it, instead of deciding when to stop a list mid-way.
    main_count: int | None = Field(default=None, ge=1, le=MAX_MAIN, description="Number of main exercises")
    warmup: list[Exercise] = Field(min_length=1, max_length=MAX_WARMUP)
    main: list[Exercise] = Field(min_length=1, max_length=MAX_MAIN)
    cooldown: list[Exercise] = Field(min_length=1, max_length=MAX_COOLDOWN)

    def blocks(self) -> dict[str, list[RepsExercise | TimedExercise]]:
        return {"warmup": list(self.warmup), "main": list(self.main), "cooldown": list(self.cooldown)}

    def all_exercises(self) -> list[RepsExercise | TimedExercise]:
        return [*self.warmup, *self.main, *self.cooldown]


MAX_SESSIONS = 3


class WorkoutPlanResponse(_Strict):
    """What the model answers: the week's split and its distinct sessions (each done in rotation).

    ``total_minutes`` is the length of EACH session; a full-body week holds one session done
    ``days_per_week`` times, an upper/lower week two, a push/pull/legs week three.
    """

    total_minutes: int = Field(
        ge=5, le=180, description="Declared length of each session; validation recomputes it"
    )
    days_per_week: int = Field(ge=1, le=7)
    split: Split
    # After the split: a model writes fields in order, so the title is written knowing the split
    # (written first, 33 of 59 served plans of the 2026-12-01 champion named "Upper/Lower" on a
    # full-body week).
    title: str = Field(min_length=3, max_length=60, pattern=printable(3, 60))
    sessions: list[WorkoutDay] = Field(min_length=1, max_length=MAX_SESSIONS)

    def session_seconds(self) -> list[int]:
        return [sum(exercise_seconds(e) for e in s.all_exercises()) for s in self.sessions]

    def session_minutes(self) -> list[float]:
        return [x / 60.0 for x in self.session_seconds()]

    def computed_minutes(self) -> float:
        """Mean computed session length (every session is checked on its own by validation)."""
        mins = self.session_minutes()
        return sum(mins) / len(mins)

    def all_exercises(self) -> list[RepsExercise | TimedExercise]:
        return [e for s in self.sessions for e in s.all_exercises()]


class RequestSpec(_Strict):
    """What a person asks for."""

    goal: Goal
    minutes: int = Field(ge=10, le=120)
    level: Level
    equipment: list[Equipment] = Field(min_length=1, max_length=len(EQUIPMENT))
    days_per_week: int = Field(ge=1, le=7)
    limitations: list[Limitation] = Field(default_factory=list, max_length=len(LIMITATIONS))
    focus: Focus | None = None

    @field_validator("equipment", "limitations")
    @classmethod
    def _unique_sorted(cls, v: list[str]) -> list[str]:
        return sorted(set(v), key=v.index)

    @model_validator(mode="after")
    def _body_only_always_available(self) -> RequestSpec:
        # Body weight needs no equipment; every person has it.
        if "body only" not in self.equipment:
            self.equipment = ["body only", *self.equipment]
        return self

    def key(self) -> str:
        """Canonical string of the request (stable hash input for splits and caches)."""
        return self.model_dump_json(exclude_none=True)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class TrainingExample(_Strict):
    """A supervised example as chat messages (system optional, then user, then assistant)."""

    messages: list[ChatMessage] = Field(min_length=2, max_length=3)
    request: RequestSpec | None = None
    source: str = "unknown"

    @model_validator(mode="after")
    def _roles(self) -> TrainingExample:
        roles = [m.role for m in self.messages]
        if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
            raise ValueError(f"messages must be [system?, user, assistant], got {roles}")
        return self

    @property
    def user(self) -> str:
        return next(m.content for m in self.messages if m.role == "user")

    @property
    def assistant(self) -> str:
        return self.messages[-1].content


class TrainingConfig(_Strict):
    """A LoRA recipe. Defaults are for SmolLM2-135M on 2 CPU cores (see the catalogue)."""

    backend: Literal["auto", "unsloth", "peft"] = "auto"
    rank: int = Field(default=16, ge=1, le=256)
    alpha: int = Field(default=32, ge=1, le=512)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    max_steps: int = Field(default=60, ge=0, le=100_000)
    epochs: float | None = Field(default=None, gt=0)
    seq_len: int = Field(default=512, ge=32, le=32_768)
    batch_size: int = Field(default=4, ge=1, le=512)
    grad_accum: int = Field(default=1, ge=1, le=512)
    warmup_steps: int = Field(default=4, ge=0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    seed: int = 1234
    packing: bool = True
    checkpoint_every: int = Field(default=10, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # bf16 autocast of the forward/backward with fp32 master weights (CPUs with AVX512-BF16/AMX run
    # bf16 matmuls several times faster; the optimizer state stays fp32).
    autocast_bf16: bool = False
    # Plain loop, packed rows: attend per packed example (core/training/packed_attention.py; the same
    # result as the block-diagonal mask, 1.3x faster steps on the 2-core box). Off by default (a new
    # recipe opts in once its graph passed with it: bf16 rounding differs, so it trains a different
    # model); the smollm2-135m recipe uses it since 2026-12-03 (core/catalogue.py, README "Latest").
    packed_attention: bool = False
    load_in_4bit: bool = False
    # peft backend only: its plain loop (default; packed, answer-only LM head, 1.5x SFTTrainer's defaults
    # here) or PEFT + TRL SFTTrainer (pumpl_assets/core/training/sft_loop.py).
    loop: Literal["plain", "sft_trainer"] = "plain"
    # Plain loop: loss weight of the answer tokens that carry the plan's decisions (the values of split,
    # day, main_count, sets, reps, rest_s, work_s, total_minutes, days_per_week; training/data.py), the
    # mean taken over the weights. 1.0 = plain cross-entropy. Exercise names are the coach's free choice
    # among suitable ones (high, irreducible loss); the decisions are few tokens a request determines.
    decision_weight: float = Field(default=1.0, ge=1.0, le=20.0)

    @model_validator(mode="after")
    def _weighting_needs_the_plain_loop(self) -> TrainingConfig:
        if self.decision_weight != 1.0 and self.loop != "plain":
            raise ValueError(
                f"decision_weight={self.decision_weight} needs loop='plain' (the {self.loop!r} loop computes "
                "its own unweighted loss)"
            )
        return self


class InferenceRequest(_Strict):
    """Body of ``POST /generate``."""

    prompt: str = Field(min_length=1, max_length=8000)
    # None: a plan request gets a whole plan's budget (pumpl_serving.api.PLAN_MAX_TOKENS; the grammar
    # closes the plan well before), free text DEFAULT_MAX_TOKENS.
    max_tokens: int | None = Field(default=None, ge=1, le=2048)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] | None = Field(default=None, max_length=4)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    system_prompt: str | None = Field(default=None, max_length=4000)
    constrained: bool | None = None
    equipment: list[Equipment] | None = None
    level: Level | None = None


class Usage(_Strict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelInfo(_Strict):
    name: str
    version: str | None = None
    alias: str | None = None


class InferenceResponse(_Strict):
    text: str
    plan: WorkoutPlanResponse | None = None
    usage: Usage
    model: ModelInfo
    latency_ms: float


def _anyof_to_oneof(node: Any) -> Any:
    """pydantic writes unions as anyOf; our variants are disjoint, so oneOf is exact and clearer."""
    if isinstance(node, dict):
        out = {k: _anyof_to_oneof(v) for k, v in node.items()}
        if "anyOf" in out and all(isinstance(x, dict) and "$ref" in x for x in out["anyOf"]):
            out["oneOf"] = out.pop("anyOf")
        return out
    if isinstance(node, list):
        return [_anyof_to_oneof(x) for x in node]
    return node


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and len(node) == 1:
                name = node["$ref"].split("/")[-1]
                return walk(copy.deepcopy(defs[name]))
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return walk(schema)


def plan_json_schema(
    exercise_names: list[str] | None = None,
    *,
    include_optional: bool = True,
    inline: bool = True,
) -> dict[str, Any]:
    """JSON Schema of :class:`WorkoutPlanResponse`.

    ``exercise_names`` narrows ``name`` to an enum (the catalogue, or the request-aware
    subset a person can actually do). ``include_optional=False`` drops the derivable
    optional keys (equipment, muscles, notes) — the compact form teachers and
    constrained decoding produce.
    """
    schema = WorkoutPlanResponse.model_json_schema()
    schema = _anyof_to_oneof(schema)
    schema = _inline_refs(schema) if inline else schema

    def patch(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict) and "sets" in props and "name" in props:
                if exercise_names is not None:
                    props["name"] = {"type": "string", "enum": sorted(set(exercise_names))}
                if not include_optional:
                    for k in ("equipment", "muscles", "notes"):
                        props.pop(k, None)
            for v in node.values():
                patch(v)
        elif isinstance(node, list):
            for v in node:
                patch(v)

    patch(schema)
    return schema


def parse_plan(text: str) -> WorkoutPlanResponse:
    """Parse a model's answer. Raises ``pydantic.ValidationError`` (JSON or schema)."""
    return WorkoutPlanResponse.model_validate_json(text)


def dump_plan(plan: WorkoutPlanResponse) -> str:
    """Canonical compact JSON of a plan (the training target form): no nulls, no default values."""
    return plan.model_dump_json(exclude_none=True, exclude_defaults=True)
