"""Continuous batching in the Hugging Face engine: a row that joins a running batch decodes exactly as
it would alone (fp32, greedy), whatever the rows around it, with and without a grammar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

if TYPE_CHECKING:
    from pumpl_assets.core.generation import DecodeAttention

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["Push-Up", "Plank", "Squat"]},
        "sets": {"type": "integer"},
    },
    "required": ["name", "sets"],
    "additionalProperties": False,
}
# Different lengths and budgets, so rows finish at different steps and newcomers join mid-run; the
# long prompt leaves > TRIM_COLUMNS columns of padding behind when it finishes (the trim path).
PROMPTS = [
    "Goal: strength. Time: 30 min.",
    "hi",
    "Create a 45-minute mobility session for my back " * 8,
    "a plan for legs",
    "Give me something short",
    "Goal: hypertrophy. Time: 60 min. Level: expert. Equipment: barbell, dumbbell.",
]
BUDGETS = [20, 33, 2, 41, 9, 27]


@pytest.mark.unit
@pytest.mark.parametrize("attention", ["grouped", "grouped-runs-of-1", "stock"])
def test_rows_joining_a_running_batch_decode_as_they_would_alone(
    tiny_model_dir: Path, attention: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pumpl_assets.core import decode_attention
    from pumpl_assets.core.generation import TRIM_COLUMNS, GenerationParams, HFEngine, load_engine

    if attention == "grouped-runs-of-1":  # every row attends from its own first column (row_chunks)
        monkeypatch.setattr(decode_attention, "ROW_CHUNK", 1)
        attention = "grouped"

    params = [GenerationParams(max_new_tokens=b, temperature=0.0) for b in BUDGETS]
    schemas = [SCHEMA if i % 2 else None for i in range(len(PROMPTS))]
    eng = load_engine(
        "transformers",
        tiny_model_dir,
        device="cpu",
        dtype="float32",
        decode_attention=cast("DecodeAttention", attention),
    )
    assert isinstance(eng, HFEngine)
    try:
        long_tokens = len(eng.tokenizer(PROMPTS[2], add_special_tokens=False).input_ids)
        short_tokens = len(eng.tokenizer(PROMPTS[3], add_special_tokens=False).input_ids)
        assert long_tokens - short_tokens >= TRIM_COLUMNS  # the trim path runs below
        alone = [eng.generate([p], [q], [s])[0] for p, q, s in zip(PROMPTS, params, schemas, strict=True)]
        joined = eng.generate(PROMPTS, params, schemas, max_batch=2)
        stats = dict(eng.last_stats)
        whole = eng.generate(PROMPTS, params, schemas)
    finally:
        eng.close()
    assert [g.token_ids for g in joined] == [g.token_ids for g in alone]
    assert [g.text for g in joined] == [g.text for g in alone]
    assert [g.finish_reason for g in joined] == [g.finish_reason for g in alone]
    assert [g.token_ids for g in whole] == [g.token_ids for g in alone]
    assert stats["admitted_late"] == len(PROMPTS) - 2 and stats["batch"] == 2
    assert stats["trimmed_columns"] >= TRIM_COLUMNS
    # Rows ran different lengths (the point of the test); the grammar rows wrote the schema's JSON.
    assert len({g.completion_tokens for g in joined}) > 2
    assert all(g.seconds > 0 for g in joined)
    import json

    for g, s in zip(joined, schemas, strict=True):
        if s is not None and g.finish_reason == "stop":
            assert json.loads(g.text)["name"] in SCHEMA["properties"]["name"]["enum"]  # type: ignore[index]


@pytest.mark.unit
def test_max_batch_below_one_is_a_clear_error(tiny_model_dir: Path) -> None:
    from pumpl_assets.core.generation import GenerationParams, HFEngine, load_engine

    eng = load_engine("transformers", tiny_model_dir, device="cpu", dtype="float32")
    assert isinstance(eng, HFEngine)
    try:
        with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
            eng.generate(["hi", "there"], GenerationParams(max_new_tokens=2), max_batch=0)
    finally:
        eng.close()
