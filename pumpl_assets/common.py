"""Dagster wiring shared by every defs module: partitions, run config, resources, helpers.

Kept outside ``defs/`` so the defs loader does not treat it as definitions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import polars as pl
from pydantic import Field

from pumpl_assets.core import artifacts as A
from pumpl_assets.core import settings
from pumpl_assets.core.catalogue import PARTITION_KEYS, BaseModelSpec, ModelNotAvailableError, get_spec
from pumpl_assets.core.io import stable_hash

# One partitions definition for the WHOLE graph: one `--select '*' --partition X` covers every asset.
base_model_partitions = dg.StaticPartitionsDefinition(PARTITION_KEYS)

GPU_POOL = "gpu"


def code_version(impl: str, *params: Any) -> str:
    """``<implementation version>-<hash of the parameters the asset depends on>``.

    Changing a parameter (a recipe in the catalogue, a gate threshold, a default)
    changes the code version, so Dagster marks exactly that asset and its
    downstream as unsynced — what `dvc params diff` / `dvc repro` gave before.
    """
    return f"{impl}-{stable_hash([p.model_dump() if hasattr(p, 'model_dump') else p for p in params])[:10]}"


def spec_for(context: dg.AssetExecutionContext) -> BaseModelSpec:
    return get_spec(context.partition_key)


def out_dir(context: dg.AssetExecutionContext, asset: str | None = None) -> Path:
    name = asset or context.asset_key.to_user_string()
    path = settings.artifacts_dir(context.partition_key, name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def upstream_dir(partition: str, asset: str) -> Path:
    """Folder of an upstream asset's artifacts; a clear error if it was never materialized."""
    path = settings.artifacts_dir(partition, asset)
    if not path.is_dir() or not any(path.iterdir()):
        raise dg.Failure(
            description=(
                f"upstream asset {asset!r} has no artifacts for partition {partition!r} at {path}; "
                f"materialize it first (e.g. `dagster asset materialize --select '*' --partition {partition}`)"
            )
        )
    return path


def fail_on_missing_model(exc: ModelNotAvailableError) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=False)


def check(
    name: str,
    passed: bool,
    description: str,
    **metadata: Any,
) -> dg.AssetCheckResult:
    """A blocking gate result (ERROR severity, so a failure stops everything downstream)."""
    md = {"description": description, **{k: _md(v) for k, v in metadata.items()}}
    return dg.AssetCheckResult(
        check_name=name,
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=md,
    )


def _md(value: Any) -> Any:
    if isinstance(value, float):
        return dg.MetadataValue.float(round(value, 6))
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, Path):
        return dg.MetadataValue.path(str(value))
    if isinstance(value, dict | list):
        return dg.MetadataValue.json(value)
    return dg.MetadataValue.text(str(value))


def metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _md(v) for k, v in values.items()}


def gate_spec(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name=name, asset=asset, blocking=True, description=description)


