"""train: LoRA training tokens/s of the project's trainer vs TRL ``SFTTrainer`` with default settings.

Both train the same base model with the same LoRA config (the catalogue recipe's rank, alpha,
dropout, target modules), the same examples (offline teacher over ``sample_requests``, rendered
by the project's renderer), the same per-device batch size and the same number of optimizer
steps, in this process with the same torch threads. Runs alternate (ours, TRL, ours, TRL, ...)
so load drift on a shared box hits both; one short warm-up run of each is excluded.

* **ours** — :func:`pumpl_assets.core.training.train_lora` with ``backend="peft"`` and the
  catalogue recipe (packing, answer-only LM head, fp32 master weights, bf16 autocast where the
  recipe asks for it). tokens/s = its ``TrainResult``:
  non-padding tokens / training-loop wall time.
* **baseline "TRL SFTTrainer (defaults)"** — ``SFTConfig`` defaults except ``output_dir``,
  ``max_steps``, ``report_to="none"``, ``per_device_train_batch_size`` and ``use_cpu=True`` on
  a machine without a GPU (transformers refuses TRL's default bf16 on CPU otherwise) (so bf16 autocast,
  gradient checkpointing, no packing, lr 2e-5, seed 42: whatever TRL defaults to; recorded).
  Data is given as prompt/completion pairs rendered exactly like ours (TRL then trains on the
  completion only, as we do). Tokens counted the same way: the batch's attention-mask sum
  (non-pad tokens) per training step; time = ``on_train_begin`` → ``on_train_end``.

MFU ≈ 4·N·tokens/s / peak FLOP/s (LoRA: forward 2N + activation gradients 2N per token, no
weight gradients for frozen weights), N = the model's unique parameters, peak = best matmul
FLOP/s in the dtype our matmuls run in (bf16 under the recipe's autocast, else fp32) measured in
this run with the same threads. The bf16 matmul
peak is measured too (TRL's default autocast dtype; on CPUs with AVX512-BF16/AMX it is several
times the fp32 one) and TRL's MFU against it is in the details.
"""

from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import BenchResult, Context, Metric, cpu_peak_flops, median, param_stats, ratio, set_seeds

NAME = "train"
BASELINE = "TRL SFTTrainer (defaults)"
GOAL = 1.3
SIZES = {"quick": {"steps": 1, "warmup_steps": 1}, "full": {"steps": 8, "warmup_steps": 1}}


def _cfg(ctx: Context, steps: int) -> Any:
    from pumpl_assets.core.catalogue import get_spec

    spec = get_spec(ctx.partition)
    return spec.recipe.model_copy(update={"max_steps": steps, "backend": "peft", "epochs": None})


def run_ours(ctx: Context, train: list[Any], steps: int, out_dir: Path) -> dict[str, Any]:
    """One fresh (non-resumed) run of the project's trainer; returns tokens, loop seconds, tokens/s."""
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.training import train_lora

    shutil.rmtree(out_dir, ignore_errors=True)
    set_seeds(ctx.seed)
    res = train_lora(
        ctx.model_dir,
        _cfg(ctx, steps),
        train,
        [],
        out_dir,
        style=get_spec(ctx.partition).prompt_style,
        device="cpu",
    )
    return {
        "tokens": res.train_tokens,
        "loop_s": float(res.extra.get("loop_s", 0.0)),
        "tokens_per_s": res.tokens_per_s,
        "steps": res.steps,
        "threads": res.extra.get("threads"),
        "final_loss": res.train_loss[-1][1] if res.train_loss else None,
    }


