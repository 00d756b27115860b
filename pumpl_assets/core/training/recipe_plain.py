"""Recipe ``plain``: a lean PyTorch LoRA loop (``TrainingConfig.loop="plain"``, the default).

Why a plain loop and not TRL's SFTTrainer: on 2 CPU cores every wasted FLOP shows. The loop
(measured faster than SFTTrainer with default settings, see bench/train_recipe.py):

* packs whole examples into ``seq_len`` rows (position ids restart per example), so no compute
  goes to padding, and (``packed_attention``) attends per example (:mod:`.packed_attention`), so
  none goes to the cross-example blocks a block-diagonal mask would still compute;
* computes the LM head and cross-entropy ONLY on answer positions (the prompt is ~40% of
  the tokens and the 49k-vocab head is ~20% of the model's FLOPs) instead of full logits;
* fp32 master weights, with bf16 autocast when the recipe asks for it (``autocast_bf16``: ~2x on
  CPUs with AVX512-BF16/AMX), ``torch.set_num_threads`` = idle cores, re-checked every 10 steps (see
  :func:`~pumpl_assets.core.training.base.torch_threads` and ``ThreadGovernor``; ``PUMPL_TORCH_THREADS``
  overrides), no KV cache;
* AdamW over the LoRA parameters only, linear warm-up then cosine decay to 10%.

It trains whatever a loader produced (:mod:`.model_peft`, :mod:`.model_unsloth`): a
:class:`~pumpl_assets.core.training.base.TrainingSession`. Checkpoints: see :mod:`.base`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from itertools import islice
from pathlib import Path
from typing import Any

from pumpl_assets.core import heap
from pumpl_assets.core.io import stable_hash
from pumpl_assets.core.schemas import TrainingExample
from pumpl_assets.core.training import base, data
from pumpl_assets.core.training.base import TrainingSession, TrainResult
from pumpl_assets.core.training.packed_attention import use_packed_attention

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def train_plain(
    session: TrainingSession, train: list[TrainingExample], val: list[TrainingExample]
) -> TrainResult:
    """Train ``session`` to its recipe's step count, resuming from a verified checkpoint of the same run."""
    return PlainRecipe(session).train(train, val)


class PlainRecipe:
    """The loop over one :class:`TrainingSession` (see the module docstring)."""

    def __init__(self, session: TrainingSession) -> None:
        self.session = session
        self.model: Any = session.model
        self.tokenizer: Any = session.tokenizer
        self.cfg = session.cfg
        self.out_dir: Path = session.out_dir
        self.device = session.device
        self.style = session.style
        self.system_prompt = session.system_prompt
        self.base_model = session.base_model
        self.name = session.backend

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

    def _loss_sum(self, batch: dict[str, Any], *, weighted: bool = False) -> tuple[Any, int]:
        """Sum of answer-token cross-entropy (each token times its ``loss_weights`` entry when
        ``weighted`` and the batch has them) and the number of answer tokens in ``batch``."""
        import torch.nn.functional as F

        labels = batch["labels"]
        shift_labels = labels[:, 1:]
        keep = shift_labels != data.IGNORE_INDEX
        n = int(keep.sum())
        causal_lm = self.model.get_base_model()
        decoder = getattr(causal_lm, "model", None)
        lm_head = getattr(causal_lm, "lm_head", None)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weights")}
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
        if weighted and "loss_weights" in batch:
            per_token = F.cross_entropy(logits, shift_labels[keep], reduction="none")
            return (per_token * batch["loss_weights"][:, 1:][keep]).sum(), n
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

        cfg, out_dir = self.cfg, self.out_dir
        t_start = time.perf_counter()
        tok_train, skipped = data.tokenize_examples(
            self.tokenizer,
            train,
            style=self.style,
            system_prompt=self.system_prompt,
            seq_len=cfg.seq_len,
            decision_weight=cfg.decision_weight,
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

        packing = self.session.packing
        # Packed rows: attention per example, not over the whole row (same result, ~40% of a CPU step).
        per_example = packing and cfg.packed_attention and use_packed_attention(self.model)
        attention = "packed_sdpa" if per_example else "stock"
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
        threads = base.ThreadGovernor(enabled=str(self.device) == "cpu")
        for step in range(start_step, total):
            micro = [next(stream) for _ in range(cfg.grad_accum)]
            # The step's loss is the (weighted) mean over every answer token of its micro-batches.
            denominator = sum(data.answer_weight(tok_train, rows) for rows in micro)
            step_loss = 0.0
            for rows in micro:
                batch = {
                    k: v.to(self.device)
                    for k, v in data.collate(tok_train, rows, pad_id=pad_id, packing=packing).items()
                }
                loss_sum, _ = self._loss_sum(batch, weighted=True)
                loss = loss_sum / max(1.0, denominator)
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
            threads.after_step(step + 1)
        loop_s = time.perf_counter() - t_loop
        steps_run = total - start_step

        val_loss = self._evaluate(tok_val)
        base.write_adapter(self.session)
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
                "setup_s": round(self.session.setup_s, 2),
                "loop_s": round(loop_s, 2),
                "device": self.device,
                "threads": torch.get_num_threads(),
                "retained_heap": heap.retained(),
                "allocator": heap.allocator(),
                "thread_changes": threads.changes,
                "batches_per_epoch": per_epoch,
                "n_val_examples": len(tok_val),
                "packing": packing,
                "attention": attention,
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
