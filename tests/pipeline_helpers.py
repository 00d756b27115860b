"""Run the real code location's assets in-process (what `dagster asset materialize` does)."""

from __future__ import annotations

from typing import Any

import dagster as dg

PARTITION = "smollm2-135m"


def load_defs() -> dg.Definitions:
    from pumpl_assets.definitions import defs as build

    return build()


def run(
    selection: list[str],
    ops: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    defs = load_defs()
    instance = instance or dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        list(defs.assets or []),  # type: ignore[arg-type]  # no cacheable assets in this code location
        selection=selection,
        partition_key=PARTITION,
        run_config=dg.RunConfig(ops=ops or {}),
        resources=dict(defs.resources or {}),
        instance=instance,
        raise_on_error=False,
    )
    return result, instance


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events() if e.asset_key}


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    out = {}
    for ev in result.get_asset_check_evaluations():
        out[f"{ev.asset_key.to_user_string()}:{ev.check_name}"] = ev.passed
    return out
