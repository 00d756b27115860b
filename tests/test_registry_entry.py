"""The registry_entry asset alone (upstream folders written by hand): thin wiring over register_candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from pumpl_assets.core import artifacts as A
from pumpl_assets.core import settings
from pumpl_assets.core.io import sha256_tree
from pumpl_assets.core.registry import Registry
from pumpl_assets.defs.model import registry_entry
from pumpl_assets.defs.resources import MlflowResource

PART = "smollm2-135m"
GATED = ("split", "lora_adapter", "merged_model", "eval_report", "awq_model", "gguf_model")


def _upstream(tiny_model_dir: Path, marker: str, *, failing: str | None = None) -> dict[str, Path]:
    out = {}
    for asset in (A.ASSET_MERGED_MODEL, A.ASSET_AWQ_MODEL, A.ASSET_GGUF_MODEL):
        d = settings.artifacts_dir(PART, asset) / A.DIR_MODEL
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(tiny_model_dir, d)
        (d / "marker.txt").write_text(f"{asset}-{marker}")
        out[asset] = d
    for asset in GATED:
        d = settings.artifacts_dir(PART, asset)
        d.mkdir(parents=True, exist_ok=True)
        (d / A.FILE_GATES).write_text(json.dumps({"ok": asset != failing}))
    (settings.artifacts_dir(PART, A.ASSET_EVAL_REPORT) / A.FILE_SUMMARY).write_text('{"schema_valid": 0.97}')
    cat = settings.artifacts_dir(PART, A.ASSET_RAW) / A.FILE_EXERCISES
    cat.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"name": ["Push-up"]}).write_parquet(cat)
    return out


def _materialize(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [registry_entry], partition_key=PART, instance=instance, resources={"mlflow": MlflowResource()}
    )


@pytest.mark.integration
def test_registry_entry_registers_own_copies_and_gates_the_alias(
    pumpl_env: Path, tiny_model_dir: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = _upstream(tiny_model_dir, "a")
    sha_a = {k: sha256_tree(v) for k, v in first.items()}
    r1 = _materialize(instance)
    assert r1.success
    md = r1.asset_materializations_for_node("registry_entry")[0].metadata
    assert md["promoted_to_champion"].value is True and md["version"].value == "1"
    assert md["sha256.merged"].value == sha_a[A.ASSET_MERGED_MODEL][:16]
    entry = json.loads((settings.artifacts_dir(PART, A.ASSET_REGISTRY_ENTRY) / A.FILE_ENTRY).read_text())
    assert entry["promoted"] is True and entry["sha256"]["awq"] == sha_a[A.ASSET_AWQ_MODEL]
    assert entry["sha256"]["gguf"] == sha_a[A.ASSET_GGUF_MODEL]

    # A re-run whose AWQ gate failed: registered, not crowned; the champion's files are untouched.
    _upstream(tiny_model_dir, "b", failing="awq_model")
    r2 = _materialize(instance)
    assert r2.success
    md2 = r2.asset_materializations_for_node("registry_entry")[0].metadata
    assert md2["promoted_to_champion"].value is False and md2["champion_version"].value == "1"
    reg = Registry()
    champ = reg.get_champion(PART)
    assert champ is not None and champ.version == "1"
    assert "merged_path" not in champ.tags and "awq_path" not in champ.tags
    assert champ.tags["dagster.run_id"] == r1.run_id
    assert reg.client.get_run(champ.run_id).data.tags["dagster.run_id"] == r1.run_id  # type: ignore[arg-type]
    served = reg.download_model(champ, "merged")
    assert sha256_tree(served) == sha_a[A.ASSET_MERGED_MODEL]
    assert (served / "marker.txt").read_text() == "merged_model-a"
    assert reg.get_version(PART, "2").tags["gates_passed"] == "false"
