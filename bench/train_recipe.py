"""Measure a LoRA recipe end to end: distil → train (subprocess, the project's trainer) → greedy eval.

    .venv/bin/python bench/train_recipe.py                       # the catalogue's smollm2-135m recipe
    .venv/bin/python bench/train_recipe.py --steps 40 --lr 1e-3  # overrides

Training data: the offline teacher on ``sample_requests(n_train + n_eval, seed)``; the last
``n_eval`` requests are held out (never trained on). Eval: the merged adapter greedily answers
the held-out prompts in left-padded batches; "valid" = :func:`schemas.parse_plan` accepts it.
Prints steps, wall time, tokens/s, valid %, and the machine load (``os.getloadavg``), since the
box is shared. Writes everything under ``--out`` (default bench/out/train_recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_examples(n: int, seed: int, catalogue_path: Path) -> list:  # type: ignore[type-arg]
    from pumpl_assets.core.distill import sample_requests
    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_assets.core.prompts import request_to_prompt
    from pumpl_assets.core.schemas import ChatMessage, TrainingExample
    from pumpl_assets.core.settings import system_prompt
    from pumpl_assets.core.teachers import get_teacher

    catalogue = ExerciseCatalogue.from_json_file(catalogue_path)
    results = get_teacher("offline").generate(sample_requests(n, seed), catalogue)
    out = []
    for r in results:
        if r.plan_text is None:
            print(f"teacher failed on a request ({r.error}); left out", file=sys.stderr)
            continue
        out.append(
            TrainingExample(
                messages=[
                    ChatMessage(role="system", content=system_prompt()),
                    ChatMessage(role="user", content=request_to_prompt(r.request)),
                    ChatMessage(role="assistant", content=r.plan_text),
                ],
                request=r.request,
                source="offline",
            )
        )
    return out


def greedy_valid(base: Path, adapter: Path, examples: list, *, batch: int, max_new: int, out: Path) -> float:  # type: ignore[type-arg]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pumpl_assets.core.prompts import render_prompt
    from pumpl_assets.core.schemas import parse_plan
    from pumpl_assets.core.training.base import patch_peft_torchao, torch_threads

    patch_peft_torchao()
    from peft import PeftModel

    torch.set_num_threads(torch_threads())

    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    prompts = [
        render_prompt(tok, ex.user, system=ex.messages[0].content, style="chat_template") for ex in examples
    ]
    valid, rows = 0, []
    for b in range(0, len(prompts), batch):
        enc = tok(prompts[b : b + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(
                **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
            )
        for seq in gen[:, enc["input_ids"].shape[1] :]:
            text = str(tok.decode(seq, skip_special_tokens=True)).strip()
            try:
                parse_plan(text)
                ok = True
            except ValueError:
                ok = False
            valid += ok
            rows.append({"valid": ok, "text": text})
    (out / "eval_outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return valid / len(prompts)


def main() -> int:
    from pumpl_assets.core.basemodel import ensure_base_model
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.training.run import run_training_subprocess

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-eval", type=int, default=30)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--rank", type=int)
    p.add_argument("--no-packing", action="store_true")
    p.add_argument("--autocast-bf16", action="store_true", help="bf16 autocast, fp32 master weights")
    p.add_argument("--backend", choices=["auto", "peft", "unsloth"])
    p.add_argument("--eval-batch", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument(
        "--catalogue", type=Path, default=REPO / "pumpl_assets" / "data" / "raw" / "exercises.json"
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "train_recipe")
    p.add_argument("--keep", action="store_true", help="keep out dir (resume) instead of starting fresh")
    args = p.parse_args()

    spec = get_spec(args.model)
    overrides = {
        k: v
        for k, v in {
            "max_steps": args.steps,
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "rank": args.rank,
            "backend": args.backend,
        }.items()
        if v is not None
    }
    if args.rank:
        overrides["alpha"] = 2 * args.rank
    if args.no_packing:
        overrides["packing"] = False
    if args.autocast_bf16:
        overrides["autocast_bf16"] = True
    cfg = spec.recipe.model_copy(update=overrides)
    base = ensure_base_model(spec)
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    examples = build_examples(args.n_train + args.n_eval, args.seed, args.catalogue)
    train, held = examples[: args.n_train], examples[args.n_train :]
    data_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    job = {
        "base_model": str(base),
        "cfg": cfg.model_dump(),
        "out_dir": str(args.out / "run"),
        "train": [e.model_dump(mode="json") for e in train],
        "val": [e.model_dump(mode="json") for e in held[:10]],
        "style": spec.prompt_style,
        "system_prompt": None,
        "device": spec.device,
    }
    t1 = time.perf_counter()
    result = run_training_subprocess(job)
    train_wall = time.perf_counter() - t1
    load_after = os.getloadavg()
    t2 = time.perf_counter()
    valid = greedy_valid(
        base, result.adapter_dir, held, batch=args.eval_batch, max_new=args.max_new_tokens, out=args.out
    )
    eval_s = time.perf_counter() - t2
    summary = {
        "recipe": cfg.model_dump(),
        "n_train": len(train),
        "n_eval": len(held),
        "steps": result.steps,
        "total_steps": result.total_steps,
        "resumed_from_step": result.resumed_from_step,
        "train_tokens": result.train_tokens,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "train_loop_min": round(result.extra.get("loop_s", 0) / 60, 2),
        "train_subprocess_min": round(train_wall / 60, 2),
        "final_loss": result.train_loss[-1][1] if result.train_loss else None,
        "val_loss": result.val_loss,
        "valid_pct": round(100 * valid, 1),
        "eval_min": round(eval_s / 60, 2),
        "data_s": round(data_s, 1),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "cores": os.cpu_count(),
        "peak_rss_mb": round(result.peak_rss_mb),
        "backend": result.backend,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
