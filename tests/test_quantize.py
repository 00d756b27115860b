"""AWQ 4-bit quantization with llm-compressor on CPU: real runs on the tiny model (and SmolLM2, slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pumpl_assets.core.quantize import (
    QUANT_MARKER,
    LLMCompressorQuantizer,
    QuantizationError,
    QuantResult,
    fit_group_size,
    group_size_for,
    model_size_bytes,
    select_quantizer,
)

REQUESTS = [
    ("strength", 30, "beginner", "dumbbell"),
    ("hypertrophy", 45, "intermediate", "barbell, body only"),
    ("endurance", 20, "beginner", "body only"),
    ("general_fitness", 60, "advanced", "kettlebells, cable"),
    ("fat_loss", 25, "intermediate", "bands"),
    ("strength", 50, "advanced", "barbell"),
    ("mobility", 15, "beginner", "body only"),
    ("hypertrophy", 40, "beginner", "machine, dumbbell"),
]


def calibration_texts(model_dir: Path, n: int = 8) -> list[str]:
    """Rendered (prompt + answer) examples in the model's chat template, like the train split."""
    from transformers import AutoTokenizer

    from pumpl_assets.core.prompts import render_example

    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for i in range(n):
        goal, minutes, level, equip = REQUESTS[i % len(REQUESTS)]
        user = (
            f"Goal: {goal}. Time: {minutes} min. Level: {level}. Equipment: {equip}. "
            f"Days/week: {2 + i % 4}. Limitations: none."
        )
        answer = json.dumps(
            {
                "title": f"{goal} session {i}",
                "blocks": [
                    {"name": "warm-up", "exercises": [{"name": "Jumping Jacks", "sets": 1, "reps": 30}]},
                    {"name": "main", "exercises": [{"name": "Goblet Squat", "sets": 3 + i % 2, "reps": 10}]},
                ],
            }
        )
        out.append(render_example(tok, user, answer, system="You are a strength coach.")[1])
    return out


def _weights(model_dir: Path) -> dict[str, object]:
    from safetensors import safe_open

    out: dict[str, object] = {}
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118
                out[k] = fh.get_slice(k).get_dtype()
    return out


