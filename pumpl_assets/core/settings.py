"""Environment variables, read in one place.

| variable              | default                | meaning                                             |
|-----------------------|------------------------|-----------------------------------------------------|
| PUMPL_BASE_MODEL      | smollm2-135m           | default partition (serving, CLI)                    |
| PUMPL_PROMPT_STYLE    | auto                   | auto, chat_template or mistral_inst                 |
| PUMPL_SYSTEM_PROMPT   | (built-in coach prompt)| system prompt used by training AND serving          |
| PUMPL_DATA_ROOT       | ./data                 | raw drops (data/raw), artifacts, caches, MLflow     |
| PUMPL_MODELS_ROOT     | ./models               | base-model weights (one folder per partition)       |
| PUMPL_TEACHER         | auto                   | auto (claude if a key is set, else offline)         |
| ANTHROPIC_API_KEY     | —                      | Claude teacher key (never logged)                   |
| ANTHROPIC_BASE_URL    | —                      | Messages-API endpoint override (tests)              |
| MLFLOW_TRACKING_URI   | sqlite:///<data root>/mlflow/mlflow.db | tracking + registry store (or http) |
| PUMPL_MODEL_CACHE     | <data root>/cache/models | served versions (core/registry.model_cache_dir)   |
| PUMPL_ARTIFACT_ROOT   | <data root>/artifacts  | artifact contract root, folder or s3:// (core/artifacts) |
| PUMPL_S3_ENDPOINT_URL | MLFLOW_S3_ENDPOINT_URL | S3-compatible endpoint for s3:// roots              |
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, cast

PromptStyle = Literal["auto", "chat_template", "mistral_inst"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DATA_DIR = Path(__file__).resolve().parents[1] / "data"

DEFAULT_SYSTEM_PROMPT = (
    "You are Pumpl, a strength coach. Reply with one JSON workout plan that fits the request."
)


def _path_env(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default.resolve()


def data_root() -> Path:
    return _path_env("PUMPL_DATA_ROOT", Path.cwd() / "data")


def models_root() -> Path:
    return _path_env("PUMPL_MODELS_ROOT", Path.cwd() / "models")


def raw_dir() -> Path:
    """Where users drop new raw files (watched by the retrain sensor)."""
    return data_root() / "raw"


def shipped_raw_dir() -> Path:
    """The project's own small default raw data, shipped in the package."""
    return PACKAGE_DATA_DIR / "raw"


def artifacts_dir(partition: str, asset: str) -> Path:
    return data_root() / "artifacts" / partition / asset


def cache_dir() -> Path:
    return data_root() / "cache"


def mlflow_tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = data_root() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def mlflow_artifact_root() -> str:
    return str(data_root() / "mlflow" / "artifacts")


def base_model_key() -> str:
    return os.environ.get("PUMPL_BASE_MODEL", "smollm2-135m")


def prompt_style() -> PromptStyle:
    value = os.environ.get("PUMPL_PROMPT_STYLE", "auto")
    if value not in ("auto", "chat_template", "mistral_inst"):
        raise ValueError(f"PUMPL_PROMPT_STYLE={value!r} is not one of auto, chat_template, mistral_inst")
    return cast(PromptStyle, value)


def system_prompt() -> str:
    return os.environ.get("PUMPL_SYSTEM_PROMPT") or DEFAULT_SYSTEM_PROMPT
