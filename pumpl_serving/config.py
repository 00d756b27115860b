"""Server configuration (one picklable object shared by the HTTP processes and the workers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pumpl_serving.model_source import ModelRef, ModelSource, ModelSourceError, PathSource, RegistrySource

ENGINES: tuple[str, ...] = ("transformers", "bnb4", "bnb8", "awq", "vllm", "llamacpp")
# `auto` (the default) is resolved once at start-up by :func:`choose_engine` into one of ENGINES.
ENGINE_CHOICES: tuple[str, ...] = ("auto", *ENGINES)
ALLOWED_HOSTS: tuple[str, ...] = ("127.0.0.1", "0.0.0.0", "::")
TOKEN_ENV = "PUMPL_SERVE_TOKEN"

# Paths that run the model (guarded by the queue bound and the timeout).
GENERATE_PATH = "/generate"
CHAT_PATH = "/v1/chat/completions"
MODEL_PATHS: frozenset[str] = frozenset({GENERATE_PATH, CHAT_PATH})


@dataclass
class ServeConfig:
    """Everything ``pumpl-serve`` was asked for. Never holds the bearer token itself."""

    partition: str
    alias: str = "champion"
    model_path: str | None = None
    engine: str = "auto"  # resolved by choose_engine before anything loads
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch_size: int = 8
    batch_timeout: float = 0.05
    max_queue: int = 64
    timeout: float = 120.0
    poll_interval: float = 30.0
    threads: int | None = None
    exercises_path: str | None = None
    max_body_bytes: int = 1 << 20
    log_level: str = "info"
    state_dir: str = ""  # per-run folder where workers publish what they serve (set by the app)
    auth_enabled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def source(self) -> ModelSource:
        if self.model_path:
            return PathSource(Path(self.model_path))
        return RegistrySource(self.partition, self.alias, self.engine)

    def public(self) -> dict[str, Any]:
        """Settings safe to show on /info."""
        d = asdict(self)
        d.pop("state_dir", None)
        d.pop("extra", None)
        return d


def _is_gguf_path(path: Path) -> bool:
    return path.suffix == ".gguf" or (
        path.is_dir() and any(path.glob("*.gguf")) and not any(path.glob("*.safetensors"))
    )


def choose_engine(cfg: ServeConfig) -> tuple[str, str]:
    """The engine ``cfg.engine`` stands for, and why (for the start-up log).

    An explicit engine is kept. ``auto``: a GGUF path -> ``llamacpp``, any other path ->
    ``transformers``; the registry on a machine without CUDA, for a CPU partition, with
    llama-cpp-python installed -> ``llamacpp`` (the champion's GGUF copy: 2.9x / 2.1x the
    transformers server's plans/s at 1 / 8 clients, README "llama.cpp engine"); else
    ``transformers`` (GPU partitions keep vLLM / transformers). Which copy the champion holds is
    checked by the caller (:func:`resolve_source`).
    """
    if cfg.engine != "auto":
        return cfg.engine, "asked for"
    if cfg.model_path:
        if _is_gguf_path(Path(cfg.model_path)):
            return "llamacpp", "the model path is a GGUF export"
        return "transformers", "the model path is a Hugging Face folder"
    import importlib.util

    from pumpl_assets.core.catalogue import CATALOGUE

    spec = CATALOGUE.get(cfg.partition)
    if spec is not None and spec.device != "cpu":
        return "transformers", f"partition {cfg.partition} is a GPU model"
    import torch

    if torch.cuda.is_available():
        return "transformers", "a CUDA device is present"
    if importlib.util.find_spec("llama_cpp") is None:
        return "transformers", "llama-cpp-python is not installed (bash scripts/llamacpp.sh installs it)"
    return "llamacpp", "CPU partition on a CPU machine with llama.cpp installed"


def resolve_source(cfg: ServeConfig) -> tuple[ServeConfig, ModelRef, str]:
    """Pick the engine (:func:`choose_engine`) and resolve what it serves; returns the config with
    the concrete engine, the model and the reason. ``auto`` falls back to the transformers engine
    on the version's merged copy when the registry's version holds no GGUF copy (registered before
    gguf_model existed). Raises :class:`ModelSourceError` like ``ModelSource.resolve``."""
    from dataclasses import replace

    engine, why = choose_engine(cfg)
    chosen = replace(cfg, engine=engine)
    try:
        return chosen, chosen.source().resolve(), why
    except ModelSourceError as exc:
        if cfg.engine != "auto" or engine != "llamacpp" or cfg.model_path:
            raise
        fallback = replace(cfg, engine="transformers")
        return fallback, fallback.source().resolve(), f"auto: no GGUF copy to serve ({exc})"
