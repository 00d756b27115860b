"""The real SmolLM2-135M behind the real server: a constrained plan is schema-valid and request-aware."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.grammar import allowed_exercise_names
from pumpl_assets.core.prompts import request_to_prompt
from pumpl_assets.core.schemas import RequestSpec, parse_plan
from pumpl_serving.testing import running_server


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_serves_schema_valid_constrained_plan(smollm2_dir: Path, tmp_path: Path):
    spec = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3)
    with (
        running_server(
            ["--model-path", str(smollm2_dir), "--threads", "2", "--poll-interval", "0", "--timeout", "900"],
            log_path=tmp_path / "server.log",
            env={"PUMPL_DATA_ROOT": str(tmp_path / "data")},
        ) as srv,
        srv.client(timeout=900) as c,
    ):
        info = c.get("/info").json()
        assert Path(info["model_path"]) == smollm2_dir.resolve()
        latencies = []
        for seed in (0,):
            t0 = time.perf_counter()
            r = c.post(
                "/generate",
                json={
                    "prompt": request_to_prompt(spec),
                    "max_tokens": 1024,
                    "temperature": 0.7,
                    "seed": seed,
                },
            )
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            assert r.headers["x-constrained"] == "true" and r.headers["x-finish-reason"] == "stop"
            body = r.json()
            plan = parse_plan(body["text"])
            assert body["plan"] is not None
            cat_path = info["catalogue"]
            if cat_path:
                cat = (
                    ExerciseCatalogue.from_parquet(cat_path)
                    if cat_path.endswith(".parquet")
                    else ExerciseCatalogue.from_json_file(cat_path)
                )
                allowed = set(allowed_exercise_names(spec, cat))
                assert {e.name for e in plan.all_exercises()} <= allowed
            tokens = body["usage"]["completion_tokens"]
            print(
                f"SmolLM2 constrained plan: {tokens} tokens in {latencies[-1]:.2f} s "
                f"(server latency_ms={body['latency_ms']:.0f})"
            )
        print(f"SmolLM2 median end-to-end latency: {statistics.median(latencies):.2f} s (2 shared CPU cores)")
        assert c.get("/health").status_code == 200
