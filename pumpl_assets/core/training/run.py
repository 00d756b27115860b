"""The training entry point, run in a fresh process.

* Under Dagster Pipes (what the ``lora_adapter`` asset launches, locally through
  ``PipesSubprocessClient`` or as a Ray job through ``PipesRayJobClient``)::

      python -m pumpl_assets.core.training.run --pipes

  The job (see :mod:`pumpl_assets.core.training.job`) arrives as the Pipes extra ``job``; the
  process streams its log (one line per optimizer step with the loss) to Dagster, then reports the
  materialization (metadata: per-step loss, final metrics; data version: the adapter's hash) and
  the three gates of :mod:`pumpl_assets.core.training.gates` as asset checks.
* Standalone, for scripts and benches: ``python -m pumpl_assets.core.training.run --job job.json``
  (or :func:`run_training_subprocess`), writing ``out_dir/result.json``.

Why a subprocess: unsloth must be imported before transformers/peft/trl, which a long-lived
process (the Dagster code server, a test session) has usually imported already; and a fresh
process returns all training memory to the OS when it exits.

Standalone, the child writes ``out_dir/result.json`` (a :class:`TrainResult`) atomically and exits 0;
on failure it exits non-zero with the error on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"


class TrainingSubprocessError(RuntimeError):
    """The training child failed; the message carries its exit code and the tail of its log."""


def load_examples(path: Path | str) -> list[Any]:
    """TrainingExample rows from .jsonl, .json (a list) or .parquet; a bad row raises naming its line."""
    from pumpl_assets.core.schemas import TrainingExample

    path = Path(path)
    if path.suffix == ".parquet":
        import polars as pl

        rows: list[Any] = pl.read_parquet(path).to_dicts()
    elif path.suffix == ".json":
        rows = json.loads(path.read_text())
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(TrainingExample.model_validate(row))
        except ValueError as e:
            raise ValueError(f"{path}: row {i + 1} is not a TrainingExample: {e}") from e
    return out


def _examples(job: dict[str, Any], key: str) -> list[Any]:
    from pumpl_assets.core.schemas import TrainingExample

    if key in job and job[key] is not None:
        return [TrainingExample.model_validate(r) for r in job[key]]
    if job.get("artifact_root") and job.get("partition"):
        from pumpl_assets.core import artifacts as A
        from pumpl_assets.core.dataset import to_training_examples

        store = A.ArtifactStore(job["artifact_root"])
        df = store.read_parquet(job["partition"], A.ASSET_SPLIT, A.split_file(key))
        return list(to_training_examples(df, job.get("system_prompt")))
    path = job.get(f"{key}_path")
    return load_examples(path) if path else []


# ---------------------------------------------------------------------------------------------
# Composition: a model loader (peft | unsloth) + a recipe (plain | sft_trainer)


def loader_for(backend: str, device: str) -> Any:
    """The model loader for a resolved backend name (``peft`` or ``unsloth``)."""
    if backend == "unsloth":
        from pumpl_assets.core.training.model_unsloth import UnslothLoader

        return UnslothLoader(device)
    from pumpl_assets.core.training.model_peft import PeftLoader

    return PeftLoader(device)


def recipe_for(loop: str) -> Any:
    """The recipe function ``(session, train, val) -> TrainResult`` for ``TrainingConfig.loop``."""
    if loop == "sft_trainer":
        from pumpl_assets.core.training.recipe_sft import train_sft

        return train_sft
    if loop == "plain":
        from pumpl_assets.core.training.recipe_plain import train_plain

        return train_plain
    raise ValueError(f"unknown training loop {loop!r}; choose plain or sft_trainer")


class Trainer:
    """A loader and a recipe behind the ``setup → train → cleanup`` interface (:class:`base.TrainerBackend`)."""

    def __init__(self, loader: Any, *, style: str = "chat_template", system_prompt: str | None = None):
        self.loader = loader
        self.name: str = loader.name
        self.device: str = loader.device
        self.style = style
        self.system_prompt = system_prompt
        self.session: Any = None

    def setup(self, base_model: Path | str, cfg: Any, out_dir: Path) -> None:
        self.session = self.loader.load(
            base_model, cfg, Path(out_dir), style=self.style, system_prompt=self.system_prompt
        )

    def train(self, train: list[Any], val: list[Any]) -> Any:
        if self.session is None:
            raise RuntimeError("call setup() before train()")
        return recipe_for(self.session.cfg.loop)(self.session, train, val)

    def cleanup(self) -> None:
        import gc

        self.session = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


def select_backend(
    name: str,
    device: str,
    *,
    cfg: Any = None,
    style: str = "chat_template",
    system_prompt: str | None = None,
) -> Trainer:
    """The trainer for ``name`` (auto/unsloth/peft) on ``device`` (auto/cpu/cuda).

    The unsloth loader must run in a process where unsloth was imported before
    transformers/peft; :func:`run_training_subprocess` gives such a process. Raises
    :class:`~pumpl_assets.core.training.base.BackendUnavailableError` for unsupported combinations.
    """
    from pumpl_assets.core.training import base

    backend, dev = base.resolve_backend_name(name, device, cfg)
    return Trainer(loader_for(backend, dev), style=style, system_prompt=system_prompt)


def train_lora(
    base_model: Path | str,
    cfg: Any,
    train: list[Any],
    val: list[Any],
    out_dir: Path,
    *,
    style: str = "chat_template",
    system_prompt: str | None = None,
    device: str = "auto",
) -> Any:
    """Train a LoRA adapter in this process (``cfg.backend`` picks the loader, ``cfg.loop`` the recipe).

    Resumes from ``out_dir``. ``system_prompt=None`` renders each example's own messages as they are
    (its system message, or no system turn); a string overrides every example's (``""`` = no system
    turn). Serving must render prompts the same way (:func:`pumpl_assets.core.prompts.render_prompt`).
    """
    trainer = select_backend(cfg.backend, device, cfg=cfg, style=style, system_prompt=system_prompt)
    try:
        trainer.setup(base_model, cfg, Path(out_dir))
        return trainer.train(train, val)
    finally:
        trainer.cleanup()


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute a job in THIS process (importing unsloth first when it is the backend). Returns result JSON."""
    from pumpl_assets.core.schemas import TrainingConfig
    from pumpl_assets.core.training import base

    cfg = TrainingConfig.model_validate(job.get("cfg", {}))
    backend_name, device = base.resolve_backend_name(cfg.backend, job.get("device", "auto"), cfg)
    if backend_name == "unsloth":
        import unsloth  # noqa: F401  (must precede transformers / peft / trl)
    train = _examples(job, "train")
    val = _examples(job, "val")
    out_dir = Path(job["out_dir"])
    trainer = select_backend(
        backend_name,
        device,
        cfg=cfg,
        style=job.get("style", "chat_template"),
        system_prompt=job.get("system_prompt"),
    )
    try:
        trainer.setup(job["base_model"], cfg, out_dir)
        result = trainer.train(train, val)
    finally:
        trainer.cleanup()
    from pumpl_assets.core.io import write_json_atomic

    payload: dict[str, Any] = result.to_json()
    write_json_atomic(out_dir / RESULT_FILE, payload)
    return payload


