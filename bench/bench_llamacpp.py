"""llama.cpp (GGUF) engine vs the transformers engine on the evaluation workload, one process.

Rows: the first ``--rows`` of the split's ``test.parquet`` (``prompt_text`` already rendered);
served mode = each row's request-aware JSON-schema grammar built as
:mod:`pumpl_assets.core.evaluate` builds it (from ``understood_json``, no grammar where no
exercise fits); unconstrained = no grammar. Greedy, ``max_new_tokens`` fixed for every row.
Aggregate completion tokens/s = all completion tokens / wall seconds of the pass.

Configs: HF bf16 batch 16 (the eval engine's CPU setting; the baseline), llama.cpp q8_0 and f16,
batch 16 (one ``generate`` call = 16 parallel sequences) and batch 1 (one prompt per call).
``--gbnf N``: the grammar question of issue #11 -- llama.cpp's own grammar sampler (GBNF converted from
the same request-aware JSON schema by llama-cpp-python's ``json_schema_to_gbnf``, the high-level
``Llama`` API, batch 1, greedy) against this engine's xgrammar mask (batch 1, same rows, same GGUF).
The GBNF path cannot run the per-row decode guards (no-repeat, name guard), so its plans differ.
Also, ``--parity``: greedy token agreement of llama.cpp on the f32 GGUF vs HF fp32 (same weights).

    PYTHONPATH=. nice -n 10 python bench/bench_llamacpp.py \\
        --merged /tmp/g3/data/artifacts/smollm2-135m/merged_model/model \\
        --split /tmp/g3/data/artifacts/smollm2-135m/split/test.parquet \\
        --catalogue /tmp/g3/data/artifacts/smollm2-135m/raw/exercises.parquet \\
        --gguf-dir /tmp/gg/export --out bench/results/2026-11-30-llamacpp.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Run:
    engine: str
    batch: int
    mode: str
    rows: int
    tokens: int
    seconds: float
    cpu_seconds: float  # this process's CPU time: fair across engines when the box is shared
    schema_valid: int
    constrained_rows: int
    finished_stop: int
    stats: dict[str, float]

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def tpcs(self) -> float:
        return self.tokens / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


def load_rows(split: Path, catalogue_path: Path, n: int) -> tuple[list[str], list[dict | None], list[Any]]:
    import polars as pl

    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_assets.core.grammar import NoSuitableExercisesError, request_plan_schema
    from pumpl_assets.core.schemas import RequestSpec

    df = pl.read_parquet(split).head(n)
    cat = ExerciseCatalogue.from_parquet(catalogue_path)
    prompts = df["prompt_text"].to_list()
    schemas: list[dict | None] = []
    requests = []
    for r in df.iter_rows(named=True):
        req = RequestSpec.model_validate_json(r["request_json"])
        seen = RequestSpec.model_validate_json(r["understood_json"]) if r.get("understood_json") else req
        requests.append(req)
        try:
            schemas.append(request_plan_schema(seen, cat))
        except NoSuitableExercisesError:
            schemas.append(None)
    return prompts, schemas, requests


def schema_valid(text: str) -> bool:
    from pumpl_assets.core.schemas import parse_plan

    try:
        parse_plan(text)
    except Exception:
        return False
    return True


def one_pass(
    engine: Any,
    label: str,
    prompts: list[str],
    schemas: list[dict | None],
    mode: str,
    batch: int,
    max_new: int,
) -> tuple[Run, list[list[int]]]:
    from pumpl_assets.core.generation import GenerationParams

    params = GenerationParams(max_new_tokens=max_new)
    use = schemas if mode == "served" else [None] * len(prompts)
    tokens, valid, stop = 0, 0, 0
    ids: list[list[int]] = []
    stats: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for b in range(0, len(prompts), batch):
        gens = engine.generate(prompts[b : b + batch], params, use[b : b + batch])
        for k, v in engine.last_stats.items():
            stats[k] = stats.get(k, 0.0) + v
        for g in gens:
            tokens += g.completion_tokens
            valid += schema_valid(g.text)
            stop += g.finish_reason == "stop"
            ids.append(g.token_ids)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    run = Run(
        label, batch, mode, len(prompts), tokens, dt, cpu, valid, sum(s is not None for s in use), stop, stats
    )
    print(
        f"{label:>14} b{batch:<2} {mode:>13}: {tokens} tok in {dt:.1f}s = {run.tps:.1f} tok/s "
        f"({run.tpcs:.1f} per CPU-s), "
        f"schema-valid {valid}/{len(prompts)}, stop {stop}",
        flush=True,
    )
    return run, ids


def gbnf_pass(
    gguf: str, label: str, tokenizer: Any, prompts: list[str], schemas: list[dict], threads: int, max_new: int
) -> Run:
    """llama.cpp's own grammar sampler: GBNF from each row's JSON schema, high-level ``Llama``, batch 1."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib
    from llama_cpp.llama_grammar import LlamaGrammar

    default_params = lib.llama_model_default_params

    def no_extra_bufts() -> Any:  # the engine's AMX workaround (llama.cpp #20824), for Llama() too
        p = default_params()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = no_extra_bufts
    try:
        llm = llama_cpp.Llama(gguf, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    finally:
        lib.llama_model_default_params = default_params
    tokens, valid, stop, compile_s = 0, 0, 0, 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for prompt, schema in zip(prompts, schemas, strict=True):
        tc = time.perf_counter()
        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        compile_s += time.perf_counter() - tc
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out: Any = llm.create_completion(ids, max_tokens=max_new, temperature=0.0, grammar=grammar)
        choice = out["choices"][0]
        tokens += int(out["usage"]["completion_tokens"])
        valid += schema_valid(choice["text"])
        stop += choice["finish_reason"] == "stop"
        llm.reset()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    run = Run(label, 1, "served", len(prompts), tokens, dt, cpu, valid, len(prompts), stop,
              {"grammar_compile_s": compile_s})  # fmt: skip
    print(f"{label:>14} b1 served: {tokens} tok in {dt:.1f}s = {run.tps:.1f} tok/s, schema-valid "
          f"{valid}/{len(prompts)}, stop {stop}, GBNF build {compile_s:.1f}s", flush=True)  # fmt: skip
    return run


def match_rate(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(share of rows identical, share of positions equal up to the first divergence over the longer row)."""
    same = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    agree, total = 0, 0
    for x, y in zip(a, b, strict=True):
        k = 0
        while k < min(len(x), len(y)) and x[k] == y[k]:
            k += 1
        agree += k
        total += max(len(x), len(y))
    return same, agree / total if total else 1.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merged", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--catalogue", type=Path, required=True)
    ap.add_argument(
        "--gguf-dir", type=Path, required=True, help="export target (reused when it has the files)"
    )
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--rows-b1", type=int, default=None, help="rows for the batch-1 passes (default --rows)")
    ap.add_argument("--max-new", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quants", default="q8_0,f16")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--b1-quants", default="q8_0,f16", help="quants that also get the batch-1 passes")
    ap.add_argument("--parity", type=int, default=4, help="rows for the f32 parity check (0: skip)")
    ap.add_argument("--parity-tokens", type=int, default=256)
    ap.add_argument(
        "--gbnf", type=int, default=0, help="rows for the GBNF-vs-xgrammar batch-1 pass (0: skip)"
    )
    ap.add_argument("--gbnf-quant", default="q8_0")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import llama_cpp
    import torch

    from pumpl_assets.core.engine_llamacpp import LlamaCppEngine
    from pumpl_assets.core.generation import GenerationParams, load_engine
    from pumpl_assets.core.gguf import EXPORT_MARKER, export_gguf
    from pumpl_assets.core.training.base import torch_threads

    threads = args.threads or torch_threads()
    load_start = os.getloadavg()[0]
    torch.set_num_threads(threads)
    quants = [q for q in args.quants.split(",") if q]
    export: dict[str, Any] = {}
    marker = args.gguf_dir / EXPORT_MARKER
    want_f32 = args.parity > 0
    if marker.is_file():
        export = json.loads(marker.read_text())
    else:
        print(f"exporting {args.merged} -> {args.gguf_dir}", flush=True)
        ex = export_gguf(args.merged, args.gguf_dir, [q for q in quants if q not in ("f16", "f32")])
        export = ex.to_dict()
    files = {export["base"]["quant"]: export["base"], **export["quants"]}
    if want_f32 and "f32" not in files:
        f32_dir = args.gguf_dir.with_name(args.gguf_dir.name + "-f32")
        if not (f32_dir / EXPORT_MARKER).is_file():
            export_gguf(args.merged, f32_dir, (), base_type="f32")
        files["f32"] = json.loads((f32_dir / EXPORT_MARKER).read_text())["base"]

    prompts, schemas, _ = load_rows(args.split, args.catalogue, args.rows)
    n_b1 = args.rows_b1 or args.rows
    runs: list[Run] = []
    notes: list[str] = []

    if not args.skip_hf:
        hf = load_engine("transformers", args.merged, device="cpu", dtype="bfloat16")
        hf.generate(prompts[:2], GenerationParams(4))
        for mode in ("unconstrained", "served"):
            runs.append(one_pass(hf, "hf-bf16", prompts, schemas, mode, 16, args.max_new)[0])
        hf.close()

    for q in quants:
        eng = LlamaCppEngine(files[q]["path"], tokenizer_path=args.gguf_dir, n_threads=threads)
        eng.generate(prompts[:2], GenerationParams(4))
        for mode in ("unconstrained", "served"):
            runs.append(one_pass(eng, f"llamacpp-{q}", prompts, schemas, mode, 16, args.max_new)[0])
            if q in args.b1_quants.split(","):
                runs.append(
                    one_pass(eng, f"llamacpp-{q}", prompts[:n_b1], schemas[:n_b1], mode, 1, args.max_new)[0]
                )
        eng.close()

    if args.gbnf > 0:
        q = args.gbnf_quant
        rows = [(p, s) for p, s in zip(prompts, schemas, strict=True) if s is not None][: args.gbnf]
        gp, gs = [p for p, _ in rows], [s for _, s in rows if s is not None]
        eng = LlamaCppEngine(files[q]["path"], tokenizer_path=args.gguf_dir, n_threads=threads)
        eng.generate(gp[:1], GenerationParams(4))
        runs.append(one_pass(eng, f"xgrammar-{q}", gp, list[dict | None](gs), "served", 1, args.max_new)[0])
        tok = eng.tokenizer
        eng.close()
        runs.append(gbnf_pass(files[q]["path"], f"gbnf-{q}", tok, gp, gs, threads, args.max_new))
        notes.append(
            f"\nxgrammar-{q} / gbnf-{q}: the same {len(gp)} served rows at batch 1 -- this engine's xgrammar mask "
            "(with its decode guards) against llama.cpp's own grammar sampler (GBNF converted from the same JSON "
            "schema by llama-cpp-python, high-level `Llama`, greedy; no decode guards)."
        )

    parity_line = ""
    if args.parity > 0:
        pp = prompts[: args.parity]
        params = GenerationParams(max_new_tokens=args.parity_tokens)
        hf32 = load_engine("transformers", args.merged, device="cpu", dtype="float32")
        ref = [g.token_ids for g in hf32.generate(pp, params)]
        ref_c = [g.token_ids for g in hf32.generate(pp, params, schemas[: args.parity])]
        hf32.close()
        l32 = LlamaCppEngine(files["f32"]["path"], tokenizer_path=args.gguf_dir, n_threads=threads)
        got = [g.token_ids for g in l32.generate(pp, params)]
        got_c = l32.generate(pp, params, schemas[: args.parity])
        l32.close()
        same, pos = match_rate(ref, got)
        same_c, pos_c = match_rate(ref_c, [g.token_ids for g in got_c])
        valid_c = sum(schema_valid(g.text) for g in got_c if g.finish_reason == "stop")
        parity_line = (
            f"Greedy parity, llama.cpp f32 GGUF vs HF fp32, {len(pp)} rows x {args.parity_tokens} tokens: "
            f"unconstrained {same:.0%} rows identical, {pos:.1%} of tokens agree before the first divergence; "
            f"served {same_c:.0%} rows identical, {pos_c:.1%} tokens agree; "
            f"{valid_c} served rows finished and schema-valid ({sum(g.finish_reason == 'stop' for g in got_c)} finished)."
        )
        print(parity_line, flush=True)

    base = {r.mode: r.tps for r in runs if r.engine == "hf-bf16"}
    base_cpu = {r.mode: r.tpcs for r in runs if r.engine == "hf-bf16"}
    lines = [
        "# llama.cpp engine vs transformers on the eval workload (CPU)",
        "",
        f"- machine: {platform.machine()}, {threads} threads, torch {torch.__version__}; "
        f"llama-cpp-python {llama_cpp.__version__}",
        f"- 1-min load average at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} "
        "(other jobs on the box: wall tokens/s are contended; tokens per CPU-second of this process are not)",
        f"- model: {args.merged}; rows: first {args.rows} of {args.split.name} (batch-1 passes: {n_b1}); "
        f"greedy, max_new_tokens={args.max_new}",
        "- served = request-aware JSON-schema grammar (xgrammar, same GrammarCache as HFEngine); "
        "schema-valid = parses as a WorkoutPlanResponse",
        "",
        "GGUF files: "
        + ", ".join(
            f"{q} {f['bytes'] / 1e6:.0f} MB ({f['ratio']:.2f}x safetensors)" for q, f in files.items()
        ),
        "",
        "| engine | batch | mode | rows | completion tokens | wall s | tokens/s | vs HF bf16 b16 "
        "| tokens/CPU-s | vs HF (CPU) | schema-valid | stop |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        rel = f"{r.tps / base[r.mode]:.2f}x" if base.get(r.mode) else "-"
        rel_c = f"{r.tpcs / base_cpu[r.mode]:.2f}x" if base_cpu.get(r.mode) else "-"
        lines.append(
            f"| {r.engine} | {r.batch} | {r.mode} | {r.rows} | {r.tokens} | {r.seconds:.1f} | {r.tps:.1f} | "
            f"{rel} | {r.tpcs:.1f} | {rel_c} | {r.schema_valid}/{r.rows} | {r.finished_stop}/{r.rows} |"
        )
    if parity_line:
        lines += ["", parity_line]
    lines += notes
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        (args.out.with_suffix(".json")).write_text(
            json.dumps([r.__dict__ | {"tps": r.tps, "tpcs": r.tpcs} for r in runs], indent=2),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
