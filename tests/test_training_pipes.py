"""Training through Dagster Pipes: the gate arithmetic and job building (no Dagster), the launcher's
settings (secrets never forwarded, clear errors), and a real materialization of ``lora_adapter``
through ``PipesSubprocessClient`` on the tiny model (metadata, checks and the adapter come back)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pumpl_assets.core.training.base import TrainResult
from pumpl_assets.core.training.gates import head_tail_loss, training_gates
from pumpl_assets.core.training.job import apply_overrides, build_job


def _result(tmp_path: Path, losses: list[float], total: int | None = None) -> TrainResult:
    return TrainResult(
        adapter_dir=tmp_path / "adapter",
        steps=len(losses),
        resumed_from_step=None,
        train_loss=[(i + 1, v) for i, v in enumerate(losses)],
        val_loss=None,
        tokens_per_s=1.0,
        peak_rss_mb=1.0,
        wall_s=1.0,
        backend="peft",
        train_tokens=10,
        total_steps=len(losses) if total is None else total,
    )


@pytest.mark.unit
def test_gate_arithmetic(tmp_path: Path) -> None:
    assert head_tail_loss([5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]) == (4.5, 0.75)
    assert all(math.isnan(x) for x in head_tail_loss([]))
    gates = {g.name: g for g in training_gates(_result(tmp_path, [3.0, 2.0, 1.0]), (True, "ok"))}
    assert list(gates) == ["trained", "loss_improved", "adapter_integrity"]
    assert gates["trained"].passed and gates["trained"].metadata == {"steps": 3}
    assert gates["loss_improved"].passed and gates["loss_improved"].description == "loss 3.000 → 1.000"
    assert gates["adapter_integrity"].passed
    bad = {g.name: g for g in training_gates(_result(tmp_path, [], total=0), (False, "x is missing"))}
    assert not bad["trained"].passed and not bad["loss_improved"].passed
    assert bad["adapter_integrity"].description == "x is missing"
    rising = {g.name: g for g in training_gates(_result(tmp_path, [1.0, 2.0, float("nan")]), (True, ""))}
    assert not rising["loss_improved"].passed
    # A resumed run counts the steps before the kill.
    resumed = training_gates(_result(tmp_path, [2.0, 1.0], total=16), (True, ""))[0]
    assert resumed.passed and resumed.description == "16 optimizer steps (2 in this run)"


@pytest.mark.unit
def test_build_job_references_the_split_through_the_artifact_contract(tmp_path: Path) -> None:
    from pumpl_assets.core import artifacts as A
    from pumpl_assets.core.training.job import local_out_dir, publish_outputs

    store = A.ArtifactStore(str(tmp_path / "art"))
    kwargs = {"base_model": "m", "cfg": {}, "out_dir": tmp_path, "style": "s", "system_prompt": None}
    with pytest.raises(FileNotFoundError, match=r"split/train\.parquet is missing"):
        build_job(partition="p1", device="cpu", store=store, **kwargs)  # type: ignore[arg-type]
    for name in ("train", "val"):
        store.write_bytes("p1", A.ASSET_SPLIT, A.split_file(name), data=b"x")
    job = build_job(
        base_model=tmp_path / "m",
        cfg={"max_steps": 2},
        partition="p1",
        out_dir=tmp_path / "o",
        style="chat_template",
        system_prompt="S",
        device="cpu",
        store=store,
    )
    assert job["artifact_root"] == store.root and job["partition"] == "p1"
    assert "train" not in job and "split_dir" not in job  # data by reference, never inline
    assert json.loads(json.dumps(job)) == job
    # On a local root the trainer works in the artifact folder itself; publishing is a no-op.
    assert local_out_dir("p1", store) == store.local_path("p1", A.ASSET_LORA_ADAPTER)
    assert publish_outputs(job, tmp_path / "o" / "adapter") == str(tmp_path / "o" / "adapter")
    assert apply_overrides({"a": 1, "b": 2}, {"a": None, "b": 3}) == {"a": 1, "b": 3}


@pytest.mark.unit
def test_run_config_decision_weight_reaches_the_recipe_or_names_the_conflict() -> None:
    from pumpl_assets.common import TrainConfig
    from pumpl_assets.core.catalogue import get_spec
    from pumpl_assets.core.schemas import TrainingConfig

    recipe = get_spec("smollm2-135m").recipe
    assert recipe.decision_weight == 1.0
    weighted = TrainingConfig.model_validate(
        apply_overrides(recipe.model_dump(), TrainConfig(decision_weight=4.0).recipe_overrides())
    )
    assert weighted.decision_weight == 4.0 and weighted.max_steps == recipe.max_steps
    with pytest.raises(ValueError, match="needs loop='plain'"):
        TrainingConfig.model_validate(
            apply_overrides(
                recipe.model_dump(), TrainConfig(loop="sft_trainer", decision_weight=4.0).recipe_overrides()
            )
        )
    with pytest.raises(Exception, match="decision_weight"):
        TrainConfig(decision_weight=0.5)


@pytest.mark.unit
def test_launcher_settings_never_forward_secrets_and_fail_clearly() -> None:
    import dagster as dg

    from pumpl_assets.common import TrainConfig
    from pumpl_assets.training_launch import (
        REPO_ROOT,
        forwarded_env,
        ray_submit_params,
        redact_address,
        resolve_ray_address,
    )

    environ = {
        "PUMPL_DATA_ROOT": "/d",
        "PUMPL_SERVE_TOKEN": "s3cret",
        "ANTHROPIC_API_KEY": "sk-x",
        "AWS_SECRET_ACCESS_KEY": "k",
        "HF_TOKEN": "hf_x",
        "DAGSTER_HOME": "/h",
        "PYTHONPATH": "/extra",
        "HOME": "/root",
    }
    env = forwarded_env(environ)
    assert env["PUMPL_DATA_ROOT"] == "/d" and env["DAGSTER_HOME"] == "/h"
    assert env["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/extra"]
    assert "s3cret" not in json.dumps(env) and "sk-x" not in json.dumps(env) and "hf_x" not in json.dumps(env)
    params = ray_submit_params(num_gpus=1, submission_id="pumpl-x", environ=environ)
    assert params["entrypoint"].endswith("-m pumpl_assets.core.training.run --pipes")
    assert params["entrypoint_num_gpus"] == 1 and params["submission_id"] == "pumpl-x"
    assert "entrypoint_num_gpus" not in ray_submit_params(num_gpus=0, submission_id="y", environ=environ)
    with pytest.raises(dg.Failure, match="PUMPL_RAY_ADDRESS"):
        resolve_ray_address(None, {})
    assert resolve_ray_address(None, {"PUMPL_RAY_ADDRESS": "127.0.0.1:8265"}) == "http://127.0.0.1:8265"
    assert redact_address("http://u:pw@10.0.0.1:8265") == "http://***@10.0.0.1:8265"
    assert TrainConfig().launcher == "subprocess"
    with pytest.raises(Exception, match="launcher"):
        TrainConfig(launcher="k8s")  # type: ignore[arg-type]


@pytest.mark.unit
def test_ray_launcher_without_ray_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import dagster as dg

    from pumpl_assets.training_launch import require_ray

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "dagster_ray" else real(n, *a)
    )
    with pytest.raises(dg.Failure, match=r"launcher 'ray' needs dagster_ray installed.*dagster-ray==0\.4\.8"):
        require_ray()


@pytest.mark.unit
def test_ray_launcher_names_an_unreachable_dashboard() -> None:
    pytest.importorskip("ray")
    import dagster as dg

    from pumpl_assets.training_launch import ray_job_client

    with pytest.raises(dg.Failure, match=r"Ray dashboard at http://127\.0\.0\.1:9 is unreachable"):
        ray_job_client("http://127.0.0.1:9")


@pytest.mark.integration
def test_lora_adapter_trains_through_pipes_subprocess(
    pumpl_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pumpl_assets.common import TrainConfig
    from tests.training_helpers import check_outcomes, lora_metadata, materialize_lora, write_tiny_split

    monkeypatch.setenv("PUMPL_MODEL_PATH_SMOLLM2_135M", str(tiny_model_dir))
    monkeypatch.setenv("PUMPL_TORCH_THREADS", "1")
    write_tiny_split()
    result, instance = materialize_lora(TrainConfig(max_steps=4, learning_rate=5e-3, checkpoint_every=2))
    assert result.success
    md = lora_metadata(result)
    assert md["launcher"] == "subprocess" and md["backend"] == "peft"
    # The training child runs on tcmalloc where the machine has it, else keeps glibc's freed memory
    # (core/heap.py), and ran on the thread count it was given.
    from pumpl_assets.core import heap

    on_tcmalloc = heap.find_tcmalloc() is not None
    assert md["allocator"] == ("tcmalloc" if on_tcmalloc else "glibc-retained")
    assert md["retained_heap"] is (not on_tcmalloc) and md["threads"] == 1
    assert md["steps"] == 4 and md["steps_this_run"] == 4 and md["resumed_from_step"] == -1
    losses = md["train_loss"]
    assert [s for s, _ in losses] == [1, 2, 3, 4] and all(math.isfinite(v) for _, v in losses)
    assert md["final_train_loss"] == losses[-1][1]
    adapter = Path(md["adapter_dir"])
    assert (adapter / "adapter_model.safetensors").is_file()
    assert md["adapter_uri"] == str(adapter)  # written through the artifact contract (local root)
    checks = check_outcomes(result)  # reported by the training process through Pipes
    assert checks["trained"] is True and checks["adapter_integrity"] is True
    head, tail = head_tail_loss([v for _, v in losses])
    assert checks["loss_improved"] is (tail < head)
    gates = json.loads((adapter.parent / "gates.json").read_text())
    assert gates == checks
    # Step lines were streamed to Dagster's event log as the process trained.
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("step 4/4 loss" in m for m in messages), messages[-20:]
    ev = result.get_asset_materialization_events()[-1]
    assert ev.materialization.tags and "dagster/data_version" in ev.materialization.tags


@pytest.mark.integration
def test_a_failing_training_process_fails_the_asset_with_its_reason(
    pumpl_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polars as pl

    from pumpl_assets.common import TrainConfig
    from tests.training_helpers import materialize_lora, write_tiny_split

    monkeypatch.setenv("PUMPL_MODEL_PATH_SMOLLM2_135M", str(tiny_model_dir))
    monkeypatch.setenv("PUMPL_TORCH_THREADS", "1")
    split = write_tiny_split()
    train = pl.read_parquet(split / "train.parquet")
    # Every answer far longer than the recipe's seq_len: the child refuses to train.
    train.with_columns(pl.col("plan_json") + " x" * 3000).write_parquet(split / "train.parquet")
    result, _ = materialize_lora(TrainConfig(max_steps=2))
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None and "training failed" in error.message
    assert "no usable training examples" in error.message, error.message[-2000:]
    assert not result.get_asset_materialization_events()


@pytest.mark.unit
def test_pipes_reader_yields_whole_lines_only(tmp_path: Path) -> None:
    """A message the training process is still appending is not read as a line (the stock tail yields the
    fragment, json.loads fails and the reader thread dies: CI 2026-12-01, step 165)."""
    import threading
    import time

    from dagster._utils import tail_file

    from pumpl_assets.training_launch import tail_complete_lines

    path = tmp_path / "messages"
    path.write_text('{"a": 1}\n{"b": ', encoding="utf-8")
    assert list(tail_file(str(path), lambda: True))[-1] == '{"b": '  # what the stock reader hands json.loads
    stop = threading.Event()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(tail_complete_lines(path, stop.is_set, poll_s=0.001)))
    reader.start()
    time.sleep(0.2)
    assert got == ['{"a": 1}\n']
    with open(path, "a", encoding="utf-8") as f:
        f.write('2}\n{"c": 3}\n{"d": ')  # the writer then dies mid-message
    time.sleep(0.2)
    stop.set()
    reader.join(5)
    assert not reader.is_alive()
    assert [json.loads(line) for line in got] == [{"a": 1}, {"b": 2}, {"c": 3}]
