"""Proof: an immutable champion on a real MLflow server (PostgreSQL backend, S3 artifacts via moto).

Services (tests/services.py, session fixtures): moto_server, PostgreSQL 15, ``mlflow server
--serve-artifacts --artifacts-destination s3://…``. The registering client and the model server
get only the tracking URI: no S3 credentials, no shared folder. Scenario:

1. the pipeline registers version 1 from a "Dagster data root" (merged + AWQ folders) with
   every gate passed → champion;
2. a re-run writes different weights into the SAME data-root folders and registers version 2
   with a failing gate → not promoted;
3. a fresh process (new cache, another data root) loads ``models:/pumpl-<p>@champion``: it gets
   version 1's weights, hash-equal to what was registered, not the overwritten folder;
4. ``pumpl-serve`` started with only the tracking URI answers ``POST /generate``;
5. tampered S3 objects, a missing alias and a dead server are refused with messages naming them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pumpl_assets.core import artifacts as A
from pumpl_assets.core.io import sha256_tree
from pumpl_assets.core.registry import Registry, register_candidate
from tests.services import DUMMY_AWS, MlflowServer, free_port

# Real Postgres + moto S3 + an MLflow server (~2-3 min): outside the fast default suite, run by CI
# (scripts/test.sh runs every test but the gpu ones).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PART = "smollm2-135m"
NAME = f"pumpl-{PART}"
ALL_PASSED = {"split.no_leakage": True, "awq_model.size_ratio": True}


@dataclass
class Scenario:
    server: MlflowServer
    registry: Registry
    data_root: Path  # the (simulated) Dagster data root both runs wrote into
    v1: str
    v2: str
    v1_sha: dict[str, str]
    rerun_sha: dict[str, str]


def _client_env(tracking_uri: str, tmp: Path) -> dict[str, str]:
    """A process on 'another host': the tracking URI, its own empty data root, no AWS anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PUMPL_"))}
    env.update(
        {
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PUMPL_DATA_ROOT": str(tmp / "other-host-data"),
            "PUMPL_MODEL_CACHE": str(tmp / "other-host-cache"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
            ),
        }
    )
    return env


def _write_model_half(data_root: Path, model: Path, marker: str) -> tuple[Path, Path, Path]:
    """What merged_model / awq_model / raw leave in the data root (the folders a re-run overwrites)."""
    import polars as pl

    merged = data_root / "artifacts" / PART / A.ASSET_MERGED_MODEL / A.DIR_MODEL
    awq = data_root / "artifacts" / PART / A.ASSET_AWQ_MODEL / A.DIR_MODEL
    for d in (merged, awq):
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(model, d)
    (awq / "pumpl_quant.json").write_text(json.dumps({"marker": marker}))
    cat = data_root / "artifacts" / PART / A.ASSET_RAW / A.FILE_EXERCISES
    cat.parent.mkdir(parents=True, exist_ok=True)
    # The raw asset's real exercises table (every column a server reads), marked so each run's file differs.
    from pumpl_assets.core import settings
    from pumpl_assets.core.ingest import ingest_raw

    table = ingest_raw([settings.shipped_raw_dir() / "exercises.json"]).exercises
    table.with_columns(pl.lit(marker).alias("source_file")).write_parquet(cat)
    return merged, awq, cat


@pytest.fixture(scope="module")
def scenario(
    mlflow_server_session: MlflowServer,
    tiny_model_dir: Path,
    smollm2_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    from pumpl_assets.core.basemodel import build_tiny_model

    tmp = tmp_path_factory.mktemp("registry-server")
    uri = mlflow_server_session.tracking_uri
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:
        registry = Registry(uri)
        assert registry.remote and registry.artifact_root is None
        data_root = tmp / "dagster-data"

        merged, awq, cat = _write_model_half(data_root, tiny_model_dir, "run-1")
        first = register_candidate(
            registry, PART, merged_dir=merged, awq_dir=awq, catalogue=cat, gates=ALL_PASSED,
            tags={"dagster.run_id": "run-1"}, run_tags={"dagster.run_id": "run-1"},
        )  # fmt: skip
        assert first.promoted and first.champion_version == first.version
        v1_sha = {"merged": sha256_tree(merged), "awq": sha256_tree(awq), "catalogue_file": sha256_tree(cat)}
        assert {k: first.sha256[k] for k in ("merged", "awq")} == {k: v1_sha[k] for k in ("merged", "awq")}
        assert set(first.sha256) == {"merged", "awq", "catalogue"}

        # The re-run of the model half: new weights into the same folders; a gate fails.
        other = build_tiny_model(tmp / "tiny-seed1", smollm2_dir, seed=1)
        merged2, awq2, _ = _write_model_half(data_root, other, "run-2")
        assert (merged2, awq2) == (merged, awq)
        second = register_candidate(
            registry, PART, merged_dir=merged, awq_dir=awq, catalogue=cat, tags={"dagster.run_id": "run-2"},
            gates={**ALL_PASSED, "awq_model.size_ratio": False}, run_tags={"dagster.run_id": "run-2"},
        )  # fmt: skip
        assert not second.promoted and second.champion_version == first.version
        rerun_sha = {"merged": sha256_tree(merged), "awq": sha256_tree(awq)}
        assert rerun_sha["merged"] != v1_sha["merged"]
        yield Scenario(
            mlflow_server_session, registry, data_root, first.version, second.version, v1_sha, rerun_sha
        )
    finally:
        os.environ.update(saved)


def test_versions_live_in_the_object_store_not_on_the_client(scenario: Scenario) -> None:
    reg = scenario.registry
    champ = reg.get_champion(PART)
    assert champ is not None and champ.version == scenario.v1
    assert champ.sha256["merged"] == scenario.v1_sha["merged"] and champ.tags["gates_passed"] == "true"
    assert "merged_path" not in champ.tags and "awq_path" not in champ.tags and champ.paths == {}
    run = reg.client.get_run(champ.run_id)  # type: ignore[arg-type]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    assert run.data.tags["dagster.run_id"] == "run-1"
    v2 = reg.get_version(PART, scenario.v2)
    assert v2.tags["gates_passed"] == "false" and v2.tags["gate.awq_model.size_ratio"] == "false"
    assert v2.sha256["merged"] == scenario.rerun_sha["merged"]

    import boto3

    s3 = boto3.client("s3", endpoint_url=scenario.server.env["MLFLOW_S3_ENDPOINT_URL"], **_aws())
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=scenario.server.bucket)
        for o in page.get("Contents", [])
    ]
    for kind in ("merged", "awq"):
        assert any(f"{champ.run_id}/artifacts/{kind}/config.json" in k for k in keys), kind
    assert any(f"{champ.run_id}/artifacts/catalogue/exercises.parquet" in k for k in keys)
    # Nothing was written next to the client: no local mlflow artifact folder, no file:// location.
    assert not (scenario.data_root / "mlflow").exists()


