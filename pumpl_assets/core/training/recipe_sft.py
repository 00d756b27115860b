"""Recipe ``sft_trainer``: PEFT + TRL ``SFTTrainer`` (``TrainingConfig.loop="sft_trainer"``).

The default recipe is the plain loop in :mod:`pumpl_assets.core.training.recipe_plain` (measured
1.5x SFTTrainer's defaults on this CPU, bench ``train``); this loop exists for parity with the
seed system's SFTTrainer recipes and for features Trainer brings (its callbacks, logging, GPU
fused loss). Same recipe fields, same rendering, the same answer-only loss, the same outputs
(``adapter/`` written atomically with ``pumpl_training.json``, metrics + loss plot, TrainResult).

Assumptions and differences, stated:

* data go in as prompt/completion pairs rendered by :func:`data.render_texts` (the serving
  renderer), so TRL masks the prompt (``completion_only_loss``) exactly as the plain loop does;
* checkpoints are Trainer's own (``save_steps = checkpoint_every``, last 2 kept) under
  ``<out_dir>/sft-<fingerprint>/``: a changed recipe or dataset never resumes from another run's
  state. A checkpoint counts only once ``trainer_state.json`` exists (Trainer writes it last), so
  one cut short by a kill is skipped on resume;
* ``packing`` maps to TRL's packing; bf16 (``autocast_bf16`` or ``dtype="bfloat16"``) to
  ``SFTConfig(bf16=True)``; gradient checkpointing is off (as in the plain loop);
* on a machine without CUDA the loss goes through ``transformers.Trainer.compute_loss``: TRL 1.x's
  default fused LM-head loss is a Triton kernel with no CPU driver.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from pumpl_assets.core import heap
from pumpl_assets.core.io import stable_hash
from pumpl_assets.core.schemas import TrainingExample
from pumpl_assets.core.training import base, data
from pumpl_assets.core.training.base import TrainingSession, TrainResult

log = logging.getLogger(__name__)


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Trainer checkpoints under ``run_dir`` that finished writing, sorted by step."""
    found = []
    for p in run_dir.glob("checkpoint-*") if run_dir.is_dir() else []:
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def train_sft(
    session: TrainingSession, train: list[TrainingExample], val: list[TrainingExample]
) -> TrainResult:
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cfg, out_dir, tok = session.cfg, session.out_dir, session.tokenizer
    if cfg is None or out_dir is None or session.model is None:
        raise RuntimeError("call setup() before train()")
    t_start = time.perf_counter()
    pairs = [
        data.render_texts(tok, ex, style=session.style, system_prompt=session.system_prompt) for ex in train
    ]
    lengths = [len(tok(p + c, add_special_tokens=False).input_ids) for p, c in pairs]
    keep = [i for i, n in enumerate(lengths) if n <= cfg.seq_len]
    skipped = len(pairs) - len(keep)
    if not keep:
        raise ValueError(f"no usable training examples: {len(train)} given, {skipped} longer than seq_len")
    pairs = [pairs[i] for i in keep]
    val_pairs = [
        data.render_texts(tok, ex, style=session.style, system_prompt=session.system_prompt) for ex in val
    ]
    fingerprint = stable_hash({"cfg": cfg.model_dump(), "loop": "sft_trainer", "data": pairs})[:16]
    run_dir = out_dir / f"sft-{fingerprint}"
    on_cpu = not str(session.device).startswith("cuda")

    if cfg.epochs is None and cfg.max_steps == 0:
        # As in the plain loop: an untrained adapter is written, and the Dagster gate rejects it.
        log.warning("the recipe trains 0 steps (max_steps=0 and no epochs): writing an untrained adapter")
        return _finish(session, run_dir, [], 0, None, 0, 0.0, None, t_start, len(pairs), skipped)

    args = SFTConfig(
        output_dir=str(run_dir),
        max_steps=cfg.max_steps if cfg.epochs is None else -1,
        num_train_epochs=cfg.epochs or 1.0,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        seed=cfg.seed,
        max_length=cfg.seq_len,
        packing=cfg.packing,
        completion_only_loss=True,
        gradient_checkpointing=False,
        bf16=cfg.autocast_bf16 or cfg.dtype == "bfloat16",
        use_cpu=on_cpu,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
    )
    ds = Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            clock["t0"] = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            clock["t1"] = time.perf_counter()

    class CountingSFTTrainer(SFTTrainer):  # type: ignore[misc]
        """SFTTrainer + a count of the non-pad tokens trained on (+ the CPU loss path, see module doc)."""

        real_tokens = 0

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if model.training:
                mask = inputs.get("attention_mask")
                self.real_tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            if on_cpu:
                inputs = dict(inputs)
                inputs["use_cache"] = False
                return Trainer.compute_loss(
                    self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    trainer = CountingSFTTrainer(
        model=session.model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()]
    )
    done = complete_checkpoints(run_dir)
    resumed = done[-1][0] if done else None
    if resumed is not None and cfg.epochs is None and resumed >= cfg.max_steps:
        # The schedule is complete: Trainer would still run one step past it on resume, so don't call it.
        log.info("SFTTrainer run already complete at %s", done[-1][1])
        state = json.loads((done[-1][1] / "trainer_state.json").read_text())
        losses = [(int(h["step"]), float(h["loss"])) for h in state.get("log_history", []) if "loss" in h]
        val_loss = _val_loss(trainer, val_pairs) if val_pairs else None
        del trainer
        return _finish(session, run_dir, losses, 0, resumed, 0, 0.0, val_loss, t_start, len(pairs), skipped)
    if resumed is not None:
        log.info("resuming SFTTrainer run from %s", done[-1][1])
    trainer.train(resume_from_checkpoint=str(done[-1][1]) if done else None)
    loop_s = clock.get("t1", 0.0) - clock.get("t0", 0.0)
    losses = [(int(h["step"]), float(h["loss"])) for h in trainer.state.log_history if "loss" in h]
    val_loss = _val_loss(trainer, val_pairs) if val_pairs else None
    steps_run = int(trainer.state.global_step) - (resumed or 0)
    n_tokens = int(trainer.real_tokens)
    tps = n_tokens / loop_s if loop_s > 0 and n_tokens else 0.0
    del trainer
    return _finish(
        session, run_dir, losses, steps_run, resumed, n_tokens, tps, val_loss, t_start, len(pairs), skipped
    )


