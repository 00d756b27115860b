"""Helpers for the training tests that go through Dagster: a tiny split on disk and one-asset runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

PARTITION = "smollm2-135m"


def write_tiny_split(n_train: int = 10, n_val: int = 2) -> Path:
    """A ``split`` artifact folder (train/val/test parquet) of short, valid plan examples."""
    from pumpl_assets.core import settings
    from tests.test_training import _example

    split = settings.artifacts_dir(PARTITION, "split")
    split.mkdir(parents=True, exist_ok=True)

    def frame(idx: range) -> pl.DataFrame:
        rows = [_example(i) for i in idx]
        return pl.DataFrame(
            {
                "request_json": [r.request.model_dump_json() if r.request is not None else "" for r in rows],
                "plan_json": [r.assistant for r in rows],
                "source": ["test"] * len(rows),
            }
        )

    frame(range(n_train)).write_parquet(split / "train.parquet")
    frame(range(n_train, n_train + n_val)).write_parquet(split / "val.parquet")
    frame(range(n_train, n_train + n_val)).write_parquet(split / "test.parquet")
    return split


def materialize_lora(
    config: Any, instance: dg.DagsterInstance | None = None
) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    """Materialize ``lora_adapter`` alone (its ``split`` read from disk) with ``config`` (a TrainConfig)."""
    from pumpl_assets.defs.model import lora_adapter
    from pumpl_assets.defs.resources import MlflowResource

    instance = instance or dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [lora_adapter],
        partition_key=PARTITION,
        run_config=dg.RunConfig(ops={"lora_adapter": config}),
        resources={"mlflow": MlflowResource()},
        instance=instance,
        raise_on_error=False,
    )
    return result, instance


def lora_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """Plain values of the lora_adapter materialization's metadata."""
    events = result.get_asset_materialization_events()
    assert events, "no materialization"
    md = events[-1].materialization.metadata
    return {k: getattr(v, "value", v) for k, v in md.items()}


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {ev.check_name: ev.passed for ev in result.get_asset_check_evaluations()}
