"""The code location loads, and its shape is what the product promises."""

from __future__ import annotations

import itertools

import dagster as dg
import pytest

from pumpl_assets.core.catalogue import PARTITION_KEYS

EXPECTED = [
    "raw",
    "distilled",
    "validated",
    "merged",
    "data_profile",
    "split",
    "lora_adapter",
    "merged_model",
    "eval_report",
    "awq_model",
    "registry_entry",
]
# Siblings after eval_report: each quantizes the merged model and is compared with eval_report's rows.
SIBLINGS = {"gguf_model": ("merged_model", "eval_report")}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from pumpl_assets.definitions import defs as build

    return build()


@pytest.mark.unit
def test_every_asset_present_and_shares_one_partitions_definition(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED) | set(SIBLINGS)
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.partitions_def is not None
        assert list(node.partitions_def.get_partition_keys()) == PARTITION_KEYS
        assert node.code_version, f"{key} has no code_version"


@pytest.mark.unit
def test_lineage_is_the_documented_chain(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    for up, down in itertools.pairwise(EXPECTED):
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(down)).parent_keys}
        assert up in parents, f"{down} should depend on {up}; parents={parents}"
    for sibling, ups in SIBLINGS.items():
        assert set(ups) <= {k.to_user_string() for k in graph.get(dg.AssetKey(sibling)).parent_keys}
        assert sibling in {k.to_user_string() for k in graph.get(dg.AssetKey("registry_entry")).parent_keys}


@pytest.mark.unit
def test_every_check_is_blocking_and_every_gated_asset_has_checks(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    checks = list(graph.asset_check_keys)
    assert len(checks) >= 20
    by_asset: dict[str, int] = {}
    for ck in checks:
        spec = graph.get_check_spec(ck)
        assert spec.blocking, f"{ck} is not blocking"
        by_asset[ck.asset_key.to_user_string()] = by_asset.get(ck.asset_key.to_user_string(), 0) + 1
    assert set(by_asset) == (set(EXPECTED) | set(SIBLINGS)) - {"registry_entry"}


@pytest.mark.unit
def test_gpu_steps_use_the_gpu_pool(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()}
    for name in ("lora_adapter", "eval_report", "awq_model"):
        assert "gpu" in (pools[name] or set()), pools[name]


@pytest.mark.unit
def test_job_sensor_and_resources(defs: dg.Definitions) -> None:
    assert defs.resolve_job_def("full_graph") is not None
    assert defs.resolve_sensor_def("raw_data_sensor") is not None
    assert {"mlflow", "teacher"} <= set(defs.resources or {})


@pytest.mark.unit
def test_code_version_tracks_recipe_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed recipe parameter changes the lora_adapter code version (→ unsynced in the UI)."""
    from pumpl_assets.common import code_version
    from pumpl_assets.core.catalogue import CATALOGUE

    recipes = {k: v.recipe.model_dump() for k, v in CATALOGUE.items()}
    before = code_version("lora-1", recipes)
    recipes["smollm2-135m"]["learning_rate"] = 1.0
    assert code_version("lora-1", recipes) != before
    assert code_version("lora-1", {k: v.recipe.model_dump() for k, v in CATALOGUE.items()}) == before
