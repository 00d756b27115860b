"""Server configuration (one picklable object shared by the HTTP processes and the workers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pumpl_serving.model_source import ModelSource, PathSource, RegistrySource

ENGINES: tuple[str, ...] = ("transformers", "bnb4", "bnb8", "awq", "vllm", "llamacpp")
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
    engine: str = "transformers"
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
