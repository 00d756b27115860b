"""The artifact contract: local layout unchanged, and the same calls against a real S3 (moto_server)."""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl
import pytest

from pumpl_assets.core import artifacts as A
from pumpl_assets.core import settings
from pumpl_assets.core.io import sha256_tree
from tests.services import S3Service

PART = "smollm2-135m"


def _adapter(tmp: Path) -> Path:
    d = tmp / "adapter-src"
    (d / "sub").mkdir(parents=True)
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (d / "sub" / "note.txt").write_text("nested")
    return d


@pytest.mark.unit
def test_local_layout_is_settings_artifacts_dir(pumpl_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUMPL_ARTIFACT_ROOT", raising=False)
    store = A.ArtifactStore.from_env()
    assert not store.is_remote
    for asset in A.ASSETS:
        assert store.local_path(PART, asset) == settings.artifacts_dir(PART, asset)
    assert store.uri(PART, A.ASSET_SPLIT, A.split_file("train")) == str(
        settings.artifacts_dir(PART, "split") / "train.parquet"
    )
    assert A.split_file("val", "jsonl") == "val.jsonl"
    with pytest.raises(ValueError, match="not one of"):
        A.split_file("dev")
    with pytest.raises(ValueError, match="bad artifact path"):
        store.uri(PART, "..", "x")


@pytest.mark.unit
def test_local_roundtrip(pumpl_env: Path, tmp_path: Path) -> None:
    store = A.ArtifactStore.from_env()
    df = pl.DataFrame({"prompt": ["a", "b"], "completion": ["x", "y"]})
    store.write_parquet(PART, A.ASSET_SPLIT, A.split_file("train"), df=df)
    assert store.read_parquet(PART, A.ASSET_SPLIT, A.split_file("train")).equals(df)
    store.write_json(PART, A.ASSET_SPLIT, A.FILE_GATES, obj={"b": True, "a": False})
    # Byte-identical to core.io.write_json_atomic (what write_gates produced so far).
    assert (settings.artifacts_dir(PART, "split") / "gates.json").read_text() == (
        '{\n  "a": false,\n  "b": true\n}'
    )
    src = _adapter(tmp_path)
    store.upload_dir(src, PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)
    assert store.list_files(PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub/note.txt",
    ]
    same = store.download_dir(PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)
    assert same == settings.artifacts_dir(PART, "lora_adapter") / "adapter"
    copy = store.download_dir(PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER, dest=tmp_path / "copy")
    assert sha256_tree(copy) == sha256_tree(src)
    with pytest.raises(A.ArtifactError, match="does not exist"):
        store.read_bytes(PART, A.ASSET_RAW, A.FILE_EXERCISES)


@pytest.mark.integration
def test_s3_roundtrip_by_contract_names(s3_env: S3Service, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket(f"pumpl-art-{uuid.uuid4().hex[:8]}")
    store = A.ArtifactStore(f"s3://{bucket}/team/artifacts")
    assert store.is_remote
    train_uri = store.uri(PART, A.ASSET_SPLIT, A.split_file("train"))
    assert train_uri == f"s3://{bucket}/team/artifacts/{PART}/split/train.parquet"
    with pytest.raises(A.ArtifactError, match="not on the local file system"):
        store.local_path(PART, A.ASSET_SPLIT)

    # A "controller" writes the split; a "worker" (a fresh store object) reads it by name.
    df = pl.DataFrame({"prompt": ["p1", "p2", "p3"], "completion": ["c1", "c2", "c3"]})
    assert not store.exists(PART, A.ASSET_SPLIT, A.split_file("train"))
    store.write_parquet(PART, A.ASSET_SPLIT, A.split_file("train"), df=df)
    store.write_json(PART, A.ASSET_SPLIT, A.FILE_GATES, obj={"no_leakage": True})
    worker = A.ArtifactStore(f"s3://{bucket}/team/artifacts")
    assert worker.exists(PART, A.ASSET_SPLIT, A.split_file("train"))
    assert worker.read_parquet(PART, A.ASSET_SPLIT, A.split_file("train")).equals(df)
    assert worker.read_json(PART, A.ASSET_SPLIT, A.FILE_GATES) == {"no_leakage": True}

    # The worker writes the adapter folder; the controller downloads it, hash-checked.
    src = _adapter(tmp_path)
    uri = worker.upload_dir(src, PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)
    assert uri == f"s3://{bucket}/team/artifacts/{PART}/lora_adapter/adapter"
    assert store.exists(PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)
    assert store.list_files(PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub/note.txt",
    ]
    got = store.download_dir(PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER, dest=tmp_path / "dl" / "adapter")
    assert sha256_tree(got) == sha256_tree(src)

    # Re-upload with a file removed: the stale object goes, the download matches the new folder.
    (src / "sub" / "note.txt").unlink()
    worker.upload_dir(src, PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)
    got = store.download_dir(PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER, dest=tmp_path / "dl" / "adapter")
    assert sha256_tree(got) == sha256_tree(src)

    # Corruption after upload is refused (and the previous download is left untouched).
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env.endpoint)
    key = f"team/artifacts/{PART}/lora_adapter/adapter/adapter_model.safetensors"
    s3.put_object(Bucket=bucket, Key=key, Body=b"tampered")
    with pytest.raises(A.ArtifactError, match="sha256 differs"):
        store.download_dir(PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER, dest=tmp_path / "dl" / "adapter")
    assert sha256_tree(tmp_path / "dl" / "adapter") == sha256_tree(src)

    # A folder without a manifest (never completely uploaded) is not served; errors hold no secrets.
    s3.put_object(Bucket=bucket, Key=f"team/artifacts/{PART}/merged_model/model/config.json", Body=b"{}")
    with pytest.raises(A.ArtifactError, match="no manifest") as err:
        store.download_dir(PART, A.ASSET_MERGED_MODEL, A.DIR_MODEL, dest=tmp_path / "m")
    assert "testing-secret-key" not in str(err.value) and "testing-key-id" not in str(err.value)
    with pytest.raises(A.ArtifactError, match="cannot read"):
        store.read_bytes(PART, A.ASSET_RAW, A.FILE_EXERCISES)


@pytest.mark.unit
def test_contract_names_every_asset_of_the_graph_upstream_first() -> None:
    from pumpl_assets.definitions import defs

    graph = defs().resolve_asset_graph()
    assert [k.to_user_string() for k in graph.toposorted_asset_keys] == list(A.ASSETS)
