"""vLLM engine on a CUDA GPU: batched generation and guided (request-aware) JSON.

Run on a GPU machine with vllm installed: ``pytest -m gpu tests/gpu``. Skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


if not _cuda() or importlib.util.find_spec("vllm") is None:
    pytest.skip("needs a CUDA GPU and the vllm package", allow_module_level=True)

from pumpl_assets.core.exercises import ExerciseCatalogue  # noqa: E402
from pumpl_assets.core.generation import GenerationParams, load_engine  # noqa: E402
from pumpl_assets.core.grammar import allowed_exercise_names, request_plan_schema  # noqa: E402
from pumpl_assets.core.prompts import render_prompt, request_to_prompt  # noqa: E402
from pumpl_assets.core.schemas import RequestSpec, parse_plan  # noqa: E402

RECORDS: list[dict[str, Any]] = [
    {"name": "Push-Up", "level": "beginner", "equipment": "body only", "category": "strength"},
    {"name": "Plank", "level": "beginner", "equipment": None, "category": "strength"},
    {"name": "Dumbbell Row", "level": "beginner", "equipment": "dumbbell", "category": "strength"},
    {
        "name": "Barbell Snatch",
        "level": "expert",
        "equipment": "barbell",
        "category": "olympic weightlifting",
    },
]


@pytest.fixture(scope="module")
def vllm_engine(smollm2_dir: Path) -> Iterator[Any]:
    eng = load_engine("vllm", smollm2_dir)
    yield eng
    eng.close()


def test_vllm_generate_batch(vllm_engine: Any) -> None:
    tok = vllm_engine.tokenizer
    prompts = [
        render_prompt(tok, "Say hello", system=""),
        render_prompt(tok, "Name three exercises", system=""),
    ]
    gens = vllm_engine.generate(prompts, GenerationParams(max_new_tokens=32))
    assert len(gens) == 2
    for g in gens:
        assert g.prompt_tokens > 0 and 0 < g.completion_tokens <= 32
        assert g.finish_reason in ("stop", "length")
    # greedy is deterministic
    again = vllm_engine.generate(prompts, GenerationParams(max_new_tokens=32))
    assert [g.text for g in again] == [g.text for g in gens]


def test_vllm_guided_json_is_valid_and_request_aware(vllm_engine: Any) -> None:
    cat = ExerciseCatalogue.from_records(RECORDS)
    reqs = [
        RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3),
        RequestSpec(goal="endurance", minutes=20, level="beginner", equipment=["body only"], days_per_week=2),
    ]
    prompts = [render_prompt(vllm_engine.tokenizer, request_to_prompt(r)) for r in reqs]
    schemas: list[dict | None] = [request_plan_schema(r, cat) for r in reqs]
    gens = vllm_engine.generate(prompts, GenerationParams(max_new_tokens=1200), schemas)
    for req, g in zip(reqs, gens, strict=True):
        assert g.finish_reason == "stop", g
        plan = parse_plan(g.text)
        assert {e.name for e in plan.all_exercises()} <= set(allowed_exercise_names(req, cat))
