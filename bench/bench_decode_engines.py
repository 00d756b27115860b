"""Batch-1 decode, one prompt: the llama.cpp engine against llama.cpp's own decode loop, the torch
engine (fp32, bf16) and the memory-bandwidth bound (issue #11, item 4). Same run, same threads.

* **raw llama.cpp loop** (the baseline for the engine's overhead): what llama.cpp's ``simple`` example
  does — one ``llama_decode`` of the prompt, then ``llama_sampler_sample`` (greedy, in C) and a
  one-token ``llama_decode`` per new token, stopping at an end-of-generation token;
* **llama.cpp engine**: ``LlamaCppEngine.generate`` of the same prompt, greedy, unconstrained (numpy
  logits, the HF tokenizer's text, stop checks in Python) — its tokens must equal the raw loop's;
* **torch engine** fp32 and bf16 on the merged folder the GGUF was exported from;
* **bandwidth bound**: a decode step reads every weight once (SmolLM2's tied embedding is also its output
  matrix), so tokens/s ≤ read bandwidth / model bytes. Read bandwidth = the best of 5 ``torch.sum`` over a
  1 GiB tensor at the same thread count.

tokens/s = new tokens / wall seconds of the whole call (prompt included), median of ``--repeats`` after
one warm-up. The served prompt is the canonical rendering of one held-out request.

    PYTHONPATH=. .venv/bin/python bench/bench_decode_engines.py --merged $A/merged_model/model \\
        --gguf $A/gguf_model/model --out bench/results/2026-12-04-decode-b1.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

AIM_OVERHEAD = 0.10
GOAL_VS_BF16 = 2.0


def read_bandwidth(threads: int, gib: float = 1.0) -> float:
    """Bytes/s that ``threads`` threads read from memory (best of 5 sums over a ``gib`` GiB tensor)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        float(x.sum())
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def raw_loop(engine: Any, ids: list[int], n_new: int) -> tuple[float, list[int]]:
    """llama.cpp's own greedy loop on the engine's loaded model (a fresh context of its own)."""
    ll = engine._ll
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = -(-(len(ids) + n_new + 1) // 256) * 256
    cparams.n_batch = 2048
    cparams.n_threads = engine.n_threads
    cparams.n_threads_batch = engine.n_threads
    cparams.no_perf = True
    ctx = ll.llama_init_from_model(engine.model, cparams)
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
    try:
        t0 = time.perf_counter()
        prompt = (ll.llama_token * len(ids))(*ids)
        if ll.llama_decode(ctx, ll.llama_batch_get_one(prompt, len(ids))) != 0:
            raise RuntimeError("llama_decode failed on the prompt")
        out: list[int] = []
        one = (ll.llama_token * 1)()
        for _ in range(n_new):
            tok = ll.llama_sampler_sample(chain, ctx, -1)
            if ll.llama_vocab_is_eog(engine._vocab, tok):
                break  # not counted: the engine's completion excludes its stop token too
            out.append(int(tok))
            one[0] = tok
            if ll.llama_decode(ctx, ll.llama_batch_get_one(one, 1)) != 0:
                raise RuntimeError("llama_decode failed")
        return time.perf_counter() - t0, out
    finally:
        ll.llama_sampler_free(chain)
        ll.llama_free(ctx)


def timed(fn: Any, repeats: int) -> tuple[list[float], Any]:
    fn()  # warm-up, excluded
    secs, last = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        last = fn()
        secs.append(time.perf_counter() - t0)
    return secs, last


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--merged", type=Path, required=True)
    ap.add_argument("--gguf", type=Path, required=True, help="GGUF export folder or .gguf file")
    ap.add_argument("--partition", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=256, help="new tokens at most")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="markdown report (a .json beside it)")
    a = ap.parse_args(argv)

    import torch

    from bench.common import test_requests
    from pumpl_assets.core import prompts
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.engine_llamacpp import LlamaCppEngine, resolve_gguf
    from pumpl_assets.core.generation import GenerationParams, load_engine

    torch.set_num_threads(a.threads)
    gguf = resolve_gguf(a.gguf)
    rows: list[dict[str, Any]] = []
    bw = read_bandwidth(a.threads)
    params = GenerationParams(max_new_tokens=a.tokens)

    eng = LlamaCppEngine(gguf, n_threads=a.threads)
    try:
        style = prompts.resolve_style(get_spec(a.partition).prompt_style)
        text = prompts.render_prompt(
            eng.tokenizer, prompts.request_to_prompt(test_requests(1, 1234)[0]), style=style
        )
        ids = eng.tokenizer(text, add_special_tokens=False).input_ids
        raw_s, raw_out = timed(lambda: raw_loop(eng, ids, a.tokens), a.repeats)
        raw_tokens = raw_out[1]
        eng_s, gen = timed(lambda: eng.generate([text], params)[0], a.repeats)
        same = list(gen.token_ids) == raw_tokens[: len(gen.token_ids)] and len(gen.token_ids) == len(
            raw_tokens
        )
        rows.append(
            {
                "config": "raw llama.cpp loop",
                "quant": eng.quantization,
                "tokens": len(raw_tokens),
                "runs_s": raw_s,
            }
        )
        rows.append(
            {
                "config": "llama.cpp engine",
                "quant": eng.quantization,
                "tokens": gen.completion_tokens,
                "runs_s": eng_s,
            }
        )
    finally:
        eng.close()
    for dtype in ("float32", "bfloat16"):
        hf: Any = load_engine("transformers", a.merged, device="cpu", dtype=dtype)
        try:
            hf_s, hg = timed(lambda hf=hf: hf.generate([text], params)[0], a.repeats)
            rows.append(
                {
                    "config": f"torch engine {dtype}",
                    "quant": dtype,
                    "tokens": hg.completion_tokens,
                    "runs_s": hf_s,
                }
            )
        finally:
            hf.close()

    sizes = {
        "gguf": gguf.stat().st_size,
        "float32": sum(p.stat().st_size for p in a.merged.glob("*.safetensors")),
    }
    sizes["bfloat16"] = sizes["float32"] // 2
    for r in rows:
        r["seconds"] = statistics.median(r["runs_s"])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        model_bytes = sizes["gguf"] if "llama" in r["config"] else sizes[r["quant"]]
        r["bound_tokens_per_s"] = bw / model_bytes
        r["share_of_bound"] = r["tokens_per_s"] / r["bound_tokens_per_s"]
    by = {r["config"]: r for r in rows}
    overhead = by["raw llama.cpp loop"]["tokens_per_s"] / by["llama.cpp engine"]["tokens_per_s"] - 1
    vs_bf16 = by["llama.cpp engine"]["tokens_per_s"] / by["torch engine bfloat16"]["tokens_per_s"]
    vs_fp32 = by["llama.cpp engine"]["tokens_per_s"] / by["torch engine float32"]["tokens_per_s"]

    lines = [
        "# Batch-1 decode: llama.cpp engine vs llama.cpp's own loop, the torch engine and the bandwidth bound",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {a.threads} threads; read bandwidth "
        f"{bw / 1e9:.1f} GB/s (best of 5 torch.sum over 1 GiB)",
        f"- GGUF: {gguf} ({sizes['gguf'] / 1e6:.0f} MB); merged: {a.merged} (fp32 {sizes['float32'] / 1e6:.0f} MB)",
        f"- One served prompt ({len(ids)} tokens), greedy, unconstrained, up to {a.tokens} new tokens; "
        f"median of {a.repeats} after a warm-up; engine tokens equal the raw loop's: {same}",
        "",
        "| config | new tokens | s | tokens/s | bound tokens/s | share of bound |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} ({r['quant']}) | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{r['bound_tokens_per_s']:.0f} | {r['share_of_bound']:.2f} |"
        )
    lines += [
        "",
        f"- Engine overhead over llama.cpp's own loop: **{overhead * 100:.1f}%** "
        f"(aim < {AIM_OVERHEAD * 100:.0f}%: {'met' if overhead < AIM_OVERHEAD else 'not met'})",
        f"- llama.cpp engine vs torch bf16: **{vs_bf16:.2f}×** (goal ≥ {GOAL_VS_BF16:.0f}×: "
        f"{'met' if vs_bf16 >= GOAL_VS_BF16 else 'not met'}); vs torch fp32: {vs_fp32:.2f}×",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report, encoding="utf-8")
        a.out.with_suffix(".json").write_text(
            json.dumps(
                {
                    "bandwidth_bytes_per_s": bw,
                    "sizes": sizes,
                    "rows": rows,
                    "same_tokens": same,
                    "overhead": overhead,
                    "vs_bf16": vs_bf16,
                    "vs_fp32": vs_fp32,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
