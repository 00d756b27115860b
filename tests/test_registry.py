"""Real MLflow (sqlite tracking + registry, local artifacts) under a temp data root."""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpl_assets.core.registry import (
    MODEL_ARTIFACT_PATH,
    Registry,
    RegistryError,
    metric_tags,
    registered_model_name,
)

PART = "smollm2-135m"
NAME = "pumpl-smollm2-135m"


@pytest.fixture()
def registry(pumpl_env: Path) -> Registry:
    return Registry()  # MLFLOW_TRACKING_URI + PUMPL_DATA_ROOT come from pumpl_env


def _version_tags(run: str, merged: Path, schema_valid: float) -> dict[str, str]:
    return {
        "dagster_run_id": run,
        "data.train_hash": "abc123",
        "data.test_hash": "def456",
        "merged_path": str(merged),
        **metric_tags({"schema_valid": schema_valid, "adherence_constrained": 0.95}),
    }


@pytest.mark.unit
def test_names_and_metric_tags() -> None:
    assert registered_model_name("qwen3-4b") == "pumpl-qwen3-4b"
    assert metric_tags({"a": 1, "b": 0.25}) == {"metric.a": "1.0", "metric.b": "0.25"}


@pytest.mark.integration
def test_empty_registry(registry: Registry, pumpl_env: Path) -> None:
    assert registry.tracking_uri.startswith("sqlite:///") and str(pumpl_env) in registry.tracking_uri
    assert registry.get_champion(PART) is None
    assert registry.list_versions(PART) == []
    with pytest.raises(RegistryError, match=r"alias 'champion'"):
        registry.resolve(f"models:/{NAME}@champion")
    with pytest.raises(RegistryError, match=rf"{NAME}/7 does not exist"):
        registry.resolve(f"models:/{NAME}/7")
    with pytest.raises(ValueError, match="not a models:/"):
        registry.resolve("runs:/abc/model")


@pytest.mark.integration
def test_runs_log_metrics_params_artifacts(registry: Registry, tmp_path: Path) -> None:
    note = tmp_path / "report.json"
    note.write_text('{"ok": true}')
    with registry.start_run("pumpl-smollm2-135m", "train-1", {"dagster_run_id": "d-1"}) as run_id:
        registry.log_params({"rank": 16, "lr": 2e-3})
        registry.log_metrics({"loss": 0.5, "nan_metric": float("nan")})
        registry.log_artifact(note)
    run = registry.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 0.5}
    assert run.data.params == {"rank": "16", "lr": "0.002"}
    assert run.data.tags["dagster_run_id"] == "d-1"
    assert [a.path for a in registry.client.list_artifacts(run_id)] == ["report.json"]
    assert Path(registry.artifact_root) in Path(run.info.artifact_uri.removeprefix("file://")).parents

    with (
        pytest.raises(RuntimeError, match="boom"),
        registry.start_run("pumpl-smollm2-135m", "bad", {}) as bad_id,
    ):
        raise RuntimeError("boom")
    assert registry.client.get_run(bad_id).info.status == "FAILED"
    with pytest.raises(RuntimeError, match="no run"):
        registry.log_metrics({"x": 1.0})


@pytest.mark.integration
def test_register_and_move_champion(registry: Registry, tiny_model_dir: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    with registry.start_run("pumpl-smollm2-135m", "run-a", {}) as run_a:
        v1 = registry.register_version(
            PART, tiny_model_dir, run_id=run_a, tags=_version_tags("dag-a", merged, 0.96), description="first"
        )
    assert v1 == "1"
    assert registry.get_champion(PART) is None  # registering never crowns

    registry.set_champion(PART, v1)
    champ = registry.get_champion(PART)
    assert champ is not None and champ.version == "1" and champ.is_champion
    assert champ.name == NAME and champ.run_id == run_a and champ.description == "first"
    assert champ.metrics == {"schema_valid": 0.96, "adherence_constrained": 0.95}
    assert champ.tags["dagster_run_id"] == "dag-a" and champ.tags["data.train_hash"] == "abc123"
    assert champ.merged_path == merged
    assert champ.source == f"runs:/{run_a}/{MODEL_ARTIFACT_PATH}"
    # The version serves an immutable copy inside the run's artifacts, not the mutable asset folder.
    assert champ.awq_path is not None and champ.awq_path != tiny_model_dir
    assert (champ.awq_path / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    assert champ.tags["awq_source_path"] == str(tiny_model_dir.resolve())

    # A second version (registered by path) does not take the alias by itself ...
    v2 = registry.register_version(
        PART, tiny_model_dir, run_id=None, tags=_version_tags("dag-b", merged, 0.98), copy=False
    )
    assert v2 == "2"
    assert registry.get_champion(PART).version == "1"  # type: ignore[union-attr]
    by_version = registry.resolve(f"models:/{NAME}/2")
    assert by_version.awq_path == tiny_model_dir.resolve() and by_version.source == str(
        tiny_model_dir.resolve()
    )
    assert not by_version.is_champion
    assert registry.resolve(f"models:/{NAME}/latest").version == "2"

    # ... only set_champion moves it.
    registry.set_champion(PART, v2)
    resolved = registry.resolve(f"models:/{NAME}@champion")
    assert resolved.version == "2" and resolved.metrics["schema_valid"] == 0.98
    assert registry.get_version(PART, "1").aliases == []
    assert [v.version for v in registry.list_versions(PART)] == ["1", "2"]

    with pytest.raises(RegistryError, match=rf"{NAME}/9 does not exist"):
        registry.set_champion(PART, "9")
    assert registry.get_champion(PART).version == "2"  # type: ignore[union-attr]

    # A fresh Registry on the same store sees the same state (it is persisted in sqlite).
    again = Registry(registry.tracking_uri, str(registry.artifact_root))
    assert again.get_champion(PART).version == "2"  # type: ignore[union-attr]


@pytest.mark.integration
def test_register_refuses_non_model_folder(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        registry.register_version(PART, tmp_path, run_id=None, tags={})
    assert registry.list_versions(PART) == []
