"""The whole graph for smollm2-135m on the real model, end to end (slow; CI runs it after the main job).

If the main job (`bash scripts/main.sh`) already materialized the graph in this checkout, the test checks
its results; otherwise it runs the same `dagster asset materialize` itself. Then it serves the registry's
champion over HTTP and asks for a plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pumpl_assets.core.schemas import RequestSpec, WorkoutPlanResponse

REPO = Path(__file__).resolve().parents[1]
PARTITION = "smollm2-135m"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def main_job_env() -> dict[str, str]:
    env = {
        **os.environ,
        "DAGSTER_HOME": os.environ.get("PUMPL_E2E_DAGSTER_HOME", str(REPO / "dagster_home")),
        "PUMPL_DATA_ROOT": os.environ.get("PUMPL_DATA_ROOT", str(REPO / "data")),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    artifacts = Path(env["PUMPL_DATA_ROOT"]) / "artifacts" / PARTITION
    done = (artifacts / "registry_entry" / "entry.json").is_file() or (
        artifacts / "awq_model" / "model"
    ).is_dir()
    if not done:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-m",
                "pumpl_assets.definitions",
                "--select",
                "*",
                "--partition",
                PARTITION,
            ],
            cwd=REPO,
            env=env,
            check=True,
            timeout=3600,
        )
    return env


def test_every_asset_materialized_and_every_gate_passed(main_job_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pumpl_assets.report", "--partition", PARTITION],
        cwd=REPO,
        env=main_job_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    from pumpl_assets.report import ASSETS

    assert out.stdout.count("| yes |") == len(ASSETS)
    assert "FAIL" not in out.stdout


def test_registry_champion_points_at_the_awq_model(
    main_job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUMPL_DATA_ROOT", main_job_env["PUMPL_DATA_ROOT"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pumpl_assets.core.registry import Registry

    registry = Registry()
    champ = registry.get_champion(PARTITION)
    assert champ is not None
    assert set(champ.sha256) >= {"merged", "awq", "gguf", "catalogue"} and "merged_path" not in champ.tags
    awq = registry.download_model(champ, "awq")  # the version's own hash-checked copy
    assert (awq / "config.json").is_file()
    assert champ.tags.get("gates_passed") == "true"
    assert champ.tags.get("dagster.run_id")
    from pumpl_assets.core.catalogue import get_spec

    gates = get_spec(PARTITION).gates
    sv_threshold = (
        gates.provisional_schema_valid
        if gates.provisional_schema_valid is not None
        else gates.min_schema_valid
    )
    assert float(champ.metrics["adapter.unconstrained.schema_valid"]) >= sv_threshold - 1e-9
    from pumpl_assets.core.gates import served_adherence_threshold

    threshold, _ = served_adherence_threshold(get_spec(PARTITION).gates)
    assert float(champ.metrics["adapter.served.adherence"]) >= threshold - 1e-9
    assert float(champ.metrics["adapter.served.plan_safety"]) == 1.0
    cfg = json.loads((awq / "config.json").read_text())
    assert "quantization_config" in cfg  # compressed-tensors AWQ


@pytest.mark.parametrize("engine", ["awq", "auto"])
def test_champion_serves_a_valid_adherent_plan_over_http(
    main_job_env: dict[str, str], tmp_path: Path, engine: str
) -> None:
    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_assets.core.prompts import request_to_prompt
    from pumpl_assets.core.validate import adherence
    from pumpl_serving.testing import running_server

    req = RequestSpec(
        goal="hypertrophy", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3
    )
    env = {k: main_job_env[k] for k in ("PUMPL_DATA_ROOT", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    with (
        running_server(
            ["--partition", PARTITION, "--engine", engine, "--poll-interval", "0", "--timeout", "600"],
            log_path=tmp_path / "serve.log",
            env=env,
            health_timeout=600,
        ) as server,
        server.client(timeout=900) as client,
    ):
        info = client.get("/info").json()
        assert (
            info["model"]["alias"] == "champion"
            or info.get("alias") == "champion"
            or "champion" in json.dumps(info)
        )
        if engine == "auto":  # the default on a CPU box: the version's own GGUF copy, decoded by llama.cpp
            assert '"engine": "llamacpp"' in json.dumps(info), info
        r = client.post(
            "/generate", json={"prompt": request_to_prompt(req), "max_tokens": 448, "temperature": 0}
        )
        assert r.status_code == 200, r.text
        body = r.json()
    plan = WorkoutPlanResponse.model_validate(body["plan"])
    cat = ExerciseCatalogue.from_parquet(
        Path(env["PUMPL_DATA_ROOT"]) / "artifacts" / PARTITION / "raw" / "exercises.parquet"
    )
    a = adherence(req, plan, cat)
    # What the served grammar guarantees (names from the request's allowed pool) must hold on the wire.
    assert all(a.checks[c] for c in ("catalogue", "equipment", "level", "safety")), a
