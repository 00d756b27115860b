"""AWQ 4-bit weight quantization behind one small interface.

Backends:

* ``llmcompressor`` (default, CPU or GPU): llm-compressor's ``AWQModifier`` (activation-aware
  smoothing) followed by a ``QuantizationModifier`` with a W4A16 asymmetric, group-wise scheme
  whose group size we choose. Saved in compressed-tensors ``pack-quantized`` format, which
  plain ``transformers`` loads on CPU (``AutoModelForCausalLM.from_pretrained``) and vLLM
  loads on GPU.
* ``autoawq`` (GPU only): AutoAWQ 0.2.9's GEMM kernels. Its output only loads on CUDA, so
  asking for it on CPU is a clear error. Imported lazily (it is not installed on CPU boxes).

Assumptions:

* The source folder is the full-precision merged model (never an already-quantized one).
* ``lm_head`` and the (tied) input embeddings stay unquantized; only the decoder's
  ``Linear`` layers become 4-bit. Unquantized tensors are stored in the compute dtype:
  bf16 where the device runs it natively (a GPU, or a CPU with AVX512-BF16/AMX — calibration
  there is ~3.5x faster than fp32 and the folder is smaller), else the source dtype.
* Calibration texts are full rendered training examples (prompt + answer), truncated to
  ``max_seq_len`` tokens; an empty list is an error.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from pumpl_assets.core.io import atomic_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
QUANT_MARKER = "pumpl_quant.json"
GROUP_SIZE_CANDIDATES = (128, 64, 32)
BACKENDS = ("auto", "llmcompressor", "autoawq")


class QuantizationError(RuntimeError):
    """Quantization could not run or produced an unusable folder."""


@dataclass
class QuantResult:
    out_dir: Path
    backend: str
    group_size: int
    size_bytes: int  # weights files of the quantized folder
    source_size_bytes: int  # weights files of the source (merged) folder
    size_ratio: float  # size_bytes / source_size_bytes
    wall_s: float
    n_calibration: int  # calibration texts actually used

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


class Quantizer(Protocol):
    name: str

    def quantize(
        self,
        model_dir: Path,
        out_dir: Path,
        calibration_texts: list[str],
        *,
        group_size: int,
        max_seq_len: int = 512,
    ) -> QuantResult: ...


def model_size_bytes(model_dir: Path | str) -> int:
    """Total size of the weights files (safetensors/bin/pt/gguf) under ``model_dir``; tokenizer etc. excluded."""
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {root} does not exist")
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def fit_group_size(hidden_size: int, intermediate_size: int, preferred: int = 128) -> int:
    """Largest of 128/64/32 (not above ``preferred``) that divides every quantized input width.

    Group-wise quantization splits each Linear's *input* dimension into groups, so the group
    size must divide hidden_size (q/k/v/gate/up inputs; o_proj too when heads*head_dim equals
    hidden) and intermediate_size (down_proj). SmolLM2-135M: 576 → 64.
    """
    for g in GROUP_SIZE_CANDIDATES:
        if g <= preferred and hidden_size % g == 0 and intermediate_size % g == 0:
            return g
    raise ValueError(
        f"no group size in {GROUP_SIZE_CANDIDATES} (<= {preferred}) divides hidden_size={hidden_size} "
        f"and intermediate_size={intermediate_size}"
    )


def group_size_for(model_dir: Path | str, preferred: int = 128) -> int:
    """:func:`fit_group_size` from a model folder's config.json (also checks heads*head_dim)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (hidden // heads if heads else None)
    attn = int(heads * head_dim) if heads and head_dim else hidden
    g = fit_group_size(hidden, inter, preferred)
    while attn % g:
        g = fit_group_size(hidden, inter, g // 2)
    return g


def _check_inputs(model_dir: Path, calibration_texts: list[str], group_size: int) -> dict[str, Any]:
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    cfg: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    if cfg.get("quantization_config"):
        raise QuantizationError(f"{model_dir} is already quantized; quantize the full-precision merged model")
    if not calibration_texts or not any(t.strip() for t in calibration_texts):
        raise ValueError("calibration_texts is empty: pass rendered train-split examples")
    if group_size not in GROUP_SIZE_CANDIDATES:
        raise ValueError(f"group_size={group_size} is not one of {GROUP_SIZE_CANDIDATES}")
    fit = group_size_for(model_dir, preferred=group_size)
    if fit != group_size:
        raise ValueError(
            f"group_size={group_size} does not divide the widths of {model_dir} "
            f"(hidden={cfg.get('hidden_size')}, intermediate={cfg.get('intermediate_size')}); use {fit}"
        )
    return cfg


def _result(model_dir: Path, out_dir: Path, backend: str, group_size: int, t0: float, n: int) -> QuantResult:
    size, src = model_size_bytes(out_dir), model_size_bytes(model_dir)
    return QuantResult(
        out_dir=out_dir,
        backend=backend,
        group_size=group_size,
        size_bytes=size,
        source_size_bytes=src,
        size_ratio=size / src if src else float("nan"),
        wall_s=time.perf_counter() - t0,
        n_calibration=n,
    )


@contextlib.contextmanager
def _no_pinning_without_accelerator() -> Iterator[None]:
    """llm-compressor's AWQ pins its CPU intermediates cache before each grid search; on a
    machine without an accelerator ``Tensor.pin_memory()`` raises "Cannot access accelerator
    device when none is available". No recipe option turns that off (``offload_device=None``
    still pins), so skip pinning — a pure H2D-transfer optimisation — while no accelerator exists.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory

    def _skip(self: Any, batch_index: int, input_names: list[str] | None = None) -> None:
        return None

    IntermediatesCache.pin_memory = _skip  # type: ignore[method-assign]
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original  # type: ignore[method-assign]


class LLMCompressorQuantizer:
    """AWQ + W4A16 (asymmetric, group-wise) with llm-compressor; compressed-tensors output.

    ``max_calibration`` caps the texts used (the first N, in the given order);
    ``n_grid`` is AWQ's scale grid-search resolution (llm-compressor default 20);
    ``dtype`` the compute dtype of calibration (``auto``: bf16 where native, else the source's).
    """

    name = "llmcompressor"

    def __init__(
        self, device: str = "cpu", *, max_calibration: int = 64, n_grid: int = 20, dtype: str = "auto"
    ) -> None:
        self.device = device
        self.max_calibration = max_calibration
        self.n_grid = n_grid
        self.dtype = dtype

    def _load_dtype(self) -> Any:
        import torch

        from pumpl_assets.core.generation import cpu_has_native_bf16

        if self.dtype == "auto":
            native = self.device.startswith("cuda") or cpu_has_native_bf16()
            return torch.bfloat16 if native else "auto"
        from pumpl_assets.core.dtypes import DTYPES, torch_dtype

        if self.dtype.lower() not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; use auto, {', '.join(DTYPES)}")
        return torch_dtype(self.dtype)

    def quantize(
        self,
        model_dir: Path,
        out_dir: Path,
        calibration_texts: list[str],
        *,
        group_size: int,
        max_seq_len: int = 512,
    ) -> QuantResult:
        import torch
        from compressed_tensors.quantization import (
            QuantizationArgs,
            QuantizationScheme,
            QuantizationStrategy,
            QuantizationType,
        )
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir, out_dir = Path(model_dir), Path(out_dir)
        cfg = _check_inputs(model_dir, calibration_texts, group_size)
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        texts = [t for t in calibration_texts if t.strip()][: self.max_calibration]
        # Rendered examples already carry their special tokens; don't add a second BOS.
        enc = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_seq_len) for t in texts]
        enc = [e for e in enc if len(e["input_ids"]) > 1]
        if not enc:
            raise ValueError("no calibration text tokenizes to more than one token")
        dataset = Dataset.from_dict(
            {"input_ids": [e["input_ids"] for e in enc], "attention_mask": [e["attention_mask"] for e in enc]}
        )
        load_dtype = self._load_dtype()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=load_dtype)
        scheme = QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(
                num_bits=4,
                type=QuantizationType.INT,
                strategy=QuantizationStrategy.GROUP,
                group_size=group_size,
                symmetric=False,
                dynamic=False,
            ),
        )
        recipe = [
            AWQModifier(duo_scaling=True, n_grid=self.n_grid),
            QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"]),
        ]
        try:
            with _no_pinning_without_accelerator(), torch.no_grad():
                oneshot(
                    model=model,
                    dataset=dataset,
                    recipe=recipe,
                    num_calibration_samples=len(enc),
                    max_seq_length=max_seq_len,
                    shuffle_calibration_samples=False,
                    tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                )
        except Exception as exc:
            raise QuantizationError(f"llm-compressor AWQ failed on {model_dir}: {exc}") from exc
        marker = {
            "backend": self.name,
            "source": str(model_dir),
            "scheme": "W4A16_ASYM",
            "group_size": group_size,
            "n_calibration": len(enc),
            "max_seq_len": max_seq_len,
            "n_grid": self.n_grid,
            "compute_dtype": str(model.dtype).removeprefix("torch."),
            "format": "compressed-tensors/pack-quantized",
        }
        with atomic_path(out_dir) as tmp:
            model.save_pretrained(tmp, save_compressed=True)
            tokenizer.save_pretrained(tmp)
            (tmp / QUANT_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        return _result(model_dir, out_dir, self.name, group_size, t0, len(enc))


class AutoAWQQuantizer:
    """AutoAWQ 0.2.9 (GEMM kernels, CUDA only). Output: AutoAWQ format (vLLM / transformers on GPU)."""

    name = "autoawq"

    def __init__(self, device: str = "cuda", *, max_calibration: int = 128) -> None:
        self.device = device
        self.max_calibration = max_calibration

    def quantize(
        self,
        model_dir: Path,
        out_dir: Path,
        calibration_texts: list[str],
        *,
        group_size: int,
        max_seq_len: int = 512,
    ) -> QuantResult:
        import torch

        try:
            from awq import AutoAWQForCausalLM
        except ImportError as exc:
            raise QuantizationError(
                "the autoawq backend needs `pip install autoawq==0.2.9` (the [gpu] extra) on a CUDA machine"
            ) from exc
        from transformers import AutoTokenizer

        if not torch.cuda.is_available():
            raise QuantizationError("autoawq needs a CUDA GPU; none is available")
        model_dir, out_dir = Path(model_dir), Path(out_dir)
        _check_inputs(model_dir, calibration_texts, group_size)
        t0 = time.perf_counter()
        texts = [t for t in calibration_texts if t.strip()][: self.max_calibration]
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoAWQForCausalLM.from_pretrained(str(model_dir), low_cpu_mem_usage=True, use_cache=False)
        quant_config = {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}
        try:
            model.quantize(
                tokenizer,
                quant_config=quant_config,
                calib_data=texts,
                max_calib_samples=len(texts),
                max_calib_seq_len=max_seq_len,
            )
        except Exception as exc:
            raise QuantizationError(f"AutoAWQ failed on {model_dir}: {exc}") from exc
        marker = {
            "backend": self.name,
            "source": str(model_dir),
            "scheme": "AWQ-GEMM-W4",
            "group_size": group_size,
            "n_calibration": len(texts),
            "max_seq_len": max_seq_len,
            "format": "autoawq/gemm",
        }
        with atomic_path(out_dir) as tmp:
            model.save_quantized(str(tmp))
            tokenizer.save_pretrained(tmp)
            (tmp / QUANT_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        return _result(model_dir, out_dir, self.name, group_size, t0, len(texts))


def select_quantizer(name: str, device: str, *, n_grid: int | None = None) -> Quantizer:
    """Pick a backend.

    * ``auto`` / ``llmcompressor``: llm-compressor on any device — its compressed-tensors
      output loads both on CPU (transformers) and on GPU (vLLM), so it is the default everywhere.
    * ``autoawq``: GPU only; on CPU it is refused because its GEMM output cannot load on CPU.
    """
    key = name.strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown quantizer {name!r}; choose one of {', '.join(BACKENDS)}")
    on_cuda = device.startswith("cuda")
    if key == "autoawq":
        if not on_cuda:
            raise QuantizationError(
                f"quantizer 'autoawq' needs a CUDA device (got {device!r}): its GEMM-packed output "
                "cannot be loaded on CPU. Use 'llmcompressor' (or 'auto') for CPU partitions."
            )
        return AutoAWQQuantizer(device)
    return LLMCompressorQuantizer(device, n_grid=n_grid) if n_grid else LLMCompressorQuantizer(device)
