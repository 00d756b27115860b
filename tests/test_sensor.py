"""The retrain sensor: new or changed raw files → one run per partition, never twice for the same file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from pumpl_assets.core.catalogue import PARTITION_KEYS
from pumpl_assets.defs.sensors import raw_data_sensor


def _tick(cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    ctx = dg.build_sensor_context(cursor=cursor)
    return raw_data_sensor(ctx)


@pytest.mark.unit
def test_sensor_skips_empty_folder(pumpl_env: Path) -> None:
    result = _tick(None)
    assert isinstance(result, dg.SkipReason)


@pytest.mark.unit
def test_new_file_triggers_one_run_per_partition_once(pumpl_env: Path) -> None:
    raw = pumpl_env / "raw"
    raw.mkdir()
    (raw / "pairs.jsonl").write_text('{"request": {}, "plan": {}}\n')
    first = _tick(None)
    assert isinstance(first, dg.SensorResult)
    reqs = first.run_requests or []
    assert sorted(r.partition_key for r in reqs) == sorted(PARTITION_KEYS)
    assert len({r.run_key for r in reqs}) == len(PARTITION_KEYS)
    cursor = first.cursor
    assert cursor and "pairs.jsonl" in json.loads(cursor)

    # Same file, same cursor → nothing (the same file never triggers twice).
    assert isinstance(_tick(cursor), dg.SkipReason)

    # Touched but identical content → nothing.
    os.utime(raw / "pairs.jsonl", (1, 1))
    again = _tick(cursor)
    assert isinstance(again, dg.SkipReason)


@pytest.mark.unit
def test_changed_and_new_files_trigger_with_new_run_keys(pumpl_env: Path) -> None:
    raw = pumpl_env / "raw"
    raw.mkdir()
    (raw / "a.csv").write_text("name,level\nPush-Up,beginner\n")
    first = _tick(None)
    assert isinstance(first, dg.SensorResult)
    keys1 = {r.run_key for r in first.run_requests or []}

    (raw / "a.csv").write_text("name,level\nPush-Up,beginner\nSquat,beginner\n")
    second = _tick(first.cursor)
    assert isinstance(second, dg.SensorResult)
    keys2 = {r.run_key for r in second.run_requests or []}
    assert keys1.isdisjoint(keys2)

    (raw / "b.json").write_text("[]")
    third = _tick(second.cursor)
    assert isinstance(third, dg.SensorResult)
    assert len(third.run_requests or []) == len(PARTITION_KEYS)


@pytest.mark.unit
def test_hidden_and_partial_files_are_ignored(pumpl_env: Path) -> None:
    raw = pumpl_env / "raw"
    raw.mkdir()
    (raw / ".incoming.csv").write_text("x")
    (raw / "upload.csv.part").write_text("x")
    (raw / "data.tmp").write_text("x")
    assert isinstance(_tick(None), dg.SkipReason)


@pytest.mark.unit
def test_sensor_targets_the_full_graph_job() -> None:
    assert raw_data_sensor.job_name == "full_graph"
