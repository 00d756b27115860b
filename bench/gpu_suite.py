"""GPU suite: the GPU-only fast paths measured against their CPU-portable counterparts.

    PUMPL_GPU_TEST_MODEL=/models/Qwen3-0.6B .venv/bin/python -m bench.gpu_suite
    .venv/bin/python -m bench.gpu_suite --model /models/Qwen3-4B --only train --steps 40

Needs a CUDA GPU (exit code 2 and a message otherwise) and a local Hugging Face folder of a
Qwen-class chat model (``--model`` or ``PUMPL_GPU_TEST_MODEL``; nothing is downloaded). Writes
``<out>/report.md`` and ``<out>/report.json`` like :mod:`bench.run`; every ratio names its baseline,
measured in the same run, medians over ``--repeats`` runs.

Parts (``--only``):

* **train** — LoRA training with ``backend="unsloth"`` (FastLanguageModel) vs ``backend="peft"``
  (the same plain loop without unsloth's kernels): same model, recipe (bf16, r 16 on all 7
  projections, batch 4, no packing — unsloth's path does not pack), examples and steps; each run
  is a fresh ``python -m pumpl_assets.core.training.run`` subprocess (unsloth must be imported
  first). Metrics: tokens/s ratio and peak CUDA memory ratio (``torch.cuda.max_memory_allocated``).
* **engine** — batched generation of N rendered test prompts, greedy, ``max_new_tokens`` fixed:
  the ``vllm`` engine vs the ``transformers`` engine (bf16, one batch). Each engine runs in its own
  subprocess so vLLM's memory pool never shares the GPU with the other.
* **awq** — AWQ W4A16 with llm-compressor on the GPU (group size fitted to the model), then batch-1
  decode tokens/s of the AWQ folder vs the bf16 model (both transformers engines), and the AWQ
  folder through vLLM when vllm is installed (the deployment path).

Assumption: the GPU is otherwise idle (numbers from a shared GPU are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchResult, Metric, machine_info, median, ratio, write_json

PARTS = ("train", "engine", "awq")
RECIPE: dict[str, Any] = {
    "rank": 16,
    "alpha": 32,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "learning_rate": 2e-4,
    "batch_size": 4,
    "seq_len": 1024,
    "dtype": "bfloat16",
    "packing": False,
    "warmup_steps": 2,
}


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _log(msg: str) -> None:
    print(f"[gpu-suite {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _examples(n: int, seed: int) -> list[dict[str, Any]]:
    from bench.common import build_examples

    examples, _ = build_examples(n, seed)
    return [ex.model_dump(mode="json") for ex in examples]


def _prompts(model: Path, n: int, seed: int) -> list[str]:
    from transformers import AutoTokenizer

    from bench.common import render_prompts, test_requests

    tok = AutoTokenizer.from_pretrained(str(model))
    return render_prompts(tok, test_requests(n, seed))


# ------------------------------------------------------------------------------------------ train


def run_train(model: Path, out: Path, steps: int, repeats: int, seed: int) -> BenchResult:
    from pumpl_assets.core.training.run import run_training_subprocess

    train = _examples(max(32, steps * RECIPE["batch_size"]), seed)
    res = BenchResult("gpu_train", details={"recipe": RECIPE, "steps": steps, "model": str(model)})
    runs: dict[str, list[dict[str, Any]]] = {"unsloth": [], "peft": []}
    for i in range(repeats):
        for backend in ("unsloth", "peft"):  # alternate, so drift hits both
            _log(f"train: run {i + 1}/{repeats}, {backend}")
            job = {
                "base_model": str(model),
                "cfg": RECIPE
                | {"backend": backend, "max_steps": steps, "checkpoint_every": steps, "seed": seed},
                "train": train,
                "val": train[:4],
                "out_dir": str(out / "work" / f"train-{backend}-{i}"),
                "style": "chat_template",
                "system_prompt": "You are a strength coach.",
                "device": "cuda",
            }
            r = run_training_subprocess(job)
            runs[backend].append(
                {
                    "tokens_per_s": r.tokens_per_s,
                    "peak_gpu_mb": r.extra.get("peak_gpu_mb"),
                    "loop_s": r.extra.get("loop_s"),
                    "final_loss": r.train_loss[-1][1] if r.train_loss else None,
                    "backend": r.backend,
                }
            )
    u_tps = [r["tokens_per_s"] for r in runs["unsloth"]]
    p_tps = [r["tokens_per_s"] for r in runs["peft"]]
    res.metrics.append(
        Metric(
            "unsloth_tokens_per_s",
            median(u_tps),
            "tokens/s",
            baseline_name="peft backend (same recipe, bf16)",
            baseline_value=median(p_tps),
            ratio=ratio(median(u_tps), median(p_tps)),
            runs=u_tps,
            baseline_runs=p_tps,
        )
    )
    u_mem = [r["peak_gpu_mb"] for r in runs["unsloth"] if r["peak_gpu_mb"]]
    p_mem = [r["peak_gpu_mb"] for r in runs["peft"] if r["peak_gpu_mb"]]
    if u_mem and p_mem:
        res.metrics.append(
            Metric(
                "unsloth_peak_gpu_mb",
                median(u_mem),
                "MiB",
                baseline_name="peft backend peak CUDA memory",
                baseline_value=median(p_mem),
                ratio=ratio(median(u_mem), median(p_mem)),
                runs=u_mem,
                baseline_runs=p_mem,
            )
        )
    res.details["runs"] = runs
    return res


# ----------------------------------------------------------------------------------------- engine


def engine_child(
    kind: str, model: Path, n: int, new_tokens: int, seed: int, batch1: bool, device: str = "cuda"
) -> dict[str, Any]:
    """Runs in a subprocess: load one engine, warm up, time generation; return numbers as JSON.
    (``device="cpu"`` exists for the CPU test of this code path; the suite always uses CUDA.)"""
    from bench.bench_decode import decode_rate
    from pumpl_assets.core.generation import GenerationParams, load_engine

    eng: Any = load_engine(kind, model, device=device, dtype="bfloat16" if kind != "vllm" else "auto")
    prompts = _prompts(model, n, seed)
    params = GenerationParams(max_new_tokens=new_tokens)
    eng.generate(prompts[:2], GenerationParams(max_new_tokens=8))  # warm-up (CUDA graphs, kernels)
    t0 = time.perf_counter()
    gens = eng.generate(prompts, params)
    dt = time.perf_counter() - t0
    out: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "batched_tokens_per_s": sum(g.completion_tokens for g in gens) / dt,
        "batched_s": dt,
    }
    if batch1:
        rates = [decode_rate(eng, prompts[0], new_tokens)["decode_tokens_per_s"] for _ in range(3)]
        out["batch1_decode_tokens_per_s"] = median([r for r in rates if r])
    try:
        import torch

        if torch.cuda.is_available():
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    eng.close()
    return out


def _child(
    kind: str, model: Path, n: int, new_tokens: int, seed: int, batch1: bool, out: Path, device: str = "cuda"
) -> dict[str, Any]:
    dest = out / "work" / f"engine-{kind}-{model.name}-{int(time.time() * 1000)}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "bench.gpu_suite",
        "--_child",
        json.dumps(
            {
                "kind": kind,
                "model": str(model),
                "n": n,
                "new_tokens": new_tokens,
                "seed": seed,
                "batch1": batch1,
                "device": device,
            }
        ),
        "--_child_out",
        str(dest),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not dest.is_file():
        raise RuntimeError(f"engine {kind} on {model} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(dest.read_text())  # type: ignore[no-any-return]


def run_engine(model: Path, out: Path, n: int, new_tokens: int, repeats: int, seed: int) -> BenchResult:
    import importlib.util

    res = BenchResult("gpu_engine", details={"model": str(model), "n_prompts": n, "new_tokens": new_tokens})
    if importlib.util.find_spec("vllm") is None:
        res.status = "skipped"
        res.notes.append("vllm is not installed (pip install -e '.[gpu]')")
        return res
    runs: dict[str, list[float]] = {"vllm": [], "transformers": []}
    for i in range(repeats):
        for kind in ("vllm", "transformers"):
            _log(f"engine: run {i + 1}/{repeats}, {kind}")
            runs[kind].append(_child(kind, model, n, new_tokens, seed, False, out)["batched_tokens_per_s"])
    res.metrics.append(
        Metric(
            "vllm_batched_tokens_per_s",
            median(runs["vllm"]),
            "tokens/s",
            baseline_name=f"transformers engine, bf16, one batch of {n}",
            baseline_value=median(runs["transformers"]),
            ratio=ratio(median(runs["vllm"]), median(runs["transformers"])),
            runs=runs["vllm"],
            baseline_runs=runs["transformers"],
        )
    )
    return res


# -------------------------------------------------------------------------------------------- awq


def run_awq(model: Path, out: Path, new_tokens: int, repeats: int, seed: int) -> BenchResult:
    import importlib.util

    from pumpl_assets.core.quantize import LLMCompressorQuantizer, group_size_for, model_size_bytes

    awq_dir = out / "work" / f"awq-{model.name}"
    res = BenchResult("gpu_awq", details={"model": str(model), "awq_dir": str(awq_dir)})
    if not (awq_dir / "config.json").is_file():
        from transformers import AutoTokenizer

        from bench.common import build_examples
        from pumpl_assets.core.prompts import render_example
        from pumpl_assets.core.training.data import example_system

        tok = AutoTokenizer.from_pretrained(str(model))
        examples, _ = build_examples(64, seed)
        # Calibration = full rendered training examples, as the awq_model asset uses.
        texts = [
            render_example(tok, ex.user, ex.assistant, system=example_system(ex, None))[1] for ex in examples
        ]
        group = group_size_for(model, preferred=128)
        _log(f"awq: quantizing {model} on the GPU (group {group})")
        q = LLMCompressorQuantizer("cuda", max_calibration=64).quantize(
            model, awq_dir, texts, group_size=group, max_seq_len=1024
        )
        res.details["quantize_wall_s"] = q.wall_s
    size_ratio = model_size_bytes(awq_dir) / model_size_bytes(model)
    res.metrics.append(
        Metric(
            "awq_size",
            model_size_bytes(awq_dir) / 2**20,
            "MiB",
            baseline_name="source model on disk",
            baseline_value=model_size_bytes(model) / 2**20,
            ratio=size_ratio,
        )
    )
    runs: dict[str, list[float]] = {"awq": [], "bf16": []}
    for i in range(repeats):
        _log(f"awq: decode run {i + 1}/{repeats}")
        runs["awq"].append(
            _child("awq", awq_dir, 2, new_tokens, seed, True, out)["batch1_decode_tokens_per_s"]
        )
        runs["bf16"].append(
            _child("transformers", model, 2, new_tokens, seed, True, out)["batch1_decode_tokens_per_s"]
        )
    res.metrics.append(
        Metric(
            "awq_batch1_decode_tokens_per_s",
            median(runs["awq"]),
            "tokens/s",
            baseline_name="bf16 model, transformers engine, batch 1",
            baseline_value=median(runs["bf16"]),
            ratio=ratio(median(runs["awq"]), median(runs["bf16"])),
            runs=runs["awq"],
            baseline_runs=runs["bf16"],
        )
    )
    if importlib.util.find_spec("vllm") is not None:
        _log("awq: the AWQ folder through vLLM")
        v = _child("vllm", awq_dir, 16, new_tokens, seed, False, out)
        res.metrics.append(Metric("awq_vllm_batched_tokens_per_s", v["batched_tokens_per_s"], "tokens/s"))
    else:
        res.notes.append("vllm not installed: the AWQ folder was not loaded through vLLM")
    return res


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_suite", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=os.environ.get("PUMPL_GPU_TEST_MODEL"))
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "gpu")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per training run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=int, default=32, help="prompts per batched generation")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_child_out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        p.error(f"unknown part(s) {bad or parts}; choose from {', '.join(PARTS)}")
    args.parts = parts
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        spec = json.loads(args._child)
        result = engine_child(
            spec["kind"],
            Path(spec["model"]),
            spec["n"],
            spec["new_tokens"],
            spec["seed"],
            spec["batch1"],
            spec.get("device", "cuda"),
        )
        write_json(args._child_out, result)
        return 0
    if not cuda_available():
        print("bench.gpu_suite needs a CUDA GPU; none is available on this machine", file=sys.stderr)
        return 2
    if args.model is None or not (Path(args.model) / "config.json").is_file():
        print(
            f"--model (or PUMPL_GPU_TEST_MODEL) must be a local Hugging Face model folder; got {args.model!r}",
            file=sys.stderr,
        )
        return 2
    model = Path(args.model).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[BenchResult] = []
    for part in args.parts:
        t0 = time.perf_counter()
        try:
            if part == "train":
                r = run_train(model, args.out, args.steps, args.repeats, args.seed)
            elif part == "engine":
                r = run_engine(model, args.out, args.prompts, args.new_tokens, args.repeats, args.seed)
            else:
                r = run_awq(model, args.out, args.new_tokens, args.repeats, args.seed)
        except Exception as exc:  # a failed part is recorded; the others still run
            r = BenchResult(f"gpu_{part}", status="error", error=f"{type(exc).__name__}: {exc}")
        r.wall_s = time.perf_counter() - t0
        results.append(r)
        for m in r.metrics:
            print(f"{r.name}: {m.line()}")
        if r.error:
            print(f"{r.name}: ERROR {r.error}")
    import torch

    gpu_name = torch.cuda.get_device_name(0)
    report: dict[str, Any] = {
        "machine": machine_info(torch.get_num_threads()) | {"gpu": gpu_name},
        "results": [r.to_json() for r in results],
    }
    write_json(args.out / "report.json", report)
    lines = [f"# GPU suite — {gpu_name}", ""]
    for r in results:
        lines.append(f"## {r.name} ({r.status}, {r.wall_s:.0f} s)")
        lines += [f"- {m.line()}" for m in r.metrics]
        lines += [f"- note: {n}" for n in r.notes]
        if r.error:
            lines.append(f"- error: {r.error}")
        lines.append("")
    (args.out / "report.md").write_text("\n".join(lines))
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
