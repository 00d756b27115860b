"""Schemas, prompt formatting, catalogue and settings — the single sources of truth."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from pumpl_assets.core import prompts, settings
from pumpl_assets.core.catalogue import CATALOGUE, ModelNotAvailableError, get_spec
from pumpl_assets.core.schemas import (
    EQUIPMENT,
    GOALS,
    LEVELS,
    LIMITATIONS,
    MAX_MAIN,
    MAX_SESSIONS,
    MINUTES_CHOICES,
    InferenceRequest,
    RepsExercise,
    RequestSpec,
    TimedExercise,
    WorkoutPlanResponse,
    dump_plan,
    parse_plan,
    plan_json_schema,
)

PLAN = {
    "title": "Quick Strength",
    "total_minutes": 20,
    "days_per_week": 3,
    "split": "full_body",
    "sessions": [
        {
            "day": "full_body",
            "warmup": [{"name": "Jumping Jacks", "work_s": 60}],
            "main": [{"name": "Push-Up", "sets": 3, "reps": 10, "rest_s": 60}],
            "cooldown": [{"name": "Child's Pose", "work_s": 45}],
        }
    ],
}


@pytest.mark.unit
def test_plan_roundtrip_is_compact_and_canonical() -> None:
    plan = parse_plan(json.dumps(PLAN))
    text = dump_plan(plan)
    assert '"sets":1' not in text and '"rest_s":0' not in text and "null" not in text
    assert parse_plan(text) == plan
    assert isinstance(plan.sessions[0].main[0], RepsExercise)
    assert isinstance(plan.sessions[0].warmup[0], TimedExercise)
    assert [e.name for e in plan.all_exercises()] == ["Jumping Jacks", "Push-Up", "Child's Pose"]
    # 60+30 + 3×(30+60)+30 + 45+30 seconds
    assert plan.session_minutes() == pytest.approx([(90 + 300 + 75) / 60])
    assert plan.computed_minutes() == pytest.approx(plan.session_minutes()[0])


@pytest.mark.unit
@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["sessions"][0]["main"][0].update(work_s=30),  # both reps and work_s
        lambda p: p["sessions"][0]["main"][0].pop("reps"),  # neither
        lambda p: p["sessions"][0].update(main=[]),  # empty block
        lambda p: p["sessions"][0]["main"][0].update(sets=99),  # out of range
        lambda p: p.update(extra="x"),  # unknown key
        lambda p: p["sessions"][0]["warmup"].extend([{"name": "A b", "work_s": 5}] * 3),  # maxItems
        lambda p: p.update(session=p.pop("sessions")[0]),  # the v1 shape
        lambda p: p.pop("split"),  # split required
        lambda p: p.update(split="bro_split"),  # unknown split
        lambda p: p["sessions"][0].update(day="arms"),  # unknown day
        lambda p: p["sessions"][0].pop("day"),  # day required
        lambda p: p.update(sessions=[]),  # at least one session
        lambda p: p.update(sessions=p["sessions"] * 4),  # at most MAX_SESSIONS
    ],
)
def test_schema_rejects_structural_errors(mutate) -> None:  # type: ignore[no-untyped-def]
    bad = json.loads(json.dumps(PLAN))
    mutate(bad)
    with pytest.raises(ValidationError):
        WorkoutPlanResponse.model_validate(bad)


@pytest.mark.unit
def test_exported_json_schema_carries_the_grammar_rules() -> None:
    schema = plan_json_schema(["Push-Up", "Squat"], include_optional=False)
    text = json.dumps(schema)
    assert "$ref" not in text  # inlined for teachers and grammar compilers
    sessions = schema["properties"]["sessions"]
    assert sessions["maxItems"] == MAX_SESSIONS and sessions["minItems"] == 1
    session = sessions["items"]["properties"]
    assert session["day"]["enum"] == ["full_body", "upper", "lower", "push", "pull", "legs"]
    assert schema["properties"]["split"]["enum"] == ["full_body", "upper_lower", "push_pull_legs"]
    main = session["main"]
    assert main["maxItems"] == MAX_MAIN == 10
    variants = main["items"]["oneOf"]
    assert len(variants) == 2
    assert {tuple(sorted(v["required"])) for v in variants} == {("name", "reps"), ("name", "work_s")}
    for v in variants:
        assert v["additionalProperties"] is False
        assert v["properties"]["name"]["enum"] == ["Push-Up", "Squat"]
        assert "equipment" not in v["properties"]


@pytest.mark.unit
def test_minutes_choices_are_twelve_lengths() -> None:
    assert MINUTES_CHOICES == (10, 15, 20, 25, 30, 40, 45, 50, 60, 75, 90, 120)


@pytest.mark.unit
def test_request_prompt_roundtrip_over_many_requests() -> None:
    rng = random.Random(0)
    for _ in range(300):
        req = RequestSpec(
            goal=rng.choice(GOALS),
            minutes=rng.choice(MINUTES_CHOICES),
            level=rng.choice(LEVELS),
            equipment=rng.sample(EQUIPMENT, rng.randint(1, 4)),
            days_per_week=rng.randint(1, 7),
            limitations=rng.sample(LIMITATIONS, rng.randint(0, 2)),
            focus=rng.choice([None, None, "core", "upper_body", "lower_body", "glutes", "arms"]),
        )
        assert prompts.prompt_to_request(prompts.request_to_prompt(req)) == req


@pytest.mark.unit
def test_free_form_prompt_has_no_request() -> None:
    assert prompts.prompt_to_request("Write me a haiku about squats") is None


@pytest.mark.unit
def test_body_only_is_always_available() -> None:
    req = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3)
    assert req.equipment[0] == "body only"


@pytest.mark.unit
def test_inference_request_bounds() -> None:
    InferenceRequest(prompt="x", max_tokens=10, temperature=0.5)
    for bad in (
        {"prompt": ""},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "temperature": 9},
        {"prompt": "x", "nope": 1},
    ):
        with pytest.raises(ValidationError):
            InferenceRequest.model_validate(bad)


@pytest.mark.unit
def test_prompt_styles_and_env(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = prompts.render_prompt(tok, "hello", system="SYS", style="chat_template")
    assert chat.endswith("<|im_start|>assistant\n") and "SYS" in chat
    prompt, full = prompts.render_example(tok, "hello", '{"a":1}', system="SYS", style="chat_template")
    assert full == prompt + '{"a":1}<|im_end|>'
    assert prompts.render_prompt(tok, "hi", system="S", style="mistral_inst") == "<s>[INST] S\n\nhi [/INST]"
    monkeypatch.setenv("PUMPL_SYSTEM_PROMPT", "Custom coach")
    assert "Custom coach" in prompts.render_prompt(tok, "hi")
    monkeypatch.setenv("PUMPL_PROMPT_STYLE", "mistral_inst")
    assert prompts.resolve_style("chat_template") == "mistral_inst"
    monkeypatch.setenv("PUMPL_PROMPT_STYLE", "bogus")
    with pytest.raises(ValueError, match="PUMPL_PROMPT_STYLE"):
        prompts.resolve_style("chat_template")
    with pytest.raises(ValueError, match="unknown prompt style"):
        prompts.render_prompt(tok, "x", style="weird")


@pytest.mark.unit
def test_catalogue_partitions_and_missing_model_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pumpl_assets.core.basemodel import check_model_available

    assert list(CATALOGUE) == ["smollm2-135m", "qwen3-4b", "llama-3.1-8b", "mistral-7b"]
    assert get_spec("smollm2-135m").awq_group_size == 64
    assert get_spec("mistral-7b").prompt_style == "mistral_inst"
    with pytest.raises(KeyError, match="known"):
        get_spec("gpt-9")
    monkeypatch.setenv("PUMPL_MODELS_ROOT", str(tmp_path))
    monkeypatch.delenv("PUMPL_ALLOW_HUB_DOWNLOAD", raising=False)
    with pytest.raises(ModelNotAvailableError) as err:
        check_model_available(get_spec("qwen3-4b"))
    msg = str(err.value)
    assert str(tmp_path / "qwen3-4b") in msg and "Qwen/Qwen3-4B" in msg and "PUMPL_MODEL_PATH_QWEN3_4B" in msg


@pytest.mark.unit
def test_model_path_override(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pumpl_assets.core.basemodel import ensure_base_model

    monkeypatch.setenv("PUMPL_MODEL_PATH_QWEN3_4B", str(tiny_model_dir))
    assert ensure_base_model(get_spec("qwen3-4b")) == tiny_model_dir


@pytest.mark.unit
def test_smollm2_conversion_is_cached_and_template_consistent(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    from pumpl_assets.core.basemodel import MARKER, ensure_base_model

    assert (smollm2_dir / MARKER).is_file()
    mtime = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_base_model(get_spec("smollm2-135m")) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == mtime  # not redone
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.eos_token == "<|im_end|>"  # matches the chat template's end of turn
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in cfg


@pytest.mark.unit
def test_settings_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PUMPL_DATA_ROOT", str(tmp_path / "d"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert settings.raw_dir() == tmp_path / "d" / "raw"
    assert settings.mlflow_tracking_uri() == f"sqlite:///{tmp_path / 'd' / 'mlflow' / 'mlflow.db'}"
    assert settings.artifacts_dir("p", "a") == tmp_path / "d" / "artifacts" / "p" / "a"
