"""GPU-only quantization paths (run with ``pytest -m gpu`` on a CUDA machine with the [gpu] extra)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pumpl_assets.core.quantize import model_size_bytes, select_quantizer

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _texts(model_dir: Path, n: int = 16) -> list[str]:
    from transformers import AutoTokenizer

    from pumpl_assets.core.prompts import render_example

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [
        render_example(
            tok,
            f"Goal: strength. Time: {20 + 5 * i} min. Level: beginner. Equipment: dumbbell. Days/week: 3.",
            json.dumps(
                {"title": f"plan {i}", "exercises": [{"name": "Goblet Squat", "sets": 3, "reps": 8 + i}]}
            ),
            system="You are a strength coach.",
        )[1]
        for i in range(n)
    ]


def test_autoawq_quantizes_and_generates_on_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    awq = pytest.importorskip("awq", reason="autoawq==0.2.9 (the [gpu] extra) is not installed")
    q = select_quantizer("autoawq", "cuda")
    assert q.name == "autoawq"
    r = q.quantize(tiny_model_dir, tmp_path / "awq", _texts(tiny_model_dir), group_size=64, max_seq_len=128)
    assert r.backend == "autoawq" and r.group_size == 64
    assert 0 < r.size_bytes < r.source_size_bytes == model_size_bytes(tiny_model_dir)
    qc = json.loads((r.out_dir / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["bits"] == 4 and qc["group_size"] == 64

    model = awq.AutoAWQForCausalLM.from_quantized(str(r.out_dir), fuse_layers=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(r.out_dir)
    ids = tok("Goal: strength. Time: 30 min.", return_tensors="pt")["input_ids"].cuda()
    out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_llmcompressor_on_gpu_output_loads_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The default backend on a GPU box (pinned-memory path active) still yields a CPU-loadable folder."""
    from transformers import AutoModelForCausalLM

    q = select_quantizer("auto", "cuda")
    r = q.quantize(tiny_model_dir, tmp_path / "awq", _texts(tiny_model_dir), group_size=64, max_seq_len=128)
    assert r.size_bytes < r.source_size_bytes
    model = AutoModelForCausalLM.from_pretrained(r.out_dir, device_map="cpu").eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False
        )
    assert out.shape[1] > ids.shape[1]
