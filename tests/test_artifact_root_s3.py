"""The graph on an object-store artifact root (``PUMPL_ARTIFACT_ROOT=s3://…``, a real moto_server).

``split`` → ``lora_adapter`` through Dagster: the split asset publishes its files by contract names,
the training process reads them from S3 and publishes the adapter (+ manifest) there, and the asset
downloads it, hash-checked, into its local folder (what ``merged_model`` reads). Metadata carries the
adapter's URI; no credential appears in metadata, the event log or the training log.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from pumpl_assets.core import artifacts as A
from tests.services import DUMMY_AWS, S3Service

PART = "smollm2-135m"
SECRETS = (DUMMY_AWS["AWS_ACCESS_KEY_ID"], DUMMY_AWS["AWS_SECRET_ACCESS_KEY"])


def write_merged(n: int = 24) -> None:
    """A ``merged`` artifact (the split asset's input) of short, valid plan examples."""
    from pumpl_assets.core import settings
    from tests.test_training import _example

    d = settings.artifacts_dir(PART, A.ASSET_MERGED)
    d.mkdir(parents=True, exist_ok=True)
    rows = [_example(i) for i in range(n)]
    pl.DataFrame(
        {
            "request_json": [r.request.model_dump_json() for r in rows if r.request is not None],
            "plan_json": [r.assistant for r in rows],
            "source": ["test"] * n,
        }
    ).write_parquet(d / A.FILE_MERGED)


def s3_objects(s3: S3Service, bucket: str, prefix: str) -> dict[str, str]:
    """``{key relative to prefix: sha256}`` of every object under ``prefix``."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint)
    out: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []) or []:
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(prefix) :]] = hashlib.sha256(body).hexdigest()
    return out


def local_files(d: Path) -> dict[str, str]:
    return {
        str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest() for f in d.rglob("*") if f.is_file()
    }


def md_of(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    ev = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key and e.asset_key.to_user_string() == asset
    ]
    assert ev, f"{asset} was not materialized"
    return {k: getattr(v, "value", v) for k, v in ev[-1].materialization.metadata.items()}


def assert_graph_on_s3(
    result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance, s3: S3Service, bucket: str
) -> dict[str, Any]:
    """The split and the adapter are in S3 by contract names; the local adapter equals the S3 copy."""
    from pumpl_assets.core import settings

    assert result.success
    prefix = f"team/artifacts/{PART}/"
    objects = s3_objects(s3, bucket, prefix)
    for name in ("train.parquet", "val.parquet", "test.parquet", "gates.json"):
        assert f"split/{name}" in objects, sorted(objects)
    split_dir = settings.artifacts_dir(PART, A.ASSET_SPLIT)  # the local copy stays (other assets read it)
    for name in ("train.parquet", "val.parquet", "test.parquet", "gates.json"):
        assert objects[f"split/{name}"] == local_files(split_dir)[name]
    split_md = md_of(result, "split")
    assert split_md["split_uris"]["train.parquet"] == f"s3://{bucket}/{prefix}split/train.parquet"

    manifest_key = f"lora_adapter/adapter{A.MANIFEST_SUFFIX}"
    assert manifest_key in objects
    in_s3 = {
        k[len("lora_adapter/adapter/") :]: v
        for k, v in objects.items()
        if k.startswith("lora_adapter/adapter/")
    }
    assert "adapter_model.safetensors" in in_s3 and "adapter_config.json" in in_s3
    local_adapter = settings.artifacts_dir(PART, A.ASSET_LORA_ADAPTER) / A.DIR_ADAPTER
    assert local_files(local_adapter) == in_s3  # downloaded, sha256 for sha256
    import boto3

    manifest = json.loads(
        boto3.client("s3", endpoint_url=s3.endpoint)
        .get_object(Bucket=bucket, Key=prefix + manifest_key)["Body"]
        .read()
    )
    assert manifest["files"] == in_s3

    md = md_of(result, "lora_adapter")
    assert md["adapter_uri"] == f"s3://{bucket}/{prefix}lora_adapter/adapter"
    assert Path(md["adapter_dir"]) == local_adapter
    gates = json.loads((local_adapter.parent / A.FILE_GATES).read_text())
    assert gates["trained"] is True and gates["adapter_integrity"] is True

    # No credential in metadata, the event log or the training log.
    everything = json.dumps({"split": split_md, "lora": md}, default=str)
    everything += "\n".join(str(e.user_message) for e in instance.all_logs(result.run_id))
    for log in settings.data_root().rglob("train.log"):
        everything += log.read_text(errors="replace")
    for secret in SECRETS:
        assert secret not in everything
    return md


def materialize_split_and_lora(ops: dict[str, Any]) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    from tests.pipeline_helpers import run

    return run(["split", "lora_adapter"], ops=ops)


@pytest.mark.integration
def test_split_and_lora_adapter_on_an_s3_artifact_root(
    s3_env: S3Service, pumpl_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pumpl_assets.common import TrainConfig

    bucket = s3_env.make_bucket(f"pumpl-graph-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("PUMPL_ARTIFACT_ROOT", f"s3://{bucket}/team/artifacts")
    monkeypatch.setenv("PUMPL_MODEL_PATH_SMOLLM2_135M", str(tiny_model_dir))
    monkeypatch.setenv("PUMPL_TORCH_THREADS", "1")
    write_merged()
    result, instance = materialize_split_and_lora(
        {"lora_adapter": TrainConfig(max_steps=2, learning_rate=5e-3, checkpoint_every=2)}
    )
    md = assert_graph_on_s3(result, instance, s3_env, bucket)
    assert md["launcher"] == "subprocess" and md["steps"] == 2


@pytest.mark.unit
def test_publish_and_collect_are_no_ops_on_the_default_local_root(
    pumpl_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pumpl_assets.core import settings
    from pumpl_assets.core.dataset import publish_split
    from pumpl_assets.core.training.job import collect_outputs

    monkeypatch.delenv("PUMPL_ARTIFACT_ROOT", raising=False)
    split = settings.artifacts_dir(PART, A.ASSET_SPLIT)
    split.mkdir(parents=True)
    for name in ("train.parquet", "val.parquet", "test.parquet", "gates.json"):
        (split / name).write_bytes(name.encode())
    assert publish_split(split, PART) == {}
    job = {"artifact_root": A.artifact_root(), "partition": PART}
    assert collect_outputs(job, settings.artifacts_dir(PART, A.ASSET_LORA_ADAPTER)) == {}

    # Another local root: the split is copied there, and the adapter copied back from it.
    other = A.ArtifactStore(str(tmp_path / "elsewhere"))
    published = publish_split(split, PART, other)
    assert published["gates.json"] == str(other.local_path(PART, A.ASSET_SPLIT, "gates.json"))
    assert other.read_bytes(PART, A.ASSET_SPLIT, "train.parquet") == b"train.parquet"
    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes(b"w")
    other.upload_dir(src, PART, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)
    dest = settings.artifacts_dir(PART, A.ASSET_LORA_ADAPTER)
    got = collect_outputs({"artifact_root": other.root, "partition": PART}, dest)
    assert (dest / "adapter" / "adapter_model.safetensors").read_bytes() == b"w"
    assert got["adapter_dir"] == str(dest / "adapter")
    with pytest.raises(A.ArtifactError, match="no such file"):
        A.publish_files(tmp_path, PART, A.ASSET_SPLIT, ["missing.parquet"], other)


@pytest.fixture(scope="module")
def ray_head_with_s3_credentials(moto_s3_session: S3Service) -> Iterator[str]:
    """A local Ray head whose nodes hold their own (dummy) S3 credentials: the launcher never forwards them."""
    from tests.test_training_ray import start_ray_head

    with start_ray_head(DUMMY_AWS) as address:
        yield address


@pytest.mark.integration
@pytest.mark.skipif(
    os.environ.get("PUMPL_RAY_S3_TEST") != "1",
    reason="opt-in (PUMPL_RAY_S3_TEST=1): a second Ray head + Ray job cost ~3-5 min on the 2-core box, "
    "well over the subprocess variant that proves the same contract",
)
def test_split_and_lora_adapter_on_an_s3_artifact_root_through_ray(
    ray_head_with_s3_credentials: str,
    s3_env: S3Service,
    pumpl_env: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from pumpl_assets.common import TrainConfig

    bucket = s3_env.make_bucket(f"pumpl-ray-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("PUMPL_ARTIFACT_ROOT", f"s3://{bucket}/team/artifacts")
    monkeypatch.setenv("PUMPL_MODEL_PATH_SMOLLM2_135M", str(tiny_model_dir))
    monkeypatch.setenv("PUMPL_TORCH_THREADS", "1")
    monkeypatch.setenv("PUMPL_RAY_ADDRESS", ray_head_with_s3_credentials)
    write_merged()
    result, instance = materialize_split_and_lora(
        {"lora_adapter": TrainConfig(launcher="ray", max_steps=2, learning_rate=5e-3, checkpoint_every=2)}
    )
    md = assert_graph_on_s3(result, instance, s3_env, bucket)
    assert md["launcher"] == "ray"
    client = JobSubmissionClient(ray_head_with_s3_credentials)
    job_id = md["Ray Job ID"]
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED
    # The worker found the store through the forwarded settings; the credentials were its own.
    env_vars = (client.get_job_info(job_id).runtime_env or {})["env_vars"]
    assert env_vars["PUMPL_ARTIFACT_ROOT"] == f"s3://{bucket}/team/artifacts"
    assert env_vars["PUMPL_S3_ENDPOINT_URL"] == s3_env.endpoint
    assert not any(secret in json.dumps(env_vars) for secret in SECRETS)
