"""The benchmark harness: a ``--quick`` run of the cheap benchmarks on the tiny model, report checked.

The smoke test runs ``bench.run.main`` in-process (train vs TRL, decode, eval, orchestration) on
the tiny random Llama, with an empty ``DAGSTER_HOME`` so the orchestration benchmark must say
"no run" instead of inventing numbers. It checks the report's shape, that every ratio names
its baseline and equals value / baseline, and the markdown rendering.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.common import Metric, median, percentile
from bench.run import BENCHMARKS, select

CHEAP = ["train", "decode", "eval", "attention", "batching", "hotpaths", "orchestration"]


@pytest.mark.unit
def test_metric_ratio_requires_a_baseline_name() -> None:
    with pytest.raises(ValueError, match="no baseline name"):
        Metric("x", 2.0, "tokens/s", ratio=2.0)
    m = Metric(
        "x", 2.0, "tokens/s", baseline_name="b", baseline_value=1.0, ratio=2.0, goal="≥ 1.3×", goal_met=True
    )
    assert m.line() == "x: 2 tokens/s (ratio 2.00× vs b; goal ≥ 1.3×: met)"


@pytest.mark.unit
def test_stats_and_selection() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert select("") == list(BENCHMARKS)
    assert select("eval, train") == ["eval", "train"]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        select("train,nope")


@pytest.mark.integration
def test_quick_run_writes_a_complete_report(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from bench.run import main

    empty_home = tmp_path / "dagster_home"
    empty_home.mkdir()
    # main() sets these; monkeypatch restores them after the test.
    for var, value in {
        "DAGSTER_HOME": str(empty_home),
        "PUMPL_TORCH_THREADS": "1",
        "TQDM_DISABLE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }.items():
        monkeypatch.setenv(var, value)
    threads_before = torch.get_num_threads()
    out = tmp_path / "out"
    try:
        rc = main(
            [
                "--quick",
                "--only",
                ",".join(CHEAP),
                "--model",
                str(tiny_model_dir),
                "--out",
                str(out),
                "--threads",
                "1",
                "-q",
            ]
        )
    finally:
        torch.set_num_threads(threads_before)
    report = json.loads((out / "report.json").read_text())
    assert rc == 0, report["summary"]

    assert report["complete"] is True and report["quick"] is True
    assert {"nproc", "cpu_model", "torch", "loadavg_start", "loadavg_end", "torch_threads"} <= set(
        report["machine"]
    )
    assert report["settings"]["threads"] == 1 and report["settings"]["repeats"] == 1
    assert report["settings"]["model_dir"] == str(tiny_model_dir.resolve())
    assert list(report["benchmarks"]) == CHEAP

    for name in ("train", "decode", "eval", "attention", "batching", "hotpaths"):
        assert report["benchmarks"][name]["status"] == "ok", report["benchmarks"][name].get("error")
    orch = report["benchmarks"]["orchestration"]
    assert orch["status"] == "no_data" and orch["metrics"] == []
    assert any("no Dagster instance" in n or "no successful" in n for n in orch["notes"])

    names = {m["name"]: m for b in report["benchmarks"].values() for m in b["metrics"]}
    for required in ("train_tokens_per_s", "train_mfu", "decode_tokens_per_s", "eval_batched_tokens_per_s"):
        assert required in names
    for m in names.values():
        if m["ratio"] is not None:
            assert m["baseline_name"], m
            assert m["baseline_value"] is not None and m["baseline_value"] > 0, m
            assert m["line"].startswith(f"{m['name']}: ") and f"vs {m['baseline_name']}" in m["line"]
    for name in ("train_tokens_per_s", "decode_tokens_per_s", "eval_batched_tokens_per_s"):
        m = names[name]
        assert m["value"] > 0 and len(m["runs"]) == 1
        assert math.isclose(m["ratio"], m["value"] / m["baseline_value"], rel_tol=1e-9)
    assert names["train_tokens_per_s"]["baseline_name"].startswith("TRL SFTTrainer")
    # Per-example attention against the stock path, same run.
    packed = names["training step, packed attention"]
    assert packed["value"] > 0 and packed["ratio"] > 0, packed
    assert len(names["train_tokens_per_s"]["baseline_runs"]) == 1
    assert names["eval_same_outputs"]["value"] is not None
    # Grouped decode attention against transformers' stock sdpa, same prompts, same run.
    grouped = names["served_plan_tokens_per_s"]
    assert grouped["baseline_name"].startswith("stock sdpa decode") and grouped["ratio"] > 0, grouped
    assert report["benchmarks"]["attention"]["details"]["attention_implementations"] == {
        "stock": "sdpa",
        "grouped": "pumpl_grouped_decode_sdpa",
    }
    # Continuous batching against consecutive fixed batches, same engine and prompts, same run.
    cont = names["continuous_batching_tokens_per_s"]
    assert cont["baseline_name"].startswith("consecutive batches of 2") and cont["ratio"] > 0, cont
    runs = report["benchmarks"]["batching"]["details"]["runs"][0]
    assert runs["continuous"]["tokens"] > 0 and runs["consecutive"]["tokens"] > 0

    md = (out / "report.md").read_text()
    assert "## train (ok" in md and "## orchestration (no_data" in md
    assert names["train_tokens_per_s"]["line"] in md


@pytest.mark.unit
def test_gpu_suite_refuses_unknown_parts_and_a_machine_without_cuda(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import gpu_suite

    with pytest.raises(SystemExit) as exc:
        gpu_suite.parse_args(["--only", "train,warp"])
    assert exc.value.code == 2
    assert "unknown part(s) ['warp']" in capsys.readouterr().err
    assert gpu_suite.parse_args(["--only", "awq, train"]).parts == ["awq", "train"]
    if not gpu_suite.cuda_available():
        assert gpu_suite.main(["--model", "/nonexistent"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.integration
def test_gpu_suite_engine_child_protocol_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The suite's engine measurement (subprocess, JSON back) is the same code on CPU and GPU."""
    from bench import gpu_suite

    out = gpu_suite._child("transformers", tiny_model_dir, 2, 6, 1234, True, tmp_path, device="cpu")
    assert out["kind"] == "transformers" and out["n"] == 2
    assert out["batched_tokens_per_s"] > 0 and out["batch1_decode_tokens_per_s"] > 0
    with pytest.raises(RuntimeError, match=r"engine transformers on .* failed"):
        gpu_suite._child("transformers", tmp_path / "missing", 2, 6, 1234, False, tmp_path, device="cpu")