def frame_preview(df: pl.DataFrame, n: int = 5) -> dg.MetadataValue:
    if df.height == 0:
        return dg.MetadataValue.md("_(empty)_")
    head = df.head(n)
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        cells = [str(c).replace("|", "\\|").replace("\n", " ")[:80] for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def write_gates(dest_dir: Path, results: list[dg.AssetCheckResult]) -> None:
    """Persist gate outcomes next to the artifact (the registry entry re-reads them before moving the alias)."""
    from pumpl_assets.core.io import write_json_atomic

    write_json_atomic(
        dest_dir / A.FILE_GATES,
        {r.check_name: bool(r.passed) for r in results if r.check_name},
    )


def read_gates(partition: str, asset: str) -> dict[str, bool]:
    path = settings.artifacts_dir(partition, asset) / A.FILE_GATES
    return json.loads(path.read_text()) if path.is_file() else {}


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["wall_s"] = round(time.perf_counter() - t0, 3)


# ---------------------------------------------------------------- run config (typed, one per asset)


class RawConfig(dg.Config):
    """Raw ingestion. The shipped default data and `<data root>/raw` are always read."""

    extra_dirs: list[str] = Field(default_factory=list, description="More folders of raw files to ingest")
    max_quarantine_rate: float = Field(default=0.25, ge=0.0, le=1.0)
    min_exercises: int = Field(default=30, ge=1)


class DistillConfig(dg.Config):
    n_examples: int = Field(default=800, ge=1, le=100_000, description="Requests sampled for the teacher")
    seed: int = 7
    teacher: str = Field(default="auto", description="auto | offline | claude")
    claude_model: str = "claude-haiku-4-5"
    max_concurrency: int = Field(default=4, ge=1, le=64)
    max_failure_rate: float = Field(default=0.10, ge=0.0, le=1.0)


class ValidateConfig(dg.Config):
    max_quarantine_rate: float = Field(default=0.20, ge=0.0, le=1.0)
    min_rows: int = Field(default=50, ge=1)


class SplitConfig(dg.Config):
    proportion_tolerance: float = Field(default=0.02, ge=0.0, le=0.5)
    min_rows_for_proportion_gate: int = Field(default=200, ge=1)
    max_too_long_rate: float = Field(default=0.02, ge=0.0, le=1.0)


class TrainConfig(dg.Config):
    """Overrides of the catalogue recipe (None keeps the catalogue's value) and where training runs."""

    backend: str = Field(default="auto", description="auto | unsloth | peft")
    loop: str | None = Field(
        default=None,
        description="plain (packed, answer-only head; default) | sft_trainer (PEFT + TRL SFTTrainer)",
    )
    max_steps: int | None = Field(default=None, ge=0)
    learning_rate: float | None = Field(default=None, gt=0)
    seed: int | None = None
    checkpoint_every: int | None = Field(default=None, ge=1, description="Optimizer steps per checkpoint")
    decision_weight: float | None = Field(
        default=None,
        ge=1.0,
        le=20.0,
        description="Loss weight of the plan's decision tokens (split, day, sets, reps, rest...); plain loop only",
    )
    resume: bool = True
    launcher: Literal["subprocess", "ray"] = Field(
        default="subprocess",
        description="subprocess: a Dagster Pipes subprocess here | ray: a Ray job (dagster-ray Pipes)",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray dashboard address for launcher 'ray' (default $PUMPL_RAY_ADDRESS), e.g. http://127.0.0.1:8265",
    )

    def recipe_overrides(self) -> dict[str, Any]:
        """The recipe fields this config overrides (None = keep the catalogue's value)."""
        return {
            "backend": self.backend,
            "loop": self.loop,
            "max_steps": self.max_steps,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
            "decision_weight": self.decision_weight,
        }


class EvalConfig(dg.Config):
    # Every test row by default: the gates are rates over the test split, and the AWQ gate's
    # 2-point tolerance needs >= 50 rows to tolerate even one changed answer.
    limit: int | None = Field(default=None, ge=1, description="Test examples evaluated (None = all)")
    batch_size: int | None = Field(default=None, ge=1)
    include_base: bool = True
    max_new_tokens: int | None = Field(default=None, ge=8, le=4096, description="Cap on a row's budget")


class QuantizeConfig(dg.Config):
    backend: str = Field(default="auto", description="auto | llmcompressor | autoawq")
    # AWQ's scale search costs (grid points × calibration tokens) per layer; 32 texts and a 20-point
    # grid are what the smollm2-135m gates were measured with.
    n_calibration: int = Field(default=32, ge=1, le=4096)
    n_grid: int = Field(default=20, ge=2, le=100, description="AWQ scale-search grid points")
    # The AWQ model is decoded on eval_report's rows with eval_report's budgets (see awq_model).


class RegistryConfig(dg.Config):
    promote: bool = Field(default=True, description="Move the champion alias when every gate passed")
