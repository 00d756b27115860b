"""``pumpl-serve`` / ``python -m pumpl_serving``: serve the registered (or a given) model.

Exit codes: 0 normal stop, 1 a worker could not load the model, 2 bad arguments or nothing
to serve (no champion and no ``--model-path``; the message says what to do).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pumpl_serving.config import ALLOWED_HOSTS, ENGINE_CHOICES, TOKEN_ENV, ServeConfig, resolve_source
from pumpl_serving.model_source import ModelSourceError

log = logging.getLogger("pumpl_serving")


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _non_negative_float(v: str) -> float:
    x = float(v)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {x}")
    return x


def _positive_float(v: str) -> float:
    x = float(v)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {x}")
    return x


def build_parser() -> argparse.ArgumentParser:
    from pumpl_assets.core import settings

    p = argparse.ArgumentParser(
        prog="pumpl-serve",
        description="Serve the Pumpl workout-plan model over HTTP (LitServe): POST /generate, "
        "POST /v1/chat/completions (OpenAI), GET /health, GET /info. "
        f"Set {TOKEN_ENV} to require 'Authorization: Bearer <token>'.",
    )
    p.add_argument(
        "--partition",
        default=settings.base_model_key(),
        help="base-model partition (default: $PUMPL_BASE_MODEL or smollm2-135m)",
    )
    p.add_argument(
        "--alias",
        default="champion",
        help="registry alias to serve: models:/pumpl-<partition>@<alias> (default champion)",
    )
    p.add_argument(
        "--model-path", default=None, help="serve this model folder instead of the registry (no hot reload)"
    )
    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default="auto",
        help="inference engine; awq serves the version's AWQ folder, llamacpp (CPU) its GGUF folder "
        "(or a GGUF export given with --model-path), the others its merged folder; auto (default): "
        "llamacpp for a CPU partition on a CPU machine with llama.cpp installed, else transformers",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        choices=ALLOWED_HOSTS,
        help="bind address (default 127.0.0.1; 0.0.0.0 exposes the server to the network)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=_positive_int, default=1, help="/generate inference workers per device")
    p.add_argument("--api-servers", type=_positive_int, default=1, help="HTTP server processes")
    p.add_argument(
        "--max-batch-size", type=_positive_int, default=8, help="dynamic batching: max requests per batch"
    )
    p.add_argument(
        "--batch-timeout",
        type=_non_negative_float,
        default=0.05,
        help="dynamic batching: seconds to wait for a batch to fill",
    )
    p.add_argument(
        "--max-queue",
        type=_positive_int,
        default=64,
        help="model requests queued or running before new ones get 503 + Retry-After",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=120.0,
        help="seconds a model request may wait for its answer before 504",
    )
    p.add_argument(
        "--poll-interval",
        type=_non_negative_float,
        default=30.0,
        help="seconds between registry checks for a moved alias (0 disables hot reload)",
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads per worker")
    p.add_argument(
        "--exercises",
        default=None,
        help="exercise catalogue (parquet/json) for request-aware grammars "
        "(default: the materialized raw asset, else the shipped catalogue)",
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info"))
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        partition=args.partition,
        alias=args.alias,
        model_path=args.model_path,
        engine=args.engine,
        host=args.host,
        port=args.port,
        workers=args.workers,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        max_queue=args.max_queue,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        threads=args.threads,
        exercises_path=args.exercises,
        log_level=args.log_level,
    )


def _engine_model_mismatch(engine: str, path: Path) -> str | None:
    """Why ``engine`` cannot serve ``path`` (a GGUF export vs a Hugging Face folder), else None."""
    is_gguf = path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf")))
    if engine == "llamacpp":
        if not is_gguf:
            return (
                f"--engine llamacpp serves a GGUF export and {path} holds no .gguf file; export one with "
                f"python -m pumpl_assets.core.gguf {path} OUT_DIR and pass --model-path OUT_DIR"
            )
        from pumpl_assets.core.engine_llamacpp import resolve_gguf

        try:
            resolve_gguf(path)
        except (FileNotFoundError, ValueError) as exc:
            return str(exc)
        return None
    if is_gguf and not any(path.glob("*.safetensors")):
        return f"{path} is a GGUF export: serve it with --engine llamacpp"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not (1024 <= args.port <= 65535):
        parser.error(f"--port must be between 1024 and 65535, got {args.port}")
    if args.batch_timeout >= args.timeout:
        parser.error(f"--batch-timeout ({args.batch_timeout}) must be below --timeout ({args.timeout})")
    from pumpl_assets.core.catalogue import CATALOGUE

    if args.partition not in CATALOGUE:
        parser.error(f"unknown --partition {args.partition!r}; known: {', '.join(CATALOGUE)}")
    cfg = config_from_args(args)
    # Fail fast (exit 2) when there is nothing to serve, before any worker starts.
    try:
        cfg, ref, why = resolve_source(cfg)
    except ModelSourceError as exc:
        print(f"pumpl-serve: {exc}", file=sys.stderr)
        return 2
    mismatch = _engine_model_mismatch(cfg.engine, Path(ref.path))
    if mismatch:
        print(f"pumpl-serve: {mismatch}", file=sys.stderr)
        return 2
    log.info(
        "serving %s (version %s) from %s with engine %s (%s) on http://%s:%d",
        ref.name,
        ref.version,
        ref.path,
        cfg.engine,
        why,
        cfg.host,
        cfg.port,
    )
    token = os.environ.get(TOKEN_ENV) or None
    from pumpl_serving.app import run

    return run(cfg, token, api_servers=args.api_servers)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
