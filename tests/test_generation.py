"""Engines and constrained decoding (generation.py) on a tiny random Llama and the real SmolLM2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.generation import (
    ENGINE_KINDS,
    EngineError,
    GenerationParams,
    HFEngine,
    load_engine,
)
from pumpl_assets.core.grammar import GUARANTEED_CHECKS, allowed_exercise_names, request_plan_schema
from pumpl_assets.core.prompts import render_prompt, request_to_prompt
from pumpl_assets.core.schemas import RequestSpec, parse_plan
from pumpl_assets.core.validate import adherence

RECORDS: list[dict[str, Any]] = [
    {"name": "Push-Up", "level": "beginner", "equipment": "body only", "category": "strength"},
    {"name": "Plank", "level": "beginner", "equipment": None, "category": "strength"},
    {"name": "Dumbbell Row", "level": "beginner", "equipment": "dumbbell", "category": "strength"},
    {"name": "Goblet Squat", "level": "beginner", "equipment": "kettlebells", "category": "strength"},
    {
        "name": "Barbell Snatch",
        "level": "expert",
        "equipment": "barbell",
        "category": "olympic weightlifting",
    },
    {"name": "Cable Fly", "level": "intermediate", "equipment": "cable", "category": "strength"},
    # warm-up drill and cool-down stretch: the served grammar needs a name for every block
    {
        "name": "Arm Circles",
        "level": "beginner",
        "equipment": None,
        "category": "stretching",
        "force": "push",
    },
    {
        "name": "Child's Pose",
        "level": "beginner",
        "equipment": None,
        "category": "stretching",
        "force": "static",
    },
]

REQ_A = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3)
REQ_B = RequestSpec(
    goal="hypertrophy", minutes=45, level="expert", equipment=["barbell", "cable"], days_per_week=4
)


@pytest.fixture(scope="module")
def catalogue() -> ExerciseCatalogue:
    return ExerciseCatalogue.from_records(RECORDS)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[HFEngine]:
    import torch

    torch.set_num_threads(2)
    eng = load_engine("transformers", tiny_model_dir)
    assert isinstance(eng, HFEngine)
    yield eng
    eng.close()


def prompts_for(eng: HFEngine, reqs: list[RequestSpec]) -> list[str]:
    return [render_prompt(eng.tokenizer, request_to_prompt(r), system="Be brief.") for r in reqs]


def exercise_names(text: str) -> list[str]:
    plan = parse_plan(text)
    return [e.name for e in plan.all_exercises()]


@pytest.mark.integration
def test_batched_equals_one_by_one_greedy(engine: HFEngine) -> None:
    prompts = [
        "Hi",
        render_prompt(engine.tokenizer, request_to_prompt(REQ_A), system="A much longer system prompt " * 4),
        render_prompt(engine.tokenizer, "short", system=""),
    ]
    params = GenerationParams(max_new_tokens=24)
    batched = engine.generate(prompts, params)
    single = [engine.generate([p], params)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.completion_tokens for g in batched] == [len(g.token_ids) for g in single]
    lens = [len(engine.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    assert [g.prompt_tokens for g in batched] == lens
    assert len(set(lens)) == 3  # really different lengths → real left padding
    assert all(g.finish_reason in ("stop", "length") for g in batched)
    assert all(g.completion_tokens <= 24 for g in batched)


@pytest.mark.integration
def test_left_padding_first_step_logits_match(engine: HFEngine) -> None:
    """The padded row's next-token logits equal the unpadded run's (mask + position ids right)."""
    import torch

    tok = engine.tokenizer
    short, long = "Plan a workout", "Plan a long and detailed workout for a person with dumbbells"
    ids_s = tok(short, add_special_tokens=False).input_ids
    ids_l = tok(long, add_special_tokens=False).input_ids
    pad = len(ids_l) - len(ids_s)
    ids = torch.tensor([[engine.pad_token_id] * pad + ids_s, ids_l])
    mask = torch.tensor([[0] * pad + [1] * len(ids_s), [1] * len(ids_l)])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        batched = engine.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0, -1]
        alone = engine.model(input_ids=torch.tensor([ids_s])).logits[0, -1]
    assert torch.allclose(batched, alone, atol=1e-4)


@pytest.mark.integration
def test_constrained_random_model_yields_valid_request_aware_plans(
    engine: HFEngine, catalogue: ExerciseCatalogue
) -> None:
    reqs = [REQ_A, REQ_B]
    schemas: list[dict | None] = [request_plan_schema(r, catalogue) for r in reqs]
    # Every string in the schema is bounded (enum names, title maxLength) and arrays have
    # maxItems, so even a random model must close the JSON well within this budget.
    gens = engine.generate(prompts_for(engine, reqs), GenerationParams(max_new_tokens=1500), schemas)
    for req, g in zip(reqs, gens, strict=True):
        assert g.finish_reason == "stop", g
        plan = parse_plan(g.text)  # raises if not a WorkoutPlanResponse
        allowed = set(allowed_exercise_names(req, catalogue))
        assert set(exercise_names(g.text)) <= allowed
        # the served grammar guarantees these checks even for a random model
        checks = adherence(req, plan, catalogue).checks
        assert all(checks[c] for c in GUARANTEED_CHECKS), checks
        assert " " not in g.text.split('"title"')[0]  # compact JSON
    assert "Barbell Snatch" not in allowed_exercise_names(REQ_A, catalogue)


@pytest.mark.integration
def test_constrained_length_cut_is_a_grammar_prefix(engine: HFEngine, catalogue: ExerciseCatalogue) -> None:
    import xgrammar as xgr

    schema = request_plan_schema(REQ_A, catalogue)
    g = engine.generate(prompts_for(engine, [REQ_A]), GenerationParams(max_new_tokens=12), [schema])[0]
    assert g.finish_reason == "length"
    assert g.completion_tokens == 12
    m = xgr.GrammarMatcher(engine.grammars.get(schema))
    assert m.accept_string(g.text)
    assert not m.is_completed()


@pytest.mark.integration
def test_mixed_batch_leaves_unconstrained_rows_untouched(
    engine: HFEngine, catalogue: ExerciseCatalogue
) -> None:
    prompts = prompts_for(engine, [REQ_A, REQ_B])
    params = GenerationParams(max_new_tokens=30)
    free_alone = engine.generate([prompts[1]], params)[0]
    mixed = engine.generate(prompts, params, [request_plan_schema(REQ_A, catalogue), None])
    assert mixed[1].text == free_alone.text
    assert mixed[0].text.startswith('{"total_minutes":')


@pytest.mark.integration
def test_stop_strings_cut_text(engine: HFEngine) -> None:
    prompt = prompts_for(engine, [REQ_A])[0]
    full = engine.generate([prompt], GenerationParams(max_new_tokens=20))[0]
    assert len(full.text) > 6
    stop = full.text[4:7]
    cut = engine.generate([prompt], GenerationParams(max_new_tokens=20, stop=[stop]))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert stop not in cut.text


@pytest.mark.integration
def test_end_of_turn_token_stops_a_row(engine: HFEngine) -> None:
    """A row stops at its first end-of-turn id, which is not part of the text (random weights
    never emit the real EOS, so the stop set is pointed at a token the model does emit)."""
    prompts = prompts_for(engine, [REQ_A, REQ_B])
    params = GenerationParams(max_new_tokens=16)
    ids = engine.generate(prompts[:1], params)[0].token_ids
    assert len(ids) == 16
    eos = ids[3]
    saved = engine.stop_token_ids
    engine.stop_token_ids = [eos]
    try:
        stopped, other = engine.generate(prompts, params)
    finally:
        engine.stop_token_ids = saved
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens == ids.index(eos)
    assert stopped.text == engine.tokenizer.decode(ids[: ids.index(eos)])
    assert other.completion_tokens == 16 or other.finish_reason == "stop"


@pytest.mark.integration
def test_seeded_sampling_is_reproducible_and_batch_independent(engine: HFEngine) -> None:
    prompts = prompts_for(engine, [REQ_A, REQ_B])
    p1 = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    a = engine.generate([prompts[0]], p1)[0]
    b = engine.generate([prompts[0]], p1)[0]
    assert a.text == b.text
    in_batch = engine.generate(prompts, [p1, GenerationParams(max_new_tokens=5)])[0]
    assert in_batch.text == a.text
    others = {engine.generate([prompts[0]], GenerationParams(16, 1.0, 1.0, seed=s))[0].text for s in range(4)}
    assert len(others) > 1  # sampling really samples


@pytest.mark.integration
def test_stream_pieces_join_to_generate(engine: HFEngine, catalogue: ExerciseCatalogue) -> None:
    prompt = prompts_for(engine, [REQ_B])[0]
    params = GenerationParams(max_new_tokens=20)
    pieces = list(engine.stream(prompt, params))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.generate([prompt], params)[0].text
    schema = request_plan_schema(REQ_B, catalogue)
    cparams = GenerationParams(max_new_tokens=1500)
    joined = "".join(engine.stream(prompt, cparams, schema))
    assert joined == engine.generate([prompt], cparams, [schema])[0].text
    parse_plan(joined)


@pytest.mark.integration
def test_bad_arguments_are_clear_errors(engine: HFEngine) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 params"):
        engine.generate(["a", "b"], [GenerationParams()])
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(["a"], GenerationParams(max_new_tokens=0))
    assert engine.generate([], GenerationParams()) == []


@pytest.mark.unit
def test_unknown_engine_names_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="supported engines: transformers, bnb4, bnb8, awq, vllm, llamacpp"):
        load_engine("tensorrt", tmp_path)
    assert ENGINE_KINDS == ("transformers", "bnb4", "bnb8", "awq", "vllm", "llamacpp")


@pytest.mark.unit
def test_vllm_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present; see tests/gpu/test_vllm_gpu.py")
    with pytest.raises(EngineError, match="needs a CUDA GPU"):
        load_engine("vllm", tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["bnb4", "bnb8"])
def test_bitsandbytes_engines_on_cpu(tiny_model_dir: Path, kind: str) -> None:
    import warnings

    eng = load_engine(kind, tiny_model_dir, device="cpu")
    try:
        assert eng.name == kind and eng.quantization == kind
        assert isinstance(eng, HFEngine)
        layer = type(eng.model.model.layers[0].self_attn.q_proj).__name__
        assert layer == ("Linear4bit" if kind == "bnb4" else "Linear8bitLt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gens = eng.generate(["Hello there", "A longer prompt for the batch"], GenerationParams(8))
        assert [g.completion_tokens for g in gens] == [8, 8]
        assert all(g.text for g in gens)
    finally:
        eng.close()


@pytest.fixture(scope="module")
def compressed_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compressed-tensors W4A16 (group 32) folder, the format llmcompressor's AWQ writes."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    recipe: Any = [QuantizationModifier(ignore=["lm_head"], config_groups={"g": scheme})]
    oneshot(model=model, recipe=recipe)
    out = tmp_path_factory.mktemp("awq") / "tiny-w4a16"
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(str(out))
    return out


@pytest.mark.integration
def test_awq_engine_loads_compressed_tensors(compressed_dir: Path, tiny_model_dir: Path) -> None:
    eng = load_engine("awq", compressed_dir, device="cpu")
    try:
        assert eng.name == "awq" and eng.quantization == "awq"
        gens = eng.generate(["Hello there", "A longer prompt for the batch"], GenerationParams(6))
        assert [g.completion_tokens for g in gens] == [6, 6]
    finally:
        eng.close()
    with pytest.raises(ValueError, match="already quantized"):
        load_engine("bnb4", compressed_dir)
    with pytest.raises(ValueError, match="needs a compressed-tensors"):
        load_engine("awq", tiny_model_dir)


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pumpl_assets.core.training.base import patch_peft_torchao

    patch_peft_torchao()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, cfg)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(str(out))
    return out


@pytest.mark.integration
def test_adapter_is_applied_unmerged_and_toggleable(tiny_model_dir: Path, lora_dir: Path) -> None:
    base = load_engine("transformers", tiny_model_dir)
    eng = load_engine("transformers", tiny_model_dir, adapter_path=lora_dir)
    try:
        assert isinstance(eng, HFEngine) and isinstance(base, HFEngine)
        assert hasattr(eng.model, "disable_adapter")
        prompts = ["Give me a plan", "Another, longer request for a plan please"]
        params = GenerationParams(max_new_tokens=12)
        with_adapter = eng.generate(prompts, params)
        with eng.model.disable_adapter():
            without = eng.generate(prompts, params)
        assert [g.text for g in without] == [g.text for g in base.generate(prompts, params)]
        assert [g.text for g in with_adapter] != [g.text for g in without]
    finally:
        eng.close()
        base.close()
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        load_engine("transformers", tiny_model_dir, adapter_path=tiny_model_dir)


# ---- slow: the real SmolLM2-135M ------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_engine(smollm2_dir: Path) -> Iterator[HFEngine]:
    import torch

    torch.set_num_threads(2)
    eng = load_engine("transformers", smollm2_dir)
    assert isinstance(eng, HFEngine)
    yield eng
    eng.close()


@pytest.mark.slow
def test_smollm2_constrained_plans_are_valid_and_request_aware(
    smol_engine: HFEngine, shared_exercises_path: Path
) -> None:
    cat = ExerciseCatalogue.from_json_file(shared_exercises_path)
    reqs = [
        REQ_A,
        RequestSpec(
            goal="mobility",
            minutes=20,
            level="intermediate",
            equipment=["bands"],
            days_per_week=2,
            limitations=["knees"],
        ),
    ]
    schemas: list[dict | None] = [request_plan_schema(r, cat) for r in reqs]
    prompts = [render_prompt(smol_engine.tokenizer, request_to_prompt(r)) for r in reqs]
    # The grammar bounds every list (sessions, blocks); 2048 tokens leaves an untuned model room to close a plan.
    gens = smol_engine.generate(prompts, GenerationParams(max_new_tokens=2048), schemas)
    for req, g in zip(reqs, gens, strict=True):
        assert g.finish_reason == "stop", g
        names = exercise_names(g.text)
        assert set(names) <= set(allowed_exercise_names(req, cat))
