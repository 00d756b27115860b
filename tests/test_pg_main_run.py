"""What the main job's run left in PostgreSQL (the team instance, dagster_home/team).

.ci/run starts a throwaway PostgreSQL, runs `PUMPL_DAGSTER_INSTANCE=team bash scripts/main.sh` (the whole
graph for smollm2-135m) and sets ``PUMPL_PG_MAIN_RUN=<partition>`` (+ ``PUMPL_PG_*``): this test then reads
the instance back and requires the newest run of that partition to have succeeded with one materialization
per asset, every asset check evaluated and passed, and the queue/pool settings in force. Elsewhere (plain
``pytest``: no such run) it skips with that reason. ``PUMPL_PG_MAIN_RUN_ASSETS=raw,distilled`` checks a
cheaper subset run instead of the whole graph. It also records the run's row counts in
bench/out/pg_main_run.json (docs/deployment.md's capacity plan).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from pumpl_assets.report import ASSETS
from tests.pg_helpers import PG_VARS, REPO_ROOT

pytestmark = pytest.mark.integration

TEAM_HOME = REPO_ROOT / "dagster_home" / "team"
OUT = REPO_ROOT / "bench" / "out" / "pg_main_run.json"
GPU_POOL_ASSETS = {"lora_adapter", "eval_report", "awq_model"}


@pytest.fixture(scope="module")
def main_run() -> tuple[str, list[str]]:
    partition = os.environ.get("PUMPL_PG_MAIN_RUN", "")
    if not partition:
        pytest.skip(
            "no Postgres main run to check: .ci/run sets PUMPL_PG_MAIN_RUN=<partition> (and PUMPL_PG_*) after "
            "`PUMPL_DAGSTER_INSTANCE=team bash scripts/main.sh`"
        )
    missing = [v for v in PG_VARS if not os.environ.get(v)]
    if missing:
        pytest.fail(
            f"PUMPL_PG_MAIN_RUN={partition} but {', '.join(missing)} not set (the Postgres connection)"
        )
    raw = os.environ.get("PUMPL_PG_MAIN_RUN_ASSETS", "")
    assets = [a.strip() for a in raw.split(",") if a.strip()] or list(ASSETS)
    unknown = sorted(set(assets) - set(ASSETS))
    assert not unknown, f"PUMPL_PG_MAIN_RUN_ASSETS names unknown assets {unknown}"
    return partition, assets


def test_main_run_is_in_postgres_with_every_materialization_and_check(
    main_run: tuple[str, list[str]],
) -> None:
    import dagster as dg
    import sqlalchemy as sa
    from dagster._core.events import DagsterEventType

    from pumpl_assets.definitions import defs as build_defs

    partition, assets = main_run
    with dg.DagsterInstance.from_config(str(TEAM_HOME)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"

        # The newest run of the partition that materialized these assets, and it succeeded.
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
        assert runs, f"no run of partition {partition} in Postgres"
        ours = [r for r in runs if set(assets) <= {k.to_user_string() for k in (r.asset_selection or set())}]
        assert ours, f"no run of {partition} selected {assets}: {[r.asset_selection for r in runs]}"
        run = ours[0]  # get_runs is newest first
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id}: {run.status}"

        # One materialization per asset, for this partition.
        mats = instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
        ).records
        per_asset = Counter(
            r.event_log_entry.dagster_event.asset_key.to_user_string()  # type: ignore[union-attr]
            for r in mats
        )
        assert {a: per_asset.get(a, 0) for a in assets} == dict.fromkeys(assets, 1), per_asset
        assert {r.event_log_entry.dagster_event.partition for r in mats} == {partition}  # type: ignore[union-attr]

        # Every check the code declares on these assets was evaluated in this run, and passed.
        graph = build_defs().resolve_asset_graph()
        expected = {
            (k.asset_key.to_user_string(), k.name)
            for k in graph.asset_check_keys
            if k.asset_key.to_user_string() in assets
        }
        evals = instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        outcomes = {}
        for r in evals:
            data = r.event_log_entry.dagster_event.asset_check_evaluation_data  # type: ignore[union-attr]
            outcomes[(data.asset_key.to_user_string(), data.check_name)] = data.passed
        assert set(outcomes) == expected, (
            f"missing {expected - set(outcomes)}; extra {set(outcomes) - expected}"
        )
        failed = sorted(k for k, ok in outcomes.items() if not ok)
        assert not failed, f"checks failed: {failed}"

        # The queue and pool settings the team instance runs under.
        conc = instance.get_concurrency_config()
        assert conc.pool_config.default_pool_limit == 1
        assert conc.run_queue_config is not None
        assert {
            "key": "dagster/partition",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        } in conc.run_queue_config.tag_concurrency_limits
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        if GPU_POOL_ASSETS & set(assets):  # the pool's limit row exists once a gpu step claimed a slot
            assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1

    # Measured for the capacity plan: the rows this run wrote.
    env = os.environ
    url = (
        f"postgresql+psycopg2://{env['PUMPL_PG_USER']}@{env['PUMPL_PG_HOST']}:{env['PUMPL_PG_PORT']}/"
        f"{env['PUMPL_PG_DB']}"
    )
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            q = lambda sql: conn.execute(sa.text(sql), {"r": run.run_id}).all()  # noqa: E731
            by_type: dict[str, int] = dict(
                q(
                    "SELECT coalesce(dagster_event_type, 'log message'), count(*) FROM event_logs "
                    "WHERE run_id = :r GROUP BY 1 ORDER BY 2 DESC"
                )
            )
            bytes_ = q(
                "SELECT coalesce(sum(pg_column_size(event_logs.*)), 0) FROM event_logs WHERE run_id = :r"
            )
            tags = q("SELECT count(*) FROM run_tags WHERE run_id = :r")[0][0]
            checks = q("SELECT count(*) FROM asset_check_executions WHERE run_id = :r")[0][0]
            asset_tags = q(
                "SELECT count(*) FROM asset_event_tags t JOIN event_logs e ON e.id = t.event_id "
                "WHERE e.run_id = :r"
            )[0][0]
    finally:
        engine.dispose()
    measured = {
        "partition": partition,
        "assets": assets,
        "checks": len(expected),
        "run_id": run.run_id,
        "event_log_rows": sum(by_type.values()),
        "event_log_bytes": int(bytes_[0][0]),
        "event_log_rows_by_type": by_type,
        "runs_rows": 1,
        "run_tags_rows": tags,
        "asset_check_executions_rows": checks,
        "asset_event_tags_rows": asset_tags,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(measured, indent=2) + "\n")
    print(json.dumps(measured))
