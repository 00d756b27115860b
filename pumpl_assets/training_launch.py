"""Launch the training entry point through Dagster Pipes: a local subprocess or a Ray job.

Both launchers run the same command, ``python -m pumpl_assets.core.training.run --pipes``, hand it
the job as the Pipes extra ``job``, and return the :class:`PipesClientCompletedInvocation` whose
``get_materialize_result()`` carries the metadata and gates the training process reported.

* ``subprocess`` (default): ``dg.PipesSubprocessClient`` on this machine.
* ``ray``: ``dagster_ray.PipesRayJobClient`` submits it as a Ray job to the cluster whose dashboard
  address is ``TrainConfig.ray_address`` or ``$PUMPL_RAY_ADDRESS`` (e.g. ``http://127.0.0.1:8265``);
  GPU partitions ask Ray for ``entrypoint_num_gpus``. The job's ``runtime_env`` carries
  ``PYTHONPATH`` (this checkout first) and the non-secret settings the training reads (``PUMPL_*``,
  ``HF_*``, ``DAGSTER_HOME``, ...); the cluster's nodes must see the same paths (one machine, or a
  shared filesystem) and the same Python environment.

Kept outside ``defs/`` so the definitions loader does not scan it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import dagster as dg

Launcher = Literal["subprocess", "ray"]
LAUNCHERS: tuple[Launcher, ...] = ("subprocess", "ray")

ENTRY_MODULE = "pumpl_assets.core.training.run"
RAY_ADDRESS_ENV = "PUMPL_RAY_ADDRESS"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Environment forwarded to a Ray job (a subprocess inherits the whole environment anyway).
_FORWARD_PREFIXES = ("PUMPL_", "HF_", "TRANSFORMERS_", "UNSLOTH_", "DAGSTER_", "OMP_", "MKL_")
_FORWARD_NAMES = ("TOKENIZERS_PARALLELISM", "TZ", "LANG")
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def tail_complete_lines(path: str | Path, should_stop: Any, poll_s: float = 0.01) -> Iterator[str]:
    """Lines appended to ``path``, each yielded only once its newline is there.

    Dagster 1.13's ``tail_file`` yields whatever ``readline`` returns, and an append that crosses a
    page boundary can be read half-written (the page cache exposes the first page before the
    second is copied): ``json.loads`` of that fragment killed the Pipes reader thread in a CI run
    (2026-12-01, training step 165 of 200) and the step lost every later message and its gates.
    """
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
                continue
            if should_stop():
                # The writer has exited; drain what it flushed last (a whole line or nothing more).
                rest = stream.read()
                pending += rest
                for line in pending.splitlines(keepends=True):
                    if line.endswith("\n"):
                        yield line
                return
            time.sleep(poll_s)


class CompleteLineTempFileMessageReader(dg.PipesMessageReader):
    """``dg.PipesTempFileMessageReader`` (same file protocol, same writer in the training process)
    reading whole lines only (:func:`tail_complete_lines`); the stock reader cannot be told to."""

    def __init__(self, include_stdio_in_messages: bool = False) -> None:
        self._include_stdio_in_messages = include_stdio_in_messages

    @contextlib.contextmanager
    def read_messages(self, handler: Any) -> Iterator[dict[str, Any]]:
        from dagster_pipes import PipesDefaultMessageWriter

        done = threading.Event()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "messages")
            open(path, "w", encoding="utf-8").close()

            def read() -> None:
                try:
                    for line in tail_complete_lines(path, done.is_set):
                        handler.handle_message(json.loads(line))
                except Exception:
                    handler.report_pipes_framework_exception(
                        f"{type(self).__name__} reader thread", sys.exc_info()
                    )
                    raise

            thread = threading.Thread(target=read, daemon=True)
            thread.start()
            try:
                yield {
                    PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                    PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: self._include_stdio_in_messages,
                }
            finally:
                done.set()
                thread.join()

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file (whole lines only)."


def training_command() -> list[str]:
    """The entry point, with this interpreter (a Ray head started from the same venv has it too)."""
    return [sys.executable, "-m", ENTRY_MODULE, "--pipes"]


def is_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Ray job: PYTHONPATH with this checkout first + non-secret settings."""
    environ = os.environ if environ is None else environ
    env = {
        k: v
        for k, v in environ.items()
        if (k.startswith(_FORWARD_PREFIXES) or k in _FORWARD_NAMES)
        and not is_secret(k)
        and not k.startswith("DAGSTER_PIPES_")
    }
    paths = [str(REPO_ROOT), *[p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _allocator_env() -> dict[str, str]:
    """:func:`pumpl_assets.core.heap.preload_env`, a required-but-missing tcmalloc as a clear Failure."""
    from pumpl_assets.core.heap import AllocatorUnavailableError, preload_env

    try:
        return preload_env()
    except (AllocatorUnavailableError, ValueError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def redact_address(address: str) -> str:
    """The address without any user:password part (safe for logs and metadata)."""
    parts = urlsplit(address)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return address


def resolve_ray_address(configured: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``configured`` or ``$PUMPL_RAY_ADDRESS``; a clear error when neither is set."""
    environ = os.environ if environ is None else environ
    address = configured or environ.get(RAY_ADDRESS_ENV)
    if not address:
        raise dg.Failure(
            description=(
                "launcher 'ray' needs the Ray dashboard address: set the lora_adapter config "
                f"`ray_address` or ${RAY_ADDRESS_ENV} (e.g. http://127.0.0.1:8265)"
            ),
            allow_retries=False,
        )
    if "://" not in address:
        address = f"http://{address}"
    return address


def require_ray() -> None:
    missing = [m for m in ("ray", "dagster_ray") if importlib.util.find_spec(m) is None]
    if missing:
        raise dg.Failure(
            description=(
                f"launcher 'ray' needs {' and '.join(missing)} installed in the Dagster environment: "
                "pip install 'ray[default]==2.60.0' 'dagster-ray==0.4.8' (or use launcher 'subprocess')"
            ),
            allow_retries=False,
        )


def ray_job_client(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address``; a clear error when the dashboard cannot be reached."""
    require_ray()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError depending on the failure
        raise dg.Failure(
            description=(
                f"Ray dashboard at {redact_address(address)} is unreachable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); start a head with `ray start --head "
                "--dashboard-host=127.0.0.1` or fix the lora_adapter config `ray_address` / "
                f"${RAY_ADDRESS_ENV}"
            ),
            allow_retries=False,
        ) from None


def ray_submit_params(
    *, num_gpus: float, submission_id: str, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``submit_job_params`` for ``PipesRayJobClient.run`` (the Pipes variables are added by dagster-ray)."""
    params: dict[str, Any] = {
        "entrypoint": shlex.join(training_command()),
        "submission_id": submission_id,
        # The nodes run the same image as this one (module docstring), tcmalloc included.
        "runtime_env": {"env_vars": {**forwarded_env(environ), **_allocator_env()}},
        "entrypoint_num_cpus": 1,
    }
    if num_gpus:
        params["entrypoint_num_gpus"] = num_gpus
    return params


def ray_submission_id(context: dg.AssetExecutionContext) -> str:
    partition = context.partition_key if context.has_partition_key else "all"
    return f"pumpl-lora-{partition}-{context.run_id[:8]}-{int(time.time())}-{uuid.uuid4().hex[:4]}"


def launch(
    context: dg.AssetExecutionContext,
    job: dict[str, Any],
    *,
    launcher: Launcher,
    ray_address: str | None = None,
    num_gpus: float = 0,
    ray_timeout_s: float = 24 * 3600,
) -> Any:
    """Run the training job through Pipes on ``launcher``; returns the completed invocation.

    A failed run raises :class:`dagster.Failure` with the launcher's reason and the tail of
    ``out_dir/train.log``.
    """
    if launcher not in LAUNCHERS:
        raise dg.Failure(description=f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    log_path = Path(job["out_dir"]) / "train.log"
    if launcher == "subprocess":
        # Not re-exported at the top level of dagster 1.13 (PipesSubprocessClient raises it on a non-zero exit).
        from dagster._core.errors import DagsterPipesExecutionError

        client = dg.PipesSubprocessClient(
            # tcmalloc preloaded where the machine has it: ~30% faster CPU steps (core/heap.py).
            env={"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **_allocator_env()},
            message_reader=CompleteLineTempFileMessageReader(),
        )
        try:
            return client.run(context=context, command=training_command(), extras={"job": job})
        except DagsterPipesExecutionError as exc:
            raise dg.Failure(
                description=f"training failed: {exc}; log {log_path}:\n{_tail(log_path)}"
            ) from None

    address = resolve_ray_address(ray_address)
    ray_job_client(address)  # fail early and clearly when the cluster is not there
    from dagster_ray import PipesRayJobClient

    submission_id = ray_submission_id(context)
    context.log.info(
        f"submitting training as Ray job {submission_id} to {redact_address(address)} (gpus={num_gpus})"
    )
    ray_client = PipesRayJobClient(address=address, timeout=ray_timeout_s, poll_interval=0.5)
    try:
        return ray_client.run(
            context=context,
            submit_job_params=ray_submit_params(num_gpus=num_gpus, submission_id=submission_id),  # type: ignore[arg-type]
            extras={"job": job},
        )
    except RuntimeError as exc:  # dagster-ray: "Ray job ... failed with status FAILED/STOPPED"
        raise dg.Failure(
            description=f"Ray job {submission_id} did not succeed: {exc}; log {log_path}:\n{_tail(log_path)}",
            metadata={"ray_job_id": submission_id},
        ) from None


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"
