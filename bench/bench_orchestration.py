"""orchestration: wall time of the whole asset graph for a partition, and Dagster's share of it.

Nothing is run here: the benchmark reads the Dagster instance (``DAGSTER_HOME``, default
``<repo>/dagster_home``) and looks at the newest successful runs of the partition.

* **graph wall** — ``end − start`` of the newest successful run that materialized every asset of
  the graph (:data:`pumpl_assets.report.ASSETS`); baseline "10-minute budget" (ratio = wall / 600 s).
* **Dagster's share** — ``(run wall − Σ assets' own wall_s metadata) / run wall`` for that run:
  everything that is not the assets' own compute (process start-up, step launching, event and
  metadata I/O, IO managers). Baseline name: "sum of the assets' own wall_s"; ratio = run wall /
  that sum. Per-step durations (STEP_START → STEP_SUCCESS) are in the details.

When no full-graph run exists the graph-wall metric is reported as missing (never estimated) and
the share is given for the newest successful run, with the assets it covered named. With no run
at all the benchmark's status is ``no_data``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, BenchResult, Context, Metric, ratio

NAME = "orchestration"
BUDGET_S = 600.0
GOAL_SHARE = 0.10
MAX_RUNS = 50


def run_summary(instance: Any, record: Any) -> dict[str, Any]:
    """Per-run: wall, the assets it materialized with their ``wall_s``, and step durations."""
    import dagster as dg

    run = record.dagster_run
    events = instance.all_logs(
        run.run_id,
        of_type={
            dg.DagsterEventType.ASSET_MATERIALIZATION,
            dg.DagsterEventType.STEP_START,
            dg.DagsterEventType.STEP_SUCCESS,
        },
    )
    assets: dict[str, float | None] = {}
    starts: dict[str, float] = {}
    steps: dict[str, float] = {}
    for e in events:
        de = e.dagster_event
        if de is None:
            continue
        if de.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            mat = de.event_specific_data.materialization
            v = mat.metadata.get("wall_s")
            value = getattr(v, "value", v)
            assets[mat.asset_key.to_user_string()] = float(value) if isinstance(value, int | float) else None
        elif de.event_type == dg.DagsterEventType.STEP_START and de.step_key:
            starts[de.step_key] = e.timestamp
        elif de.event_type == dg.DagsterEventType.STEP_SUCCESS and de.step_key in starts:
            steps[de.step_key] = e.timestamp - starts[de.step_key]
    wall = (record.end_time - record.start_time) if record.start_time and record.end_time else None
    return {
        "run_id": run.run_id,
        "job": run.job_name,
        "status": str(run.status.value),
        "partition": run.tags.get("dagster/partition"),
        "start_time": record.start_time,
        "wall_s": wall,
        "assets_wall_s": assets,
        "steps_s": steps,
    }


def run(ctx: Context) -> BenchResult:
    from pumpl_assets.report import ASSETS

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home")))
    result = BenchResult(NAME, details={"dagster_home": str(home), "graph_assets": list(ASSETS)})
    if not (home / "dagster.yaml").is_file() and not (home / "history").is_dir():
        result.status = "no_data"
        result.notes.append(f"no Dagster instance at {home}: no run to read")
        return result
    import dagster as dg

    instance = dg.DagsterInstance.get()
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            tags={"dagster/partition": ctx.partition}, statuses=[dg.DagsterRunStatus.SUCCESS]
        ),
        limit=MAX_RUNS,
    )
    if not records:
        result.status = "no_data"
        result.notes.append(
            f"no successful Dagster run of partition {ctx.partition!r} in {home}: graph wall time and "
            "Dagster's share are not measured (nothing is estimated)"
        )
        return result
    summaries = [run_summary(instance, r) for r in records]  # newest first
    full = next((s for s in summaries if set(ASSETS) <= set(s["assets_wall_s"])), None)
    chosen = full or summaries[0]
    result.details["runs_considered"] = len(summaries)
    result.details["run"] = chosen

    if full is not None:
        wall = float(full["wall_s"])
        result.metrics.append(
            Metric(
                "orchestration_graph_wall_s",
                wall,
                "s (full graph, one run)",
                baseline_name="10-minute budget",
                baseline_value=BUDGET_S,
                ratio=wall / BUDGET_S,
                goal=f"≤ {BUDGET_S:.0f} s",
                goal_met=wall <= BUDGET_S,
                details={"run_id": full["run_id"]},
            )
        )
    else:
        result.metrics.append(
            Metric(
                "orchestration_graph_wall_s",
                None,
                "s (no full-graph run found)",
                goal=f"≤ {BUDGET_S:.0f} s",
                goal_met=None,
            )
        )
        covered = ", ".join(sorted(chosen["assets_wall_s"])) or "none"
        result.notes.append(
            f"No successful run of partition {ctx.partition!r} materialized the whole graph; Dagster's share "
            f"below is for the newest successful run {chosen['run_id'][:8]}, which covered: {covered}."
        )

    wall_s = chosen["wall_s"]
    known = [v for v in chosen["assets_wall_s"].values() if v is not None]
    missing = [k for k, v in chosen["assets_wall_s"].items() if v is None]
    if wall_s and known:
        compute = sum(known)
        share = (wall_s - compute) / wall_s
        label = "" if full is not None else " (partial run)"
        result.metrics.append(
            Metric(
                "orchestration_dagster_share",
                100 * share,
                f"% of run wall{label}",
                baseline_name="sum of the assets' own wall_s",
                baseline_value=compute,
                ratio=ratio(wall_s, compute),
                goal=f"≤ {GOAL_SHARE:.0%}",
                goal_met=share <= GOAL_SHARE,
                details={"run_wall_s": wall_s, "assets": len(known), "run_id": chosen["run_id"]},
            )
        )
        if missing:
            result.notes.append(
                f"assets without wall_s metadata (counted as orchestration): {', '.join(missing)}"
            )
        if share < 0:
            result.notes.append("assets overlapped in time (parallel steps): the sum exceeds the run wall")
    else:
        result.notes.append("the chosen run has no timing or no asset wall_s metadata; share not computed")
    return result
