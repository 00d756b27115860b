"""Real MLflow (sqlite tracking + registry, local artifacts) under a temp data root.

The same contract against a tracking server on PostgreSQL + S3 is in test_registry_server.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpl_assets.core.io import sha256_tree
from pumpl_assets.core.registry import (
    IntegrityError,
    Registry,
    RegistryError,
    is_remote_store,
    metric_tags,
    registered_model_name,
)

PART = "smollm2-135m"
NAME = "pumpl-smollm2-135m"


@pytest.fixture()
def registry(pumpl_env: Path) -> Registry:
    return Registry()  # MLFLOW_TRACKING_URI + PUMPL_DATA_ROOT come from pumpl_env


def _version_tags(run: str, schema_valid: float) -> dict[str, str]:
    return {
        "dagster_run_id": run,
        "data.train_hash": "abc123",
        "data.test_hash": "def456",
        **metric_tags({"schema_valid": schema_valid, "adherence_constrained": 0.95}),
    }


def _copy_model(src: Path, dest: Path, marker: str) -> Path:
    import shutil

    shutil.copytree(src, dest)
    (dest / "marker.txt").write_text(marker)  # distinct content → distinct hash
    return dest


@pytest.mark.unit
def test_names_and_metric_tags() -> None:
    assert registered_model_name("qwen3-4b") == "pumpl-qwen3-4b"
    assert metric_tags({"a": 1, "b": 0.25}) == {"metric.a": "1.0", "metric.b": "0.25"}


@pytest.mark.unit
def test_remote_store_never_gets_a_file_artifact_location() -> None:
    assert not is_remote_store("sqlite:////tmp/x.db") and not is_remote_store("/tmp/mlruns")
    assert not is_remote_store("file:///tmp/mlruns") and not is_remote_store("postgresql+psycopg2://u@h/db")
    assert is_remote_store("http://127.0.0.1:5000") and is_remote_store("https://mlflow.example")
    reg = Registry("http://user:s3cret@127.0.0.1:9")  # nothing listens on port 9
    assert reg.remote and reg.artifact_root is None
    assert reg.display_uri == "http://127.0.0.1:9"
    with pytest.raises(RegistryError, match=r"tracking server http://127\.0\.0\.1:9 is unreachable") as err:
        reg.check_reachable(timeout=2)
    assert "s3cret" not in str(err.value)


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
    assert registry.artifact_root is not None
    assert registry.artifact_root in Path(run.info.artifact_uri.removeprefix("file://")).parents

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
    merged = _copy_model(tiny_model_dir, tmp_path / "merged_model" / "model", "merged-a")
    awq = _copy_model(tiny_model_dir, tmp_path / "awq_model" / "model", "awq-a")
    merged_sha, awq_sha = sha256_tree(merged), sha256_tree(awq)
    with registry.start_run("pumpl-smollm2-135m", "run-a", {}) as run_a:
        v1 = registry.register_model(
            PART,
            run_id=run_a,
            merged_dir=merged,
            awq_dir=awq,
            tags=_version_tags("dag-a", 0.96),
            description="first",
        )
    assert v1 == "1"
    assert registry.get_champion(PART) is None  # registering never crowns

    registry.set_champion(PART, v1)
    champ = registry.get_champion(PART)
    assert champ is not None and champ.version == "1" and champ.is_champion
    assert champ.name == NAME and champ.run_id == run_a and champ.description == "first"
    assert champ.metrics == {"schema_valid": 0.96, "adherence_constrained": 0.95}
    assert champ.tags["dagster_run_id"] == "dag-a" and champ.tags["data.train_hash"] == "abc123"
    assert champ.source == f"runs:/{run_a}/awq"
    assert champ.sha256 == {"merged": merged_sha, "awq": awq_sha}
    assert champ.artifacts == {"merged": "merged", "awq": "awq"} and champ.paths == {}
    assert "merged_path" not in champ.tags and "awq_path" not in champ.tags
    assert sorted(a.path for a in registry.client.list_artifacts(run_a)) == ["awq", "merged"]

    # The version serves its own copies: re-running the pipeline (overwriting the folders) changes nothing.
    (merged / "marker.txt").write_text("merged-b")
    (awq / "marker.txt").write_text("awq-b")
    cache = tmp_path / "cache"
    for kind, digest in (("merged", merged_sha), ("awq", awq_sha)):
        got = registry.download_model(champ, kind, cache)
        assert got == cache / NAME / f"v1-{digest[:16]}" / kind
        assert sha256_tree(got) == digest
    assert (cache / NAME / f"v1-{merged_sha[:16]}" / "merged" / "marker.txt").read_text() == "merged-a"
    with pytest.raises(RegistryError, match=rf"{NAME} version 1 carries no catalogue"):
        registry.download_model(champ, "catalogue", cache)

    # A second version registered by path (development) does not take the alias by itself ...
    v2 = registry.register_version(PART, awq, run_id=None, tags=_version_tags("dag-b", 0.98), copy=False)
    assert v2 == "2"
    assert registry.get_champion(PART).version == "1"  # type: ignore[union-attr]
    by_version = registry.resolve(f"models:/{NAME}/2")
    assert by_version.paths == {"awq": awq.resolve()} and by_version.source == str(awq.resolve())
    assert not by_version.is_champion
    assert registry.resolve(f"models:/{NAME}/latest").version == "2"
    # ... its folder is copied (hash-checked) into the cache, and refused once it changed.
    assert sha256_tree(registry.download_model(by_version, "awq", cache)) == by_version.sha256["awq"]
    (awq / "marker.txt").write_text("awq-c")
    with pytest.raises(IntegrityError, match=rf"{NAME} version 2: downloaded awq files hash to"):
        registry.download_model(by_version, "awq", tmp_path / "fresh-cache")

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
def test_tampered_cache_is_refused(registry: Registry, tiny_model_dir: Path, tmp_path: Path) -> None:
    import pumpl_assets.core.registry as reg_mod

    merged = _copy_model(tiny_model_dir, tmp_path / "m", "m")
    with registry.start_run("pumpl-smollm2-135m", "run", {}) as run_id:
        v = registry.register_model(PART, run_id=run_id, merged_dir=merged, awq_dir=None, tags={})
    info = registry.get_version(PART, v)
    got = registry.download_model(info, "merged", tmp_path / "cache")
    (got / "marker.txt").write_text("tampered")
    reg_mod._VERIFIED.clear()  # a new process: the cache is checked again before it is served
    with pytest.raises(IntegrityError, match=rf"{NAME} version {v}: cached merged files"):
        registry.download_model(info, "merged", tmp_path / "cache")
    with pytest.raises(RegistryError, match="carries no awq model"):
        registry.download_model(info, "awq", tmp_path / "cache")


@pytest.mark.integration
def test_register_refuses_non_model_folder(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        registry.register_version(PART, tmp_path, run_id=None, tags={})
    with pytest.raises(ValueError, match="needs merged_dir"):
        registry.register_model(PART, run_id="r", merged_dir=None, awq_dir=None, tags={})
    assert registry.list_versions(PART) == []


@pytest.mark.unit
def test_prune_model_cache_keeps_current_and_newest(tmp_path: Path) -> None:
    import os

    from pumpl_assets.core.registry import prune_model_cache

    cache = tmp_path / NAME
    dirs = []
    for i in range(1, 5):
        d = cache / f"v{i}-abc" / "merged"
        d.mkdir(parents=True)
        os.utime(d.parent, (1000 + i, 1000 + i))
        dirs.append(d.parent)
    removed = prune_model_cache(cache, keep=dirs[3], keep_latest=2)
    assert sorted(removed) == dirs[:2]
    assert sorted(p for p in cache.iterdir()) == dirs[2:]