def _reload_and_compare(source: Path, quantized: Path, prompt: str) -> tuple[float, float, str]:
    """(min cosine of logits rows, top-1 agreement) teacher-forced vs. the source, plus a greedy generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(quantized)
    q = AutoModelForCausalLM.from_pretrained(quantized).eval()  # plain transformers, CPU
    ref = AutoModelForCausalLM.from_pretrained(source).eval()
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = q.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
        )
        lq, lr = q(input_ids=ids).logits[0].float(), ref(input_ids=ids).logits[0].float()
    cos = float(torch.nn.functional.cosine_similarity(lq, lr, dim=-1).min())
    top1 = float((lq.argmax(-1) == lr.argmax(-1)).float().mean())
    assert out.shape[1] > ids.shape[1], "quantized model generated nothing"
    return cos, top1, str(tok.decode(out[0, ids.shape[1] :]))


@pytest.fixture(scope="module")
def tiny_awq(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> QuantResult:
    q = select_quantizer("auto", "cpu")
    out = tmp_path_factory.mktemp("awq") / "awq"
    return q.quantize(tiny_model_dir, out, calibration_texts(tiny_model_dir), group_size=64, max_seq_len=128)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("hidden", "inter", "preferred", "expected"),
    [
        (576, 1536, 128, 64),  # SmolLM2-135M
        (4096, 11008, 128, 128),  # Llama-2-7B
        (4096, 14336, 128, 128),  # Llama-3.1-8B / Mistral-7B
        (2560, 9728, 128, 128),  # Qwen3-4B
        (64, 128, 128, 64),  # tiny test model
        (96, 160, 128, 32),
        (4096, 14336, 64, 64),  # preferred caps the choice
    ],
)
def test_fit_group_size(hidden: int, inter: int, preferred: int, expected: int) -> None:
    assert fit_group_size(hidden, inter, preferred) == expected


@pytest.mark.unit
def test_fit_group_size_impossible() -> None:
    with pytest.raises(ValueError, match=r"hidden_size=100.*intermediate_size=200"):
        fit_group_size(100, 200)


@pytest.mark.unit
def test_group_size_for_reads_config(tiny_model_dir: Path, smollm2_dir: Path) -> None:
    assert group_size_for(tiny_model_dir) == 64
    assert group_size_for(smollm2_dir) == 64


@pytest.mark.unit
def test_model_size_counts_weights_only(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "model-00002.safetensors").write_bytes(b"x" * 500)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 5000)
    (tmp_path / "config.json").write_text("{}")
    assert model_size_bytes(tmp_path) == 1500
    with pytest.raises(FileNotFoundError):
        model_size_bytes(tmp_path / "nope")


@pytest.mark.unit
def test_select_quantizer() -> None:
    assert select_quantizer("auto", "cpu").name == "llmcompressor"
    assert select_quantizer("llmcompressor", "cuda").name == "llmcompressor"
    assert select_quantizer("autoawq", "cuda:0").name == "autoawq"
    with pytest.raises(ValueError, match=r"unknown quantizer 'gptq'.*auto, llmcompressor, autoawq"):
        select_quantizer("gptq", "cpu")
    with pytest.raises(QuantizationError, match=r"autoawq.*CUDA.*cannot be loaded on CPU"):
        select_quantizer("autoawq", "cpu")


@pytest.mark.unit
def test_bad_inputs_are_refused(tiny_model_dir: Path, tiny_awq: QuantResult, tmp_path: Path) -> None:
    q = LLMCompressorQuantizer()
    texts = ["some calibration text"]
    with pytest.raises(ValueError, match="calibration_texts is empty"):
        q.quantize(tiny_model_dir, tmp_path / "a", ["", "  "], group_size=64)
    with pytest.raises(ValueError, match=r"group_size=48"):
        q.quantize(tiny_model_dir, tmp_path / "b", texts, group_size=48)
    with pytest.raises(QuantizationError, match="already quantized"):
        q.quantize(tiny_awq.out_dir, tmp_path / "c", texts, group_size=64)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        q.quantize(tmp_path, tmp_path / "d", texts, group_size=64)
    assert not any((tmp_path / n).exists() for n in "abcd")


@pytest.mark.unit
def test_awq_tiny_folder_is_compressed(tiny_model_dir: Path, tiny_awq: QuantResult) -> None:
    from llmcompressor.pipelines.cache import IntermediatesCache

    r = tiny_awq
    assert r.backend == "llmcompressor" and r.group_size == 64 and r.n_calibration == 8
    assert r.source_size_bytes == model_size_bytes(tiny_model_dir)
    assert r.size_bytes == model_size_bytes(r.out_dir)
    assert 0 < r.size_bytes < r.source_size_bytes
    assert r.size_ratio == pytest.approx(r.size_bytes / r.source_size_bytes)

    qc = json.loads((r.out_dir / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == "pack-quantized"
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"]) == (4, 64, "group")
    assert "lm_head" in qc["ignore"]

    tensors = _weights(r.out_dir)
    packed = [k for k in tensors if k.endswith(".weight_packed")]
    assert len(packed) == 2 * 7  # 2 layers x q/k/v/o/gate/up/down, all 4-bit
    assert not any("lm_head" in k and "packed" in k for k in tensors)
    assert "model.embed_tokens.weight" in tensors  # tied embeddings kept, unquantized
    assert not any(k.startswith("model.embed_tokens.") and k != "model.embed_tokens.weight" for k in tensors)
    assert (r.out_dir / "tokenizer_config.json").is_file()
    assert json.loads((r.out_dir / QUANT_MARKER).read_text())["group_size"] == 64
    # The CPU pin-memory workaround is scoped to the call.
    assert IntermediatesCache.pin_memory.__name__ == "pin_memory"


@pytest.mark.unit
def test_awq_tiny_reloads_and_generates_on_cpu(tiny_model_dir: Path, tiny_awq: QuantResult) -> None:
    prompt = calibration_texts(tiny_model_dir, 1)[0]
    cos, top1, _ = _reload_and_compare(tiny_model_dir, tiny_awq.out_dir, prompt)
    assert cos > 0.9, f"quantized logits drifted from the source (min cosine {cos:.3f})"
    assert top1 > 0.8


def _shims(model: object) -> int:
    """Quantized modules whose forward is compressed-tensors' instance-level quantize-dequantize shim."""
    return sum(
        hasattr(m, "quantization_scheme") and "forward" in vars(m)
        for m in model.modules()  # type: ignore[attr-defined]
    )