def run_trl(ctx: Context, train: list[Any], steps: int, out_dir: Path) -> dict[str, Any]:
    """One TRL SFTTrainer run with default SFTConfig (see module docstring)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.training.base import patch_peft_torchao
    from pumpl_assets.core.training.data import render_texts

    patch_peft_torchao()
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    shutil.rmtree(out_dir, ignore_errors=True)
    set_seeds(ctx.seed)
    spec = get_spec(ctx.partition)
    cfg = _cfg(ctx, steps)
    tok = AutoTokenizer.from_pretrained(ctx.model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    pairs = [render_texts(tok, ex, style=spec.prompt_style, system_prompt=None) for ex in train]
    ds = Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
    model = AutoModelForCausalLM.from_pretrained(ctx.model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    args = SFTConfig(
        output_dir=str(out_dir),
        max_steps=steps,
        report_to="none",
        per_device_train_batch_size=cfg.batch_size,
        # The one extra setting defaults need here: without it transformers refuses the default
        # bf16=True on a machine without a GPU ("You need to assign use_cpu ...").
        use_cpu=not torch.cuda.is_available(),
    )

    class Clock(TrainerCallback):  # type: ignore[misc]
        t0 = t1 = 0.0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            Clock.t0 = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            Clock.t1 = time.perf_counter()

    cpu_loss = not torch.cuda.is_available()

    class CountingSFTTrainer(SFTTrainer):  # type: ignore[misc]
        """SFTTrainer plus a count of the non-pad tokens of every training batch.

        Without CUDA the loss goes through ``transformers.Trainer.compute_loss`` (the model's own
        causal-LM loss over the collator's labels): TRL 1.x's default loss path is a fused LM head
        whose Triton kernel has no CPU driver and raises "0 active drivers" on a CPU-only box.
        """

        real_tokens = 0

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if model.training:
                if "attention_mask" in inputs:
                    self.real_tokens += int(inputs["attention_mask"].sum())
                else:  # padding-free batches carry no padding
                    self.real_tokens += int(inputs["input_ids"].numel())
            if cpu_loss:
                from transformers import Trainer

                inputs = dict(inputs)
                inputs["use_cache"] = False
                return Trainer.compute_loss(
                    self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    trainer = CountingSFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[Clock()]
    )
    trainer.train()
    loop_s = Clock.t1 - Clock.t0
    out = {
        "tokens": trainer.real_tokens,
        "loop_s": loop_s,
        "tokens_per_s": trainer.real_tokens / loop_s if loop_s > 0 else 0.0,
        "steps": int(trainer.state.global_step),
        "threads": torch.get_num_threads(),
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "effective_config": {
            "bf16": args.bf16,
            "use_cpu": args.use_cpu,
            "gradient_checkpointing": args.gradient_checkpointing,
            "packing": args.packing,
            "padding_free": args.padding_free,
            "max_length": args.max_length,
            "learning_rate": args.learning_rate,
            "completion_only_loss": args.completion_only_loss,
            "seed": args.seed,
            "loss_path": "transformers.Trainer.compute_loss (full logits; TRL's Triton fused head needs a GPU)"
            if cpu_loss
            else "TRL fused LM head",
        },
    }
    del trainer, model
    gc.collect()
    return out


def run(ctx: Context) -> BenchResult:
    import torch
    from transformers import AutoConfig

    sizes = SIZES["quick" if ctx.quick else "full"]
    steps = sizes["steps"]
    cfg = _cfg(ctx, steps)
    n_examples = max(16, steps * cfg.batch_size * 3)
    train, failed = build_train(ctx, n_examples)
    work = ctx.work_dir(NAME)
    result = BenchResult(NAME, details={"sizes": sizes, "n_examples": len(train), "teacher_failures": failed})

    ctx.log(f"train: warm-up ({sizes['warmup_steps']} step each, excluded)")
    run_ours(ctx, train, sizes["warmup_steps"], work / "warmup-ours")
    run_trl(ctx, train, sizes["warmup_steps"], work / "warmup-trl")

    ours: list[dict[str, Any]] = []
    trl: list[dict[str, Any]] = []
    for i in range(ctx.repeats):
        ctx.log(f"train: run {i + 1}/{ctx.repeats} ({steps} steps): ours")
        ours.append(run_ours(ctx, train, steps, work / f"ours-{i}"))
        ctx.log(f"train: run {i + 1}/{ctx.repeats} ({steps} steps): TRL")
        trl.append(run_trl(ctx, train, steps, work / f"trl-{i}"))
    torch.set_num_threads(ctx.threads)

    ours_tps = [r["tokens_per_s"] for r in ours]
    trl_tps = [r["tokens_per_s"] for r in trl]
    m_ours, m_trl = median(ours_tps), median(trl_tps)
    r = ratio(m_ours, m_trl)
    result.metrics.append(
        Metric(
            "train_tokens_per_s",
            m_ours,
            "tokens/s",
            baseline_name=BASELINE,
            baseline_value=m_trl,
            ratio=r,
            goal=f"≥ {GOAL}×",
            goal_met=None if r is None else r >= GOAL,
            runs=ours_tps,
            baseline_runs=trl_tps,
            details={"steps": steps, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len},
        )
    )

    # MFU against the measured fp32 matmul peak (same threads, same run).
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only, no weights
        meta_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ctx.model_dir))
    n_params = param_stats(meta_model)["params"]
    n_mm = 1024 if ctx.quick else 2048
    # The dtype our matmuls run in: bf16 under the recipe's autocast, else the weights' dtype.
    compute_dtype = "bfloat16" if cfg.autocast_bf16 else cfg.dtype
    peak = cpu_peak_flops(ctx.threads, n=n_mm, dtype=cfg.dtype)  # the master-weights dtype
    peak_bf16 = cpu_peak_flops(ctx.threads, n=n_mm, dtype="bfloat16")  # TRL's default autocast dtype
    peak_ours = peak_bf16 if compute_dtype == "bfloat16" else peak
    mfu_ours = 4 * n_params * m_ours / peak_ours["best_flops"]
    result.metrics.append(
        Metric(
            "train_mfu",
            100 * mfu_ours,
            "% of peak",
            baseline_name=f"measured {compute_dtype} matmul peak FLOP/s",
            baseline_value=peak_ours["best_flops"],
            ratio=mfu_ours,
            goal="",
            details={
                "flops_per_token": 4 * n_params,
                "n_params": n_params,
                "trl_mfu_pct_of_bf16_peak": 100 * 4 * n_params * m_trl / peak_bf16["best_flops"],
                "trl_mfu_pct_of_fp32_peak": 100 * 4 * n_params * m_trl / peak["best_flops"]
                if cfg.dtype == "float32"
                else None,
            },
        )
    )
    result.details.update(
        {
            "ours_runs": ours,
            "trl_runs": trl,
            "peak_flops": peak,
            "peak_flops_bf16": peak_bf16,
            "trl_effective_config": trl[0].get("effective_config") if trl else None,
            "recipe": cfg.model_dump(),
        }
    )
    result.notes.append(
        "TRL runs with its own defaults (bf16 autocast, gradient checkpointing, no packing): the ratio "
        "measures the project's trainer against what an untuned SFTTrainer does, not against a tuned one."
    )
    if peak_bf16["best_flops"] > 1.5 * peak["best_flops"] and compute_dtype != "bfloat16":
        result.notes.append(
            f"This CPU multiplies bf16 {peak_bf16['best_flops'] / peak['best_flops']:.1f}× faster than "
            f"{cfg.dtype} (measured above): TRL's default bf16 autocast profits from it, the recipe's "
            f"{cfg.dtype} does not."
        )
    if not torch.cuda.is_available():
        result.notes.append(
            "CPU deviations forced by TRL 1.x itself: use_cpu=True (else transformers rejects the default bf16) "
            "and the loss via transformers.Trainer.compute_loss (TRL's default fused LM-head loss is a Triton "
            "kernel with no CPU driver). Everything else is SFTConfig's default."
        )
    return result


def build_train(ctx: Context, n: int) -> tuple[list[Any], int]:
    from bench.common import build_examples

    return build_examples(n, ctx.seed, ctx.catalogue_path)
