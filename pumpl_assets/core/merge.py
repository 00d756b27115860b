"""Merge a LoRA adapter into its base model, and check that the merge changed nothing.

Assumptions:

* The base is a full-precision Hugging Face folder (or hub id). A quantized base
  (its ``config.json`` has a ``quantization_config``) is refused: merging LoRA
  deltas into 4-bit weights re-quantizes them and silently loses the fine-tune.
* The adapter folder is what ``peft`` saves: ``adapter_config.json`` +
  ``adapter_model.safetensors``. It is verified (parseable, loadable, finite)
  before anything is loaded, so a corrupt checkpoint fails with an
  :class:`AdapterError` naming the file instead of a deep stack trace.
* Parity prompts are the *rendered* prompt texts (``prompts.render_prompt``
  output): they are tokenized with ``add_special_tokens=False``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pumpl_assets.core.io import atomic_path, sha256_tree

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGE_MARKER = "pumpl_merge.json"


class AdapterError(ValueError):
    """The LoRA adapter folder is missing, unreadable, or holds non-finite weights."""


class QuantizedBaseError(ValueError):
    """The base model is quantized; LoRA must be merged into full-precision weights."""


def _torch_dtype(name: str) -> torch.dtype:
    from pumpl_assets.core.dtypes import torch_dtype

    return torch_dtype(name)  # type: ignore[no-any-return]


def _base_config(base_model: Path | str) -> dict[str, Any]:
    local = Path(base_model)
    if (local / "config.json").is_file():
        return json.loads((local / "config.json").read_text())  # type: ignore[no-any-return]
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(base_model)).to_dict()  # type: ignore[no-any-return]


def ensure_full_precision_base(base_model: Path | str) -> None:
    """Raise :class:`QuantizedBaseError` when ``base_model`` carries a quantization_config."""
    qc = _base_config(base_model).get("quantization_config")
    if qc:
        method = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
        raise QuantizedBaseError(
            f"base model {base_model} is quantized (quantization_config.quant_method={method!r}); "
            "merge the adapter into the full-precision base (e.g. the fp32/bf16 folder), never a quantized one"
        )


def verify_adapter(adapter_dir: Path) -> dict[str, Any]:
    """Check a peft LoRA folder before loading it; return its parsed adapter_config.

    Raises :class:`AdapterError` naming the offending file when the config is missing
    or not JSON, the weights file is missing/truncated/empty, or any weight is NaN/Inf.
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterError(f"adapter folder {adapter_dir} does not exist")
    cfg_path = adapter_dir / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise AdapterError(f"{cfg_path} is missing: not a peft adapter folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        raise AdapterError(f"{cfg_path} has no 'peft_type': not a peft adapter config")

    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise AdapterError(f"{weights_path} is missing (only safetensors adapters are accepted)")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise AdapterError(f"{weights_path} cannot be loaded (truncated or corrupt?): {exc}") from exc
    if not tensors:
        raise AdapterError(f"{weights_path} holds no tensors")
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        shown = ", ".join(sorted(bad)[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise AdapterError(f"{weights_path} has NaN/Inf values in {len(bad)} tensor(s): {shown}")
    return cfg


def _load_base(base_model: Path | str, dtype: str, device: str = "cpu") -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=_torch_dtype(dtype))
    return model.to(device).eval()


def _load_unmerged(base_model: Path | str, adapter_dir: Path, dtype: str, device: str = "cpu") -> Any:
    from pumpl_assets.core.training.base import patch_peft_torchao

    patch_peft_torchao()  # peft 0.21 raises on the installed torchao 0.15 otherwise
    from peft import PeftModel

    base = _load_base(base_model, dtype, device)
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except Exception as exc:  # shape mismatch, wrong target modules, ...
        raise AdapterError(f"adapter {adapter_dir} does not load onto base {base_model}: {exc}") from exc
    return model.eval()


def _tokenizer_source(base_model: Path | str, adapter_dir: Path) -> str:
    """The adapter folder's tokenizer when the trainer saved one (pad token etc.), else the base's."""
    if (Path(adapter_dir) / "tokenizer_config.json").is_file():
        return str(adapter_dir)
    return str(base_model)


def merge_adapter(
    base_model: Path | str, adapter_dir: Path, out_dir: Path, *, dtype: str = "float32"
) -> Path:
    """Merge a LoRA adapter into a full-precision base; write an HF folder at ``out_dir`` atomically.

    The folder holds the merged weights (safetensors), config, generation config, the
    tokenizer with its chat template, and ``pumpl_merge.json`` (base, adapter hash, dtype).
    Raises :class:`QuantizedBaseError` for a quantized base and :class:`AdapterError`
    for a bad adapter, before loading any weights.
    """
    from transformers import AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    ensure_full_precision_base(base_model)
    adapter_cfg = verify_adapter(adapter_dir)
    _torch_dtype(dtype)  # validate early

    model = _load_unmerged(base_model, adapter_dir, dtype)
    merged = model.merge_and_unload(safe_merge=True)  # raises if a merged weight is non-finite
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(base_model, adapter_dir))
    marker = {
        "base_model": str(base_model),
        "adapter_dir": str(adapter_dir),
        "adapter_sha256": sha256_tree(adapter_dir / ADAPTER_WEIGHTS),
        "lora_rank": adapter_cfg.get("r"),
        "lora_alpha": adapter_cfg.get("lora_alpha"),
        "target_modules": adapter_cfg.get("target_modules"),
        "dtype": dtype,
    }
    with atomic_path(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MERGE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str))
    return out_dir


