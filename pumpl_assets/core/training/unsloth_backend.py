"""Unsloth backend: ``FastLanguageModel.from_pretrained`` + ``get_peft_model``, then the shared loop.

Assumptions:

* unsloth was imported before transformers/peft/trl in this process (it patches them on
  import). :func:`pumpl_assets.core.training.run.run_job` guarantees that; constructing this
  backend in a process that already imported transformers raises a clear error instead of
  training with half-applied patches.
* On CUDA this is unsloth's fast path (its Triton kernels, "unsloth" gradient checkpointing,
  optional 4-bit QLoRA). Unsloth's fast attention does not derive a block-diagonal mask from
  restarting position ids, so on CUDA packed rows would let examples attend to each other:
  the backend therefore batches WITHOUT packing there (right-padded, length-grouped).
* Without CUDA, unsloth 2026.10 has a CPU fallback (a plain PEFT model on transformers plus
  chunked cross-entropy). It trains (tested on the tiny model), but it is no faster than the
  peft backend, so ``auto`` never picks it on CPU; ``UNSLOTH_DISABLE_CPU_FALLBACK=1`` turns
  it into an error (see :func:`pumpl_assets.core.training.base.resolve_backend_name`).
* Adapters are saved with PEFT's ``save_pretrained``: the same format as the peft backend.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pumpl_assets.core.schemas import TrainingConfig
from pumpl_assets.core.training import base
from pumpl_assets.core.training.base import BackendUnavailableError
from pumpl_assets.core.training.peft_backend import PeftBackend, _dtype


class UnslothBackend(PeftBackend):
    name = "unsloth"

    def __init__(
        self, device: str = "cuda", *, style: str = "chat_template", system_prompt: str | None = None
    ):
        if "unsloth" not in sys.modules and any(m in sys.modules for m in ("transformers", "peft", "trl")):
            raise BackendUnavailableError(
                "the unsloth backend needs unsloth imported before transformers/peft/trl; this process "
                "already imported them. Train through pumpl_assets.core.training.run.run_training_subprocess"
            )
        super().__init__(device, style=style, system_prompt=system_prompt)

    def uses_packing(self, cfg: TrainingConfig) -> bool:
        return cfg.packing and self.device == "cpu"

    def _load(self, base_model: Path | str, cfg: TrainingConfig) -> tuple[Any, Any]:
        base.patch_peft_torchao()
        import unsloth  # noqa: F401
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(base_model),
            max_seq_length=cfg.seq_len,
            dtype=_dtype(cfg.dtype),
            load_in_4bit=cfg.load_in_4bit,
        )
        return model, tokenizer

    def _attach_lora(self, model: Any, cfg: TrainingConfig) -> Any:
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            bias="none",
            use_gradient_checkpointing="unsloth" if self.device == "cuda" else False,
            random_state=cfg.seed,
            max_seq_length=cfg.seq_len,
        )
        FastLanguageModel.for_training(model)
        return model