def _val_loss(trainer: Any, val_pairs: list[tuple[str, str]]) -> float | None:
    from datasets import Dataset

    ds = Dataset.from_dict({"prompt": [p for p, _ in val_pairs], "completion": [c for _, c in val_pairs]})
    metrics = trainer.evaluate(eval_dataset=ds)
    value = metrics.get("eval_loss")
    return float(value) if value is not None else None


def _finish(
    session: TrainingSession,
    run_dir: Path,
    losses: list[tuple[int, float]],
    steps_run: int,
    resumed: int | None,
    n_tokens: int,
    tokens_per_s: float,
    val_loss: float | None,
    t_start: float,
    n_examples: int,
    skipped: int,
) -> TrainResult:
    import torch

    cfg, out_dir = session.cfg, session.out_dir
    assert cfg is not None and out_dir is not None
    total = (losses[-1][0] if losses else 0) if cfg.epochs else cfg.max_steps
    base.write_adapter(session, loop="sft_trainer")
    result = TrainResult(
        adapter_dir=out_dir / "adapter",
        steps=steps_run,
        resumed_from_step=resumed,
        train_loss=losses,
        val_loss=val_loss,
        tokens_per_s=tokens_per_s,
        peak_rss_mb=base.peak_rss_mb(),
        wall_s=time.perf_counter() - t_start,
        backend=session.backend,
        train_tokens=n_tokens,
        total_steps=total,
        n_train_examples=n_examples,
        skipped_too_long=skipped,
        extra={
            "loop": "sft_trainer",
            "checkpoints": str(run_dir),
            "device": session.device,
            "threads": torch.get_num_threads(),
            "retained_heap": heap.retained(),
            "allocator": heap.allocator(),
            "packing": cfg.packing,
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if str(session.device).startswith("cuda")
            else None,
        },
    )
    result.metrics_path, result.loss_plot = base.write_metrics(out_dir, result)
    return result