@dataclass
class ParityReport:
    """Merged vs. unmerged (base + adapter) on the same prompts."""

    token_agreement: float  # fraction of generated positions with the same greedy token
    max_abs_logit_diff: float  # over a teacher-forced pass on prompt + unmerged completion
    n_prompts: int
    n_tokens: int  # generated positions compared (the longer of the two completions, per prompt)
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _greedy(model: Any, input_ids: torch.Tensor, max_new_tokens: int, eos: Any, pad: Any) -> torch.Tensor:
    from transformers import GenerationConfig

    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad
    )
    out = model.generate(
        input_ids=input_ids, attention_mask=input_ids.new_ones(input_ids.shape), generation_config=cfg
    )
    return out[0, input_ids.shape[1] :]  # type: ignore[no-any-return]


def parity_check(
    base_model: Path | str,
    adapter_dir: Path,
    merged_dir: Path,
    prompts: list[str],
    *,
    max_new_tokens: int = 48,
    min_token_agreement: float = 0.99,
    max_logit_diff: float = 1e-2,
    dtype: str = "float32",
    device: str = "cpu",
) -> ParityReport:
    """Greedy outputs of base+adapter (unmerged) vs. the merged folder on ``prompts``.

    * token agreement: positionwise over generated tokens; a length mismatch counts the
      extra positions as disagreements.
    * max |logit diff|: both models score the same ``prompt + unmerged completion``
      (teacher-forced); the max absolute difference over every position and vocab entry.

    Both models are held in memory at once (fine for the CPU model; ~2x weights on GPU).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not prompts:
        raise ValueError("parity_check needs at least one prompt")
    unmerged = _load_unmerged(base_model, Path(adapter_dir), dtype, device)
    merged: Any = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=_torch_dtype(dtype))
    merged = merged.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    eos = merged.generation_config.eos_token_id or tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    matches = total = 0
    max_diff = 0.0
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            a = _greedy(unmerged, ids, max_new_tokens, eos, pad)
            b = _greedy(merged, ids, max_new_tokens, eos, pad)
            n = min(a.numel(), b.numel())
            matches += int((a[:n] == b[:n]).sum())
            total += max(a.numel(), b.numel())
            full = torch.cat([ids[0], a]).unsqueeze(0)
            la = unmerged(input_ids=full).logits.float()
            lb = merged(input_ids=full).logits.float()
            diff = float((la - lb).abs().max())
            max_diff = max(max_diff, diff if math.isfinite(diff) else math.inf)
    agreement = matches / total if total else 1.0
    return ParityReport(
        token_agreement=agreement,
        max_abs_logit_diff=max_diff,
        n_prompts=len(prompts),
        n_tokens=total,
        ok=agreement >= min_token_agreement and max_diff <= max_logit_diff,
    )