def test_fresh_process_serves_the_champion_not_the_rewritten_folder(
    scenario: Scenario, tmp_path: Path
) -> None:
    probe = textwrap.dedent(
        """
        import json, sys
        from pumpl_assets.core.io import sha256_tree
        from pumpl_serving.model_source import RegistrySource
        out = {}
        for engine in ("transformers", "awq"):
            ref = RegistrySource("PARTITION", engine=engine).resolve()
            out[engine] = {"version": ref.version, "path": str(ref.path), "sha": sha256_tree(ref.path),
                           "recorded": ref.sha256, "catalogue": str(ref.catalogue)}
        print(json.dumps(out))
        """
    ).replace("PARTITION", PART)
    env = _client_env(scenario.server.tracking_uri, tmp_path)
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for engine, kind in (("transformers", "merged"), ("awq", "awq")):
        assert got[engine]["version"] == scenario.v1
        assert got[engine]["sha"] == got[engine]["recorded"] == scenario.v1_sha[kind]
        assert got[engine]["sha"] != scenario.rerun_sha[kind]
        assert Path(got[engine]["path"]).is_relative_to(tmp_path / "other-host-cache")
    assert sha256_tree(got["transformers"]["catalogue"]) == scenario.v1_sha["catalogue_file"]


def test_litserve_with_only_the_tracking_uri_answers(scenario: Scenario, tmp_path: Path) -> None:
    from pumpl_serving.testing import running_server

    env = _client_env(scenario.server.tracking_uri, tmp_path)
    args = ["--partition", PART, "--threads", "1", "--poll-interval", "0", "--max-batch-size", "1"]
    with (
        running_server(args, log_path=tmp_path / "serve.log", env=env, health_timeout=180) as srv,
        srv.client() as c,
    ):
        info = c.get("/info").json()
        assert info["model"]["version"] == scenario.v1 and info["model"]["source"] == "registry"
        assert sha256_tree(info["model_path"]) == scenario.v1_sha["merged"]
        r = c.post("/generate", json={"prompt": "Plan my week", "max_tokens": 8, "temperature": 0.0})
        assert r.status_code == 200, r.text
        assert r.json()["model"]["version"] == scenario.v1


def test_tampered_missing_and_unreachable_are_refused(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from pumpl_serving.model_source import ModelSourceError, RegistrySource

    uri = scenario.server.tracking_uri
    reg = scenario.registry
    reg.client.set_registered_model_alias(NAME, "candidate", scenario.v2)
    v2 = reg.get_version(PART, scenario.v2)
    # Someone with bucket access rewrites one of version 2's files behind MLflow's back.
    s3 = boto3.client("s3", endpoint_url=scenario.server.env["MLFLOW_S3_ENDPOINT_URL"], **_aws())
    prefix = "mlflow/"
    hits = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=scenario.server.bucket, Prefix=prefix)
        for o in page.get("Contents", [])
        if o["Key"].endswith(f"{v2.run_id}/artifacts/merged/config.json")
    ]
    assert len(hits) == 1, hits
    s3.put_object(Bucket=scenario.server.bucket, Key=hits[0], Body=b'{"model_type": "llama", "tampered": 1}')
    cache = str(tmp_path / "cache")
    with pytest.raises(
        ModelSourceError, match=rf"{NAME} version {scenario.v2}: downloaded merged files hash"
    ):
        RegistrySource(PART, alias="candidate", tracking_uri=uri, cache_dir=cache).resolve()
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing half-downloaded is left to serve
    with pytest.raises(ModelSourceError, match=r"no version of 'pumpl-smollm2-135m' has alias 'nope'"):
        RegistrySource(PART, alias="nope", tracking_uri=uri, cache_dir=cache).resolve()
    dead = f"http://user:s3cret@127.0.0.1:{free_port()}"  # pragma: allowlist secret
    with pytest.raises(
        ModelSourceError, match=r"tracking server http://127\.0\.0\.1:\d+ is unreachable"
    ) as err:
        RegistrySource(PART, tracking_uri=dead, cache_dir=cache).resolve()
    assert "s3cret" not in str(err.value)


def _aws() -> dict[str, str]:
    return {
        "aws_access_key_id": DUMMY_AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": DUMMY_AWS["AWS_DEFAULT_REGION"],
    }
