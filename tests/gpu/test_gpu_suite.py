"""The GPU suite end to end on a small Qwen-class model (skipped without CUDA or PUMPL_GPU_TEST_MODEL).

PUMPL_GPU_TEST_MODEL=/models/Qwen3-0.6B .venv/bin/pytest -m gpu tests/gpu/test_gpu_suite.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_gpu_suite_reports_every_ratio(tmp_path: Path) -> None:
    from bench import gpu_suite

    if not gpu_suite.cuda_available():
        pytest.skip("no CUDA device")
    model = os.environ.get("PUMPL_GPU_TEST_MODEL")
    if not model or not Path(model).is_dir():
        pytest.skip("set PUMPL_GPU_TEST_MODEL to a local Qwen-class Hugging Face folder")
    argv = ["--model", model, "--out", str(tmp_path), "--steps", "4", "--repeats", "1"]
    rc = gpu_suite.main([*argv, "--prompts", "4", "--new-tokens", "16"])
    report = json.loads((tmp_path / "report.json").read_text())
    by_name = {r["name"]: r for r in report["results"]}
    assert rc == 0, [r.get("error") for r in report["results"]]
    names = {m["name"] for r in report["results"] for m in r["metrics"]}
    assert {"unsloth_tokens_per_s", "awq_batch1_decode_tokens_per_s", "awq_size"} <= names
    for r in report["results"]:
        for m in r["metrics"]:
            if m["baseline_name"]:
                assert m["ratio"] is not None and m["ratio"] > 0, m
    if by_name["gpu_engine"]["status"] != "skipped":
        assert "vllm_batched_tokens_per_s" in names
    assert (tmp_path / "report.md").read_text().startswith("# GPU suite")
