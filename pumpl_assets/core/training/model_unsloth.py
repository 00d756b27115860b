"""Model loader ``unsloth``: ``FastLanguageModel.from_pretrained`` + ``get_peft_model``.

Assumptions:

* unsloth was imported before transformers/peft/trl in this process (it patches them on
  import). :func:`pumpl_assets.core.training.run.run_job` guarantees that; constructing this
  loader in a process that already imported transformers raises a clear error instead of
  training with half-applied patches.
* On CUDA this is unsloth's fast path (its Triton kernels, "unsloth" gradient checkpointing,
  optional 4-bit QLoRA). Unsloth's fast attention does not derive a block-diagonal mask from
  restarting position ids, so on CUDA packed rows would let examples attend to each other:
  the loader therefore asks the recipe for NO packing there (right-padded, length-grouped).
* Without CUDA, unsloth 2026.10 has a CPU fallback (a plain PEFT model on transformers plus
  chunked cross-entropy). It trains (tested on the tiny model), but it is no faster than the
  peft loader, so ``auto`` never picks it on CPU; ``UNSLOTH_DISABLE_CPU_FALLBACK=1`` turns
  it into an error (see :func:`pumpl_assets.core.training.base.resolve_backend_name`).
* Adapters are saved with PEFT's ``save_pretrained``: the same format as the peft loader.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

from pumpl_assets.core.dtypes import torch_dtype
from pumpl_assets.core.schemas import TrainingConfig
from pumpl_assets.core.training.base import (
    BackendUnavailableError,
    TrainingSession,
    patch_peft_torchao,
    torch_threads,
)

log = logging.getLogger(__name__)


class UnslothLoader:
    name = "unsloth"

    def __init__(self, device: str = "cuda") -> None:
        if "unsloth" not in sys.modules and any(m in sys.modules for m in ("transformers", "peft", "trl")):
            raise BackendUnavailableError(
                "the unsloth backend needs unsloth imported before transformers/peft/trl; this process "
                "already imported them. Train through pumpl_assets.core.training.run.run_training_subprocess"
            )
        self.device = device

    def uses_packing(self, cfg: TrainingConfig) -> bool:
        return cfg.packing and self.device == "cpu"

    def load(
        self,
        base_model: Path | str,
        cfg: TrainingConfig,
        out_dir: Path,
        *,
        style: str = "chat_template",
        system_prompt: str | None = None,
    ) -> TrainingSession:
        patch_peft_torchao()
        import torch
        import unsloth  # noqa: F401  (before torch/transformers)
        from unsloth import FastLanguageModel

        t0 = time.perf_counter()
        if self.device == "cpu":
            torch.set_num_threads(torch_threads())
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(base_model),
            max_seq_length=cfg.seq_len,
            dtype=torch_dtype(cfg.dtype),
            load_in_4bit=cfg.load_in_4bit,
        )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
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
        setup_s = time.perf_counter() - t0
        log.info("%s model ready in %.1fs (%s)", self.name, setup_s, self.device)
        session: Any = TrainingSession(
            backend=self.name,
            device=self.device,
            model=model,
            tokenizer=tokenizer,
            cfg=cfg,
            out_dir=Path(out_dir),
            base_model=str(base_model),
            style=style,
            system_prompt=system_prompt,
            packing=self.uses_packing(cfg),
            setup_s=setup_s,
        )
        return session