@pytest.mark.unit
def test_engine_runs_the_awq_model_dense_with_the_same_logits(
    tiny_awq: QuantResult, tiny_model_dir: Path
) -> None:
    """The engine decompresses an AWQ folder on load and drops compressed-tensors' per-Linear shim
    (weight-only scheme: the shim computes what nn.Linear does); the logits are those of the shimmed
    model, bit for bit, and the engine still generates."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pumpl_assets.core.generation import GenerationParams, HFEngine, dense_compressed_tensors, load_engine

    eng = load_engine("transformers", tiny_awq.out_dir, dtype="float32")
    assert isinstance(eng, HFEngine)
    try:
        assert eng.quantization == "compressed-tensors"
        assert _shims(eng.model) == 0
        shimmed = AutoModelForCausalLM.from_pretrained(tiny_awq.out_dir, dtype=torch.float32).eval()
        n_shims = _shims(shimmed)
        assert n_shims == 2 * 7  # 2 layers x q/k/v/o/gate/up/down carry the shim as loaded
        tok = AutoTokenizer.from_pretrained(tiny_awq.out_dir)
        ids = tok(calibration_texts(tiny_model_dir, 1)[0], return_tensors="pt").input_ids
        with torch.inference_mode():
            want = shimmed(input_ids=ids).logits
            got = eng.model(input_ids=ids).logits
        assert torch.equal(got, want)
        assert dense_compressed_tensors(shimmed) == n_shims
        assert dense_compressed_tensors(shimmed) == 0  # idempotent
        out = eng.generate([str(tok.decode(ids[0, :16]))], GenerationParams(max_new_tokens=6))
        assert out[0].completion_tokens > 0
    finally:
        eng.close()


def _main_job_awq() -> tuple[Path, Path] | None:
    """The main job's AWQ folder of smollm2-135m and its merged source, when `bash scripts/main.sh` ran
    on this checkout's artifact root (CI runs the tests after it)."""
    from pumpl_assets.core import artifacts as A

    root = A.artifact_root()
    if "://" in root:
        return None
    part = Path(root) / "smollm2-135m"
    awq, merged = part / "awq_model" / A.DIR_MODEL, part / "merged_model" / A.DIR_MODEL
    if (awq / QUANT_MARKER).is_file() and (merged / "config.json").is_file():
        return awq, merged
    return None


@pytest.mark.slow
def test_awq_smollm2_size_and_quality(smollm2_dir: Path, tmp_path: Path) -> None:
    """SmolLM2-135M, group size 64: ≤ 0.45 of the fp32 folder, reloads on CPU, stays close to fp32.

    After the main job (CI) the subject is the graph's own AWQ model -- the production calibration
    (32 texts, 20-point grid) of the fine-tuned SmolLM2 -- against its merged source, instead of a
    second, smaller quantization of the base model (~2 min of CI); otherwise the base is quantized here.
    """
    if (done := _main_job_awq()) is not None:
        awq_dir, source = done
        group_size = int(json.loads((awq_dir / QUANT_MARKER).read_text())["group_size"])
        ratio = model_size_bytes(awq_dir) / model_size_bytes(source)
        texts = calibration_texts(source, 1)
        print(f"\nSmolLM2 AWQ of the main job: {awq_dir}, size ratio {ratio:.3f}")
    else:
        # 8 texts and a 10-point scale grid keep this to minutes on a busy 2-core box.
        q = LLMCompressorQuantizer("cpu", n_grid=10)
        texts = calibration_texts(smollm2_dir, 8)
        r = q.quantize(
            smollm2_dir, tmp_path / "awq", texts, group_size=group_size_for(smollm2_dir), max_seq_len=256
        )
        print(
            f"\nSmolLM2 AWQ: wall {r.wall_s:.1f}s, {r.size_bytes / 1e6:.1f} MB / {r.source_size_bytes / 1e6:.1f} MB "
            f"= {r.size_ratio:.3f}"
        )
        awq_dir, source, group_size, ratio = r.out_dir, smollm2_dir, r.group_size, r.size_ratio
    assert group_size == 64
    assert ratio <= 0.45
    cos, top1, text = _reload_and_compare(source, awq_dir, texts[0])
    print(f"SmolLM2 AWQ vs fp32: min logit cosine {cos:.3f}, top-1 agreement {top1:.3f}; sample {text!r}")
    assert top1 >= 0.7
    assert text.strip()
