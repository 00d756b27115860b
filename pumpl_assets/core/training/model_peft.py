"""Model loader ``peft``: ``AutoModelForCausalLM`` (optionally bitsandbytes 4-bit on CUDA) + ``get_peft_model``.

A loader only loads: it returns a :class:`~pumpl_assets.core.training.base.TrainingSession`
that any recipe (:mod:`.recipe_plain`, :mod:`.recipe_sft`) trains.
"""

from __future__ import annotations

import logging
import random
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


def seed_and_threads(cfg: TrainingConfig, device: str) -> None:
    """Torch threads (CPU) and the seeds, set before loading so LoRA init is reproducible."""
    import torch

    if device == "cpu":
        torch.set_num_threads(torch_threads())
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)


class PeftLoader:
    """LoRA via ``peft.get_peft_model`` on an ``AutoModelForCausalLM``."""

    name = "peft"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def uses_packing(self, cfg: TrainingConfig) -> bool:
        return cfg.packing

    def load(
        self,
        base_model: Path | str,
        cfg: TrainingConfig,
        out_dir: Path,
        *,
        style: str = "chat_template",
        system_prompt: str | None = None,
    ) -> TrainingSession:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg.load_in_4bit and self.device != "cuda":
            raise BackendUnavailableError(
                "load_in_4bit=True needs CUDA; the peft backend trains fp32/bf16 on CPU"
            )
        t0 = time.perf_counter()
        seed_and_threads(cfg, self.device)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        kwargs: dict[str, Any] = {"dtype": torch_dtype(cfg.dtype)}
        if cfg.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
            kwargs["device_map"] = {"": 0}
        model: Any = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
        if not cfg.load_in_4bit:
            model.to(self.device)
        model = self._attach_lora(model, cfg)
        setup_s = time.perf_counter() - t0
        log.info("%s model ready in %.1fs (%s)", self.name, setup_s, self.device)
        return TrainingSession(
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

    def _attach_lora(self, model: Any, cfg: TrainingConfig) -> Any:
        patch_peft_torchao()
        from peft import LoraConfig, get_peft_model

        if cfg.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)
