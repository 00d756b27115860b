"""Shared pieces of the benchmark harness: the run context, result records, machine probes, data.

Conventions every benchmark follows:

* A :class:`Metric` that claims a speed carries ``ratio`` = value / baseline value, where the
  baseline was measured in the SAME harness run and is named in ``baseline_name``.
* ``runs`` holds the timed repetitions (after an excluded warm-up); ``value`` is their median.
* Seeds are fixed (:func:`set_seeds`), torch intra-op threads are fixed to ``ctx.threads`` and
  recorded, and :func:`machine_info` snapshots the box (load average included: the machine may
  be shared, which the report states next to the numbers).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOGUE = REPO_ROOT / "pumpl_assets" / "data" / "raw" / "exercises.json"
STATUSES = ("ok", "error", "no_data", "skipped")


@dataclass
class Context:
    """What every benchmark gets: sizes follow ``quick``; ``model_dir`` is the base model folder."""

    quick: bool
    out_dir: Path
    model_dir: Path
    threads: int
    seed: int = 1234
    repeats: int = 3
    partition: str = "smollm2-135m"
    catalogue_path: Path = DEFAULT_CATALOGUE
    verbose: bool = True
    model_given: bool = False  # --model was passed: benchmarks must not swap in pipeline artifacts

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def work_dir(self, name: str) -> Path:
        d = self.out_dir / "work" / name
        d.mkdir(parents=True, exist_ok=True)
        return d


@dataclass
class Metric:
    """One measured quantity. ``ratio`` (if any) is ``value / baseline_value`` unless ``details`` says otherwise."""

    name: str
    value: float | None
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    goal: str = ""
    goal_met: bool | None = None
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is not None and not self.baseline_name:
            raise ValueError(f"metric {self.name!r} has a ratio but no baseline name")

    def line(self) -> str:
        """``NAME: value unit (ratio X.XX× vs BASELINE; goal ...)``."""
        val = "n/a" if self.value is None else fmt(self.value)
        parts = []
        if self.ratio is not None:
            parts.append(f"ratio {self.ratio:.2f}× vs {self.baseline_name}")
        elif self.baseline_name:
            parts.append(f"vs {self.baseline_name}")
        if self.goal:
            mark = {True: "met", False: "NOT met", None: "n/a"}[self.goal_met]
            parts.append(f"goal {self.goal}: {mark}")
        suffix = f" ({'; '.join(parts)})" if parts else ""
        return f"{self.name}: {val} {self.unit}{suffix}"


@dataclass
class BenchResult:
    name: str
    status: str = "ok"  # one of STATUSES
    metrics: list[Metric] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = [asdict(m) | {"line": m.line()} for m in self.metrics]
        return d


def fmt(x: float) -> str:
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.01:
        return f"{x:.3g}"
    return f"{x:.2e}"


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("median of no values")
    return float(statistics.median(xs))


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not xs:
        raise ValueError("percentile of no values")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (k - lo))


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def set_seeds(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    import torch

    torch.manual_seed(seed)


def fix_threads(threads: int) -> None:
    """Fix torch intra-op threads here and for children (servers, training subprocesses)."""
    import torch

    torch.set_num_threads(threads)
    os.environ["PUMPL_TORCH_THREADS"] = str(threads)  # the project's trainer honours it
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (
            out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count() or 1
    return {
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "trl": _version("trl"),
        "litserve": _version("litserve"),
        "llmcompressor": _version("llmcompressor"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": bool(torch.cuda.is_available()),
        "git_commit": git_commit(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------
# Machine probes (measured in the same run as the benchmark that uses them)


def cpu_peak_flops(threads: int, *, n: int = 2048, reps: int = 5, dtype: str = "float32") -> dict[str, Any]:
    """Matmul FLOP/s in ``dtype`` with ``threads`` torch threads: best and median of ``reps`` (warm-up excluded)."""
    import torch

    from pumpl_assets.core.dtypes import torch_dtype

    torch.set_num_threads(threads)
    dt = torch_dtype(dtype)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dt)
    b = torch.randn(n, n, generator=g).to(dt)
    c = torch.empty(n, n, dtype=dt)
    torch.mm(a, b, out=c)  # warm-up
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        rates.append(2.0 * n**3 / (time.perf_counter() - t0))
    return {"best_flops": max(rates), "median_flops": median(rates), "n": n, "reps": reps, "dtype": dtype}


def mem_bandwidth(threads: int, *, mbytes: int = 256, reps: int = 5) -> dict[str, Any]:
    """Copy bandwidth (bytes read + written per second) of a ``mbytes`` fp32 tensor copy; best and median."""
    import torch

    torch.set_num_threads(threads)
    n = mbytes * (1 << 20) // 4
    src = torch.ones(n)
    dst = torch.empty(n)
    dst.copy_(src)  # warm-up (pages faulted in)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        rates.append(2.0 * n * 4 / (time.perf_counter() - t0))
    return {
        "best_bytes_per_s": max(rates),
        "median_bytes_per_s": median(rates),
        "mbytes": mbytes,
        "reps": reps,
    }


def param_stats(model: Any) -> dict[str, Any]:
    """Unique parameters (tied weights once): count and bytes (what one full forward reads)."""
    seen: set[int] = set()
    count = nbytes = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        count += p.numel()
        nbytes += p.numel() * p.element_size()
    return {"params": count, "bytes": nbytes}


# ------------------------------------------------------------------------------------------
# Data: the project's own request sampler, offline teacher and renderer


def build_examples(n: int, seed: int, catalogue_path: Path = DEFAULT_CATALOGUE) -> tuple[list[Any], int]:
    """``n`` requests → offline-teacher plans → :class:`TrainingExample` rows; returns (examples, failures).

    Rendered exactly as the pipeline does (:func:`pumpl_assets.core.dataset.to_training_examples`,
    configured system prompt). Requests the teacher cannot serve are counted, not hidden.
    """
    import polars as pl

    from pumpl_assets.core.dataset import to_training_examples
    from pumpl_assets.core.distill import sample_requests
    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_assets.core.teachers import get_teacher

    catalogue = ExerciseCatalogue.from_json_file(catalogue_path)
    results = get_teacher("offline").generate(sample_requests(n, seed), catalogue)
    ok = [r for r in results if r.plan_text is not None]
    df = pl.DataFrame(
        {
            "request_json": [r.request.model_dump_json() for r in ok],
            "plan_json": [r.plan_text for r in ok],
            "source": ["offline"] * len(ok),
        },
        schema={"request_json": pl.String, "plan_json": pl.String, "source": pl.String},
    )
    return to_training_examples(df, system_prompt=None), len(results) - len(ok)


def test_requests(n: int, seed: int, *, skip: int = 1_000) -> list[Any]:
    """``n`` requests disjoint from the first ``skip`` of ``sample_requests(·, seed)`` (training uses a prefix)."""
    from pumpl_assets.core.distill import sample_requests

    return sample_requests(skip + n, seed)[skip:]


def render_prompts(tokenizer: Any, requests: list[Any], style: str = "chat_template") -> list[str]:
    """Rendered prompts exactly as serving/evaluation build them (configured system prompt)."""
    from pumpl_assets.core.prompts import render_prompt, request_to_prompt

    return [render_prompt(tokenizer, request_to_prompt(r), system=None, style=style) for r in requests]


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write that keeps key order (benchmarks in run order)."""
    from pumpl_assets.core.io import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