def run_training_subprocess(
    job: dict[str, Any], log_path: Path | None = None, *, timeout_s: float | None = None
):  # type: ignore[no-untyped-def]
    """Run ``job`` in a fresh ``python -m pumpl_assets.core.training.run`` and return its TrainResult.

    The job JSON is written next to the output (``out_dir/job.json``); the child's stdout and
    stderr go to ``log_path`` (default ``out_dir/train.log``). Raises
    :class:`TrainingSubprocessError` with the log tail when the child fails or times out.
    """
    from pumpl_assets.core.io import write_json_atomic
    from pumpl_assets.core.training.base import TrainResult

    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    job_path = write_json_atomic(out_dir / "job.json", job)
    log_path = Path(log_path) if log_path else out_dir / "train.log"
    result_path = out_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    from pumpl_assets.core.heap import preload_env

    env = {**os.environ, **preload_env()}  # tcmalloc where the machine has it (core/heap.py)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, "-m", "pumpl_assets.core.training.run", "--job", str(job_path)]
    with open(log_path, "ab") as log_fh:
        try:
            proc = subprocess.run(
                cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise TrainingSubprocessError(
                f"training timed out after {timeout_s}s; log {log_path}:\n{_tail(log_path)}"
            ) from e
    if proc.returncode != 0 or not result_path.is_file():
        raise TrainingSubprocessError(
            f"training exited with code {proc.returncode}; log {log_path}:\n{_tail(log_path)}"
        )
    return TrainResult.from_json(json.loads(result_path.read_text()))


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ForwardToPipes(logging.Handler):
    """Forwards this process's ``pumpl_assets`` log records to Dagster through the Pipes logger."""

    def __init__(self, pipes_log: logging.Logger) -> None:
        super().__init__(logging.INFO)
        self._pipes_log = pipes_log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pipes_log.log(record.levelno, f"{record.name}: {record.getMessage()}")
        except Exception:  # never let log forwarding break training
            self.handleError(record)


def materialization_metadata(result: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Pipes metadata (plain JSON or typed ``{"raw_value", "type"}``) for one TrainResult."""
    losses = [[int(s), float(v)] for s, v in result.train_loss]
    return {
        "backend": result.backend,
        "steps": int(result.total_steps),
        "steps_this_run": int(result.steps),
        "resumed_from_step": int(result.resumed_from_step) if result.resumed_from_step is not None else -1,
        "tokens_per_s": float(result.tokens_per_s),
        "train_tokens": int(result.train_tokens),
        "peak_rss_mb": float(result.peak_rss_mb),
        "val_loss": float(result.val_loss) if result.val_loss is not None else float("nan"),
        "final_train_loss": losses[-1][1] if losses else float("nan"),
        "train_wall_s": round(float(result.wall_s), 3),
        "train_loss": {"raw_value": losses, "type": "json"},
        "recipe": {"raw_value": cfg, "type": "json"},
        "adapter_dir": {"raw_value": str(result.adapter_dir), "type": "path"},
        "loss_plot": {"raw_value": str(result.loss_plot or ""), "type": "path"},
        "device": str(result.extra.get("device", "")),
        "threads": int(result.extra.get("threads") or 0),
        "retained_heap": bool(result.extra.get("retained_heap", False)),
        "allocator": str(result.extra.get("allocator", "glibc")),
        "host_pid": f"{os.uname().nodename}:{os.getpid()}",
    }


def pipes_main() -> int:
    """Run the Pipes extra ``job``; report metadata, data version and the gates to Dagster."""
    from dagster_pipes import open_dagster_pipes

    from pumpl_assets.core.io import sha256_tree
    from pumpl_assets.core.training.base import TrainResult
    from pumpl_assets.core.training.gates import adapter_integrity, training_gates

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    with open_dagster_pipes() as pipes:
        job = pipes.get_extra("job")
        out_dir = Path(job["out_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        ours = logging.getLogger("pumpl_assets")
        ours.setLevel(logging.INFO)
        ours.addHandler(_ForwardToPipes(pipes.log))
        file_log = logging.FileHandler(out_dir / "train.log")
        file_log.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(file_log)
        pipes.log.info(f"training {job['base_model']} on {job.get('device')} (pid {os.getpid()})")
        try:
            payload = run_job(job)
        except Exception as exc:  # in train.log and the Dagster event log; Pipes reports it as well
            logging.getLogger("pumpl_assets.core.training").exception("training failed: %s", exc)
            raise
        result = TrainResult.from_json(payload)
        gates = training_gates(result, adapter_integrity(result.adapter_dir))
        metadata = materialization_metadata(result, job.get("cfg", {}))
        if job.get("artifact_root") and job.get("partition"):
            from pumpl_assets.core.artifacts import redact
            from pumpl_assets.core.training.job import publish_outputs

            metadata["adapter_uri"] = redact(publish_outputs(job, result.adapter_dir))
        pipes.report_asset_materialization(
            metadata=metadata, data_version=sha256_tree(result.adapter_dir)[:16]
        )
        for gate in gates:
            pipes.report_asset_check(
                gate.name,
                gate.passed,
                severity="ERROR",
                metadata={"description": gate.description, **gate.metadata},
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    from pumpl_assets.core.heap import retain_freed_memory

    retain_freed_memory()  # first, before the model's tensors exist (see core/heap.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--job", type=Path, help="job JSON (see pumpl_assets.core.training.job)")
    mode.add_argument("--pipes", action="store_true", help="read the job from Dagster Pipes, report back")
    args = parser.parse_args(argv)
    if args.pipes:
        return pipes_main()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    job = json.loads(args.job.read_text())
    try:
        payload = run_job(job)
    except Exception as e:  # report cleanly; the parent shows the log tail
        logging.getLogger("pumpl.training").exception("training failed: %s", e)
        return 1
    print(
        "PUMPL_RESULT "
        + json.dumps(
            {
                k: payload[k]
                for k in ("steps", "total_steps", "resumed_from_step", "tokens_per_s", "wall_s", "val_loss")
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
