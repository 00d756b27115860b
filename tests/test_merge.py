"""Merge a real (tiny) LoRA adapter, check parity, and refuse bad inputs clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pumpl_assets.core.merge import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MERGE_MARKER,
    AdapterError,
    QuantizedBaseError,
    merge_adapter,
    parity_check,
    verify_adapter,
)

PROMPTS = [
    "<|im_start|>user\nGoal: strength. Time: 30 min. Level: beginner.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nGoal: endurance. Time: 45 min. Level: advanced.<|im_end|>\n<|im_start|>assistant\n",
    "Plan a short workout:",
]


def _make_adapter(base: Path, dest: Path, *, seed: int = 1) -> Path:
    """A real peft LoRA adapter on the tiny model, with lora_B perturbed so the merge changes weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from pumpl_assets.core.training.base import patch_peft_torchao

    patch_peft_torchao()
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter do something
                p.normal_(0.0, 0.5)
    peft_model.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "lora")


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir: Path, adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return merge_adapter(tiny_model_dir, adapter_dir, tmp_path_factory.mktemp("merged") / "merged")


def _copy_adapter(adapter_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "adapter"
    shutil.copytree(adapter_dir, dest)
    return dest


@pytest.mark.unit
def test_merge_writes_full_folder_and_changes_weights(tiny_model_dir: Path, merged_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    assert (merged_dir / "config.json").is_file()
    assert (merged_dir / "model.safetensors").is_file()
    assert (merged_dir / "tokenizer_config.json").is_file()
    assert (merged_dir / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (merged_dir / "tokenizer_config.json").read_text()
    )
    assert not (merged_dir / ADAPTER_CONFIG).exists(), "merged folder must be a plain model, not an adapter"
    marker = json.loads((merged_dir / MERGE_MARKER).read_text())
    assert marker["lora_rank"] == 4 and marker["dtype"] == "float32"
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())

    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(merged_dir / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not any("lora" in k for k in merged)
    assert merged[key].shape == base[key].shape
    assert (merged[key] - base[key]).abs().max() > 1e-3  # LoRA delta landed in the weights
    untouched = "model.layers.0.self_attn.k_proj.weight"  # not a LoRA target
    assert torch.equal(merged[untouched], base[untouched])


@pytest.mark.unit
def test_parity_ok(tiny_model_dir: Path, adapter_dir: Path, merged_dir: Path) -> None:
    report = parity_check(tiny_model_dir, adapter_dir, merged_dir, PROMPTS, max_new_tokens=12)
    assert report.ok, report
    assert report.token_agreement == 1.0
    assert report.max_abs_logit_diff < 1e-3
    assert report.n_prompts == 3
    assert report.n_tokens >= 3  # at least one generated token per prompt


@pytest.mark.unit
def test_parity_detects_a_wrong_merge(tiny_model_dir: Path, adapter_dir: Path) -> None:
    # The un-adapted base posing as the "merged" model must fail the check.
    report = parity_check(tiny_model_dir, adapter_dir, tiny_model_dir, PROMPTS, max_new_tokens=12)
    assert not report.ok
    assert report.max_abs_logit_diff > 1e-2


@pytest.mark.unit
def test_truncated_adapter_is_refused(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    bad = _copy_adapter(adapter_dir, tmp_path)
    weights = bad / ADAPTER_WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    out = tmp_path / "merged"
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors.*(truncated|corrupt)"):
        merge_adapter(tiny_model_dir, bad, out)
    assert not out.exists()


@pytest.mark.unit
def test_nan_adapter_is_refused(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bad = _copy_adapter(adapter_dir, tmp_path)
    tensors = load_file(bad / ADAPTER_WEIGHTS)
    name = sorted(k for k in tensors if "lora_A" in k)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, bad / ADAPTER_WEIGHTS)
    with pytest.raises(AdapterError, match=r"NaN/Inf.*" + name.replace(".", r"\.")):
        merge_adapter(tiny_model_dir, bad, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.unit
def test_missing_config_is_refused(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    bad = _copy_adapter(adapter_dir, tmp_path)
    (bad / ADAPTER_CONFIG).unlink()
    with pytest.raises(AdapterError, match=r"adapter_config\.json is missing"):
        merge_adapter(tiny_model_dir, bad, tmp_path / "merged")


@pytest.mark.unit
def test_garbled_config_and_missing_weights(adapter_dir: Path, tmp_path: Path) -> None:
    bad = _copy_adapter(adapter_dir, tmp_path)
    (bad / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        verify_adapter(bad)
    shutil.copy(adapter_dir / ADAPTER_CONFIG, bad / ADAPTER_CONFIG)
    (bad / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(AdapterError, match=r"adapter_model\.safetensors is missing"):
        verify_adapter(bad)
    assert verify_adapter(adapter_dir)["r"] == 4


@pytest.mark.unit
def test_quantized_base_is_refused(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    qbase = tmp_path / "qbase"
    shutil.copytree(tiny_model_dir, qbase)
    cfg = json.loads((qbase / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (qbase / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizedBaseError, match=r"quantized.*bitsandbytes.*full-precision"):
        merge_adapter(qbase, adapter_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
