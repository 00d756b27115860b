"""The model half wired in Dagster, on a tiny random model (fast): gates fail on a model that is bad
on merit, block everything downstream, and the registry's champion alias never moves for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pumpl_assets.common import DistillConfig, EvalConfig, QuantizeConfig, TrainConfig
from pumpl_assets.core import settings
from tests.pipeline_helpers import PARTITION, check_outcomes, materialized, run

DATA_HALF = ["raw", "distilled", "validated", "merged", "data_profile", "split"]
SMALL_EVAL = EvalConfig(limit=4, max_new_tokens=16, batch_size=4)


@pytest.fixture()
def tiny_partition(pumpl_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The smollm2-135m partition, pointed at a tiny random Llama with SmolLM2's tokenizer.
    monkeypatch.setenv("PUMPL_MODEL_PATH_SMOLLM2_135M", str(tiny_model_dir))
    return tiny_model_dir


@pytest.mark.integration
def test_zero_step_adapter_fails_its_gate_and_blocks_downstream(tiny_partition: Path) -> None:
    result, _ = run(
        [*DATA_HALF, "lora_adapter", "merged_model", "eval_report", "awq_model", "registry_entry"],
        ops={"distilled": DistillConfig(n_examples=80), "lora_adapter": TrainConfig(max_steps=0)},
    )
    assert not result.success
    checks = check_outcomes(result)
    assert checks["lora_adapter:trained"] is False
    done = materialized(result)
    assert "lora_adapter" in done
    assert not done & {"eval_report", "merged_model", "awq_model", "registry_entry"}


@pytest.mark.integration
def test_bad_model_fails_eval_gates_and_champion_never_moves(tiny_partition: Path) -> None:
    from pumpl_assets.core.registry import Registry

    ops = {
        "distilled": DistillConfig(n_examples=80),
        "lora_adapter": TrainConfig(max_steps=4, learning_rate=5e-3),
        "eval_report": SMALL_EVAL,
        "awq_model": QuantizeConfig(n_calibration=8),
    }
    result, instance = run(
        [*DATA_HALF, "lora_adapter", "merged_model", "eval_report", "awq_model", "registry_entry"], ops=ops
    )
    assert not result.success
    checks = check_outcomes(result)
    # A random model writes no valid plan: the quality gate fails on merit.
    assert checks["eval_report:schema_valid"] is False
    # ... and so does served safety (16 tokens never close a plan: nothing safe to serve). Served
    # adherence fails on merit wherever its threshold is above 0; this partition's PROVISIONAL figure
    # (catalogue.py) is 0, so there the gate passes and says it is provisional.
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.gates import served_adherence_threshold

    threshold, provisional = served_adherence_threshold(get_spec(PARTITION).gates)
    assert checks["eval_report:served_adherence"] is (threshold <= 0.0)
    assert provisional or threshold > 0.0
    assert checks["eval_report:served_safety"] is False
    assert {"eval_report:better_than_base", "eval_report:not_worse_than_champion"} <= set(checks)
    done = materialized(result)
    # The merged model is what eval_report scores, so it exists; nothing after the failed gate does.
    assert {"lora_adapter", "merged_model", "eval_report"} <= done
    assert not done & {"awq_model", "registry_entry"}
    assert check_outcomes(result)["merged_model:parity"] is True
    eval_dir = settings.artifacts_dir(PARTITION, "eval_report")
    assert (eval_dir / "summary.json").is_file()

    # Forcing the rest of the graph anyway registers a version, but the alias does not move:
    # registry_entry re-reads every gate and promotes only when all passed.
    forced, _ = run(["awq_model", "gguf_model"], ops={"awq_model": ops["awq_model"]}, instance=instance)
    assert {"awq_model", "gguf_model"} <= materialized(forced)
    fchecks = check_outcomes(forced)
    # The AWQ model was decoded on exactly eval_report's rows (4, as SMALL_EVAL limits them).
    assert "awq_model:schema_valid_drop" in fchecks
    (awq_mat,) = [
        e.materialization
        for e in forced.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "awq_model"
    ]
    assert awq_mat.metadata["n_eval"].value == SMALL_EVAL.limit  # type: ignore[attr-defined]
    # The tiny model's (unquantized, tied) embedding dominates its size: the AWQ size gate fails on merit.
    assert fchecks["awq_model:size_ratio"] is False
    # The GGUF quants went through llama.cpp on the same 4 served rows; each gate reports every quant.
    (gguf_mat,) = [
        e.materialization
        for e in forced.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "gguf_model"
    ]
    assert gguf_mat.metadata["n_eval"].value == SMALL_EVAL.limit  # type: ignore[attr-defined]
    assert {
        "gguf_model:size_ratio",
        "gguf_model:served_adherence_drop",
        "gguf_model:schema_valid_drop",
    } <= set(fchecks)
    gguf_dir = settings.artifacts_dir(PARTITION, "gguf_model") / "model"
    assert sorted(f.name for f in gguf_dir.glob("*.gguf")) == ["model-q4_k_m.gguf", "model-q8_0.gguf"]
    entry, _ = run(["registry_entry"], instance=instance)
    assert entry.success and "registry_entry" in materialized(entry)
    registry = Registry()
    assert registry.get_champion(PARTITION) is None
    (version,) = registry.list_versions(PARTITION)
    assert set(version.sha256) >= {"merged", "awq", "gguf"}
    awq_dir = settings.artifacts_dir(PARTITION, "awq_model") / "model"
    assert (awq_dir / "config.json").is_file()
