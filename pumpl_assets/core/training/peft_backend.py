"""PEFT LoRA on Hugging Face transformers with a lean, plain PyTorch training loop.

Why a plain loop and not TRL's SFTTrainer: on 2 CPU cores every wasted FLOP shows. The loop
(measured faster than SFTTrainer with default settings, see bench/train_recipe.py):

* packs whole examples into ``seq_len`` rows (block-diagonal attention via position ids),
  so no compute goes to padding;
* computes the LM head and cross-entropy ONLY on answer positions (the prompt is ~40% of
  the tokens and the 49k-vocab head is ~20% of the model's FLOPs) instead of full logits;
* fp32 master weights, with bf16 autocast when the recipe asks for it (``autocast_bf16``: ~2x on
  CPUs with AVX512-BF16/AMX), ``torch.set_num_threads`` = idle cores (see
  :func:`torch_threads`; ``PUMPL_TORCH_THREADS`` overrides), no KV cache;
* AdamW over the LoRA parameters only, linear warm-up then cosine decay to 10%.

The same loop serves the unsloth backend (which only swaps how the model is loaded).
``TrainingConfig.loop="sft_trainer"`` runs PEFT + TRL SFTTrainer instead
(:mod:`pumpl_assets.core.training.sft_loop`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from itertools import islice
from pathlib import Path
from typing import Any

from pumpl_assets.core.io import atomic_path, stable_hash
from pumpl_assets.core.schemas import TrainingConfig, TrainingExample
from pumpl_assets.core.training import base, data
from pumpl_assets.core.training.base import BackendUnavailableError, TrainResult

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def torch_threads() -> int:
    """Intra-op threads for CPU training: ``PUMPL_TORCH_THREADS`` if set, else the cores not already busy.

    Measured on this shared 2-core box under load ~7: one LoRA step of SmolLM2 (512 tokens) took
    8.4 s with 1 thread and 28-55 s with 2 (OpenMP threads spin at barriers while descheduled).
    So the default is every core unless the box is oversubscribed (1-min load average above
    cores + 0.5), then ``cores - round(load - cores)``, at least 1.
    """
    env = os.environ.get("PUMPL_TORCH_THREADS")
    if env:
        return max(1, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = 0.0
    if load < cores + 0.5:
        return cores
    return max(1, min(cores, cores - round(load - cores)))


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class PeftBackend:
    """LoRA via ``peft.get_peft_model`` on an ``AutoModelForCausalLM``; see the module docstring."""

    name = "peft"

    def __init__(
        self, device: str = "cpu", *, style: str = "chat_template", system_prompt: str | None = None
    ):
        self.device = device
        self.style = style
        self.system_prompt = system_prompt
        self.model: Any = None
        self.tokenizer: Any = None
        self.cfg: TrainingConfig | None = None
        self.out_dir: Path | None = None
        self.base_model: str = ""
        self._setup_s = 0.0

    # -- loading (the unsloth backend overrides these two) --------------------------------------

    def _load(self, base_model: Path | str, cfg: TrainingConfig) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg.load_in_4bit and self.device != "cuda":
            raise BackendUnavailableError(
                "load_in_4bit=True needs CUDA; the peft backend trains fp32/bf16 on CPU"
            )
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        kwargs: dict[str, Any] = {"dtype": _dtype(cfg.dtype)}
        if cfg.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
            kwargs["device_map"] = {"": 0}
        model: Any = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
        if not cfg.load_in_4bit:
            model.to(self.device)
        return model, tokenizer

    def _attach_lora(self, model: Any, cfg: TrainingConfig) -> Any:
        base.patch_peft_torchao()
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

    def uses_packing(self, cfg: TrainingConfig) -> bool:
        """Whether micro-batches are packed (the unsloth backend declines on CUDA)."""
        return cfg.packing

    # -- protocol ------------------------------------------------------------------------------

    def setup(self, base_model: Path | str, cfg: TrainingConfig, out_dir: Path) -> None:
        """Load tokenizer + model on ``self.device``, attach LoRA. Sets torch threads and the seed."""
        import torch

        t0 = time.perf_counter()
        if self.device == "cpu":
            torch.set_num_threads(torch_threads())
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.cfg, self.out_dir, self.base_model = cfg, Path(out_dir), str(base_model)
        model, tokenizer = self._load(base_model, cfg)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.model = self._attach_lora(model, cfg)
        self._setup_s = time.perf_counter() - t0
        log.info("%s backend ready in %.1fs (%s)", self.name, self._setup_s, self.device)

    def cleanup(self) -> None:
        self.model = None
        self.tokenizer = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    # -- the loop ------------------------------------------------------------------------------

    def _fingerprint(self, train: list[data.TokenizedExample]) -> str:
        assert self.cfg is not None
        return stable_hash(
            {
                "base_model": self.base_model,
                "cfg": self.cfg.model_dump(),
                "style": self.style,
                "system_prompt": self.system_prompt,
                "data": stable_hash([e.input_ids for e in train]),
                "backend": self.name,
            }
        )[:16]

    def _trainable(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _loss_sum(self, batch: dict[str, Any]) -> tuple[Any, int]:
        """Sum of answer-token cross-entropy and the number of answer tokens in ``batch``."""
        import torch.nn.functional as F

        labels = batch["labels"]
        shift_labels = labels[:, 1:]
        keep = shift_labels != data.IGNORE_INDEX
        n = int(keep.sum())
        causal_lm = self.model.get_base_model()
        decoder = getattr(causal_lm, "model", None)
        lm_head = getattr(causal_lm, "lm_head", None)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        import contextlib

        import torch

        use_amp = bool(self.cfg is not None and self.cfg.autocast_bf16)
        amp = (
            torch.autocast(device_type=str(self.device).split(":")[0], dtype=torch.bfloat16)
            if use_amp
            else contextlib.nullcontext()
        )
        with amp:
            if decoder is not None and lm_head is not None:
                hidden = decoder(**inputs, use_cache=False).last_hidden_state[:, :-1]
                logits = lm_head(hidden[keep]).float()
            else:  # unknown architecture layout: full logits
                logits = self.model(**inputs, use_cache=False).logits[:, :-1][keep].float()
        loss = F.cross_entropy(logits, shift_labels[keep], reduction="sum")
        return loss, n

    def _schedule(self, optimizer: Any, total: int) -> Any:
        import torch

        assert self.cfg is not None
        warm = min(self.cfg.warmup_steps, max(total - 1, 0))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            progress = (step - warm) / max(1, total - warm)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _save_adapter(self, dest: Path) -> None:
        self.model.save_pretrained(dest, safe_serialization=True)

    def _load_checkpoint(self, path: Path, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(str(path / ADAPTER_WEIGHTS), device=str(self.device)))
        state = torch.load(path / TRAINER_STATE, map_location=self.device, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        return dict(state)

    def _evaluate(self, examples: list[data.TokenizedExample]) -> float | None:
        import torch

        assert self.cfg is not None and self.tokenizer is not None
        if not examples:
            return None
        self.model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            rows = [[i] for i in sorted(range(len(examples)), key=lambda i: len(examples[i]))]
            for b in range(0, len(rows), max(1, self.cfg.batch_size)):
                batch = data.collate(
                    examples,
                    rows[b : b + self.cfg.batch_size],
                    pad_id=self.tokenizer.pad_token_id,
                    packing=False,
                )
                batch = {k: v.to(self.device) for k, v in batch.items()}
                loss, n = self._loss_sum(batch)
                total += float(loss)
                count += int(n)
        self.model.train()
        return total / count if count else None

    def train(self, train: list[TrainingExample], val: list[TrainingExample]) -> TrainResult:
        """Train to the recipe's step count, resuming from a verified checkpoint of the same run."""
        import torch

        if self.model is None or self.cfg is None or self.out_dir is None:
            raise RuntimeError("call setup() before train()")
        if self.cfg.loop == "sft_trainer":
            from pumpl_assets.core.training.sft_loop import train_with_sft_trainer

            return train_with_sft_trainer(self, train, val)
        cfg, out_dir = self.cfg, self.out_dir
        t_start = time.perf_counter()
        tok_train, skipped = data.tokenize_examples(
            self.tokenizer, train, style=self.style, system_prompt=self.system_prompt, seq_len=cfg.seq_len
        )
        tok_val, _ = data.tokenize_examples(
            self.tokenizer, val, style=self.style, system_prompt=self.system_prompt, seq_len=cfg.seq_len
        )
        for idx, reason in skipped:
            log.warning("training example %d skipped: %s", idx, reason)
        if not tok_train:
            raise ValueError(
                f"no usable training examples: {len(train)} given, {len(skipped)} longer than seq_len"
            )

        packing = self.uses_packing(cfg)
        per_epoch = data.batches_per_epoch(
            tok_train, packing=packing, seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed
        )
        total = math.ceil(cfg.epochs * per_epoch / cfg.grad_accum) if cfg.epochs else cfg.max_steps
        if total < 0:
            raise ValueError(f"max_steps must be >= 0, got {total}")
        if total == 0:
            # Allowed on purpose: an untrained (identity) adapter is written and reported with
            # steps=0, so the Dagster gate — not a crash — is what rejects it.
            log.warning("the recipe trains 0 steps (max_steps=0 and no epochs): writing an untrained adapter")

        fingerprint = self._fingerprint(tok_train)
        params = self._trainable()
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = self._schedule(optimizer, total)

        start_step = 0
        resumed: int | None = None
        losses: list[tuple[int, float]] = []
        found = base.latest_checkpoint(out_dir, fingerprint)
        if found is not None:
            path, step = found
            state = self._load_checkpoint(path, optimizer, scheduler)
            start_step, resumed = step, step
            losses = [(int(s), float(v)) for s, v in state.get("losses", [])]
            log.info("resuming from %s (step %d of %d)", path, step, total)
        else:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
        stream = data.micro_batches(
            tok_train, packing=packing, seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed
        )
        stream = islice(stream, start_step * cfg.grad_accum, None)

        self.model.train()
        pad_id = self.tokenizer.pad_token_id
        n_tokens = 0
        t_loop = time.perf_counter()
        for step in range(start_step, total):
            micro = [next(stream) for _ in range(cfg.grad_accum)]
            n_answer = sum(data.answer_tokens(tok_train, rows) for rows in micro)
            step_loss = 0.0
            for rows in micro:
                batch = {
                    k: v.to(self.device)
                    for k, v in data.collate(tok_train, rows, pad_id=pad_id, packing=packing).items()
                }
                loss_sum, _ = self._loss_sum(batch)
                loss = loss_sum / max(1, n_answer)
                loss.backward()
                step_loss += float(loss.detach())
                n_tokens += data.real_tokens(tok_train, rows)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append((step + 1, step_loss))
            log.info("step %d/%d loss %.4f lr %.2e", step + 1, total, step_loss, scheduler.get_last_lr()[0])
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                self._checkpoint(out_dir, step + 1, fingerprint, optimizer, scheduler, losses)
        loop_s = time.perf_counter() - t_loop
        steps_run = total - start_step

        val_loss = self._evaluate(tok_val)
        with atomic_path(out_dir / "adapter") as tmp:
            self._save_adapter(tmp)
            (tmp / "pumpl_training.json").write_text(
                json.dumps(
                    {
                        "style": self.style,
                        "system_prompt": self.system_prompt,
                        "base_model": self.base_model,
                        "recipe": cfg.model_dump(),
                        "backend": self.name,
                    },
                    indent=2,
                )
            )
        # The final state is a checkpoint too: re-running a finished job trains 0 steps.
        self._checkpoint(out_dir, total, fingerprint, optimizer, scheduler, losses)

        result = TrainResult(
            adapter_dir=out_dir / "adapter",
            steps=steps_run,
            resumed_from_step=resumed,
            train_loss=losses,
            val_loss=val_loss,
            tokens_per_s=n_tokens / loop_s if loop_s > 0 and n_tokens else 0.0,
            peak_rss_mb=base.peak_rss_mb(),
            wall_s=time.perf_counter() - t_start,
            backend=self.name,
            train_tokens=n_tokens,
            total_steps=total,
            n_train_examples=len(tok_train),
            skipped_too_long=len(skipped),
            extra={
                "setup_s": round(self._setup_s, 2),
                "loop_s": round(loop_s, 2),
                "device": self.device,
                "threads": torch.get_num_threads(),
                "batches_per_epoch": per_epoch,
                "n_val_examples": len(tok_val),
                "packing": packing,
                # Peak CUDA memory of this process (None on CPU): the GPU suite compares backends by it.
                "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if str(self.device).startswith("cuda")
                else None,
            },
        )
        result.metrics_path, result.loss_plot = base.write_metrics(out_dir, result)
        return result

    def _checkpoint(
        self,
        out_dir: Path,
        step: int,
        fingerprint: str,
        optimizer: Any,
        scheduler: Any,
        losses: list[tuple[int, float]],
    ) -> None:
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            weights = {
                k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(self.model).items()
            }
            save_file(weights, str(tmp / ADAPTER_WEIGHTS))
            torch.save(
                {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "py_rng": random.getstate(),
                    "losses": losses,
                },
                tmp / TRAINER_STATE,
            )

        base.write_checkpoint(out_dir, step, fingerprint, write)
        base.prune_checkpoints(out_dir, keep=2)
