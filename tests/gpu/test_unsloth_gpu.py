"""Unsloth's fast path on a real GPU (skipped without CUDA or without PUMPL_GPU_TEST_MODEL).

    PUMPL_GPU_TEST_MODEL=/models/Qwen3-0.6B .venv/bin/pytest -m gpu tests/gpu/test_unsloth_gpu.py

PUMPL_GPU_TEST_MODEL is a local Hugging Face folder of a Qwen-class chat model (it must have a chat
template). Training runs in a subprocess (unsloth must be imported before transformers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


@pytest.fixture(scope="module")
def gpu_model() -> Path:
    if not _cuda():
        pytest.skip("no CUDA device")
    pytest.importorskip("unsloth", reason="unsloth not installed")
    path = os.environ.get("PUMPL_GPU_TEST_MODEL")
    if not path or not Path(path).is_dir():
        pytest.skip("set PUMPL_GPU_TEST_MODEL to a local Qwen-class Hugging Face folder")
    return Path(path)


def _examples(n: int) -> list[dict]:  # type: ignore[type-arg]
    from pumpl_assets.core.schemas import TrainingExample

    plan = (
        '{"title":"Bodyweight Basics","total_minutes":20,"days_per_week":3,"session":{"warmup":[{"name":'
        '"Jumping Jacks","sets":1,"work_s":60,"rest_s":0}],"main":[{"name":"Push-Up","sets":3,"reps":10,'
        '"rest_s":60}],"cooldown":[{"name":"Child\'s Pose","sets":1,"work_s":45,"rest_s":0}]}}'
    )
    return [
        TrainingExample.model_validate(
            {
                "messages": [
                    {"role": "user", "content": f"Goal: strength. Time: 20 min. Level: beginner. #{i}"},
                    {"role": "assistant", "content": plan},
                ]
            }
        ).model_dump(mode="json")
        for i in range(n)
    ]


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["bf16", "qlora-4bit"])
def test_unsloth_fast_path_trains_and_saves_peft_adapter(
    gpu_model: Path, tmp_path: Path, load_in_4bit: bool
) -> None:
    from pumpl_assets.core.training.run import run_training_subprocess

    job = {
        "base_model": str(gpu_model),
        "cfg": {
            "backend": "unsloth",
            "rank": 8,
            "alpha": 16,
            "learning_rate": 2e-4,
            "max_steps": 12,
            "batch_size": 4,
            "seq_len": 512,
            "dtype": "bfloat16",
            "load_in_4bit": load_in_4bit,
            "checkpoint_every": 6,
            "warmup_steps": 2,
        },
        "train": _examples(24),
        "val": _examples(4),
        "out_dir": str(tmp_path / "run"),
        "style": "chat_template",
        "system_prompt": "You are a coach.",
        "device": "cuda",
    }
    result = run_training_subprocess(job)
    assert result.backend == "unsloth" and result.steps == 12
    losses = [v for _, v in result.train_loss]
    assert losses[-1] < losses[0]
    assert result.extra["device"] == "cuda" and result.extra["packing"] is False
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 8
    log = (tmp_path / "run" / "train.log").read_text()
    assert "no GPU found" not in log  # the fast path, not the CPU fallback
