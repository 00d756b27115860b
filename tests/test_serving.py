"""The real LitServe server over HTTP (subprocess, own process group), on the tiny model.

One module-scoped server answers most tests; the registry test starts its own server from a
tmp sqlite MLflow registry and moves the alias under it.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.finalize import finalize_plan
from pumpl_assets.core.grammar import allowed_exercise_names
from pumpl_assets.core.io import sha256_tree
from pumpl_assets.core.prompts import request_to_prompt
from pumpl_assets.core.schemas import RequestSpec, WorkoutPlanResponse, parse_plan
from pumpl_assets.core.validate import validate_example
from pumpl_serving.testing import REPO_ROOT, ServerProcess, start_server

TOKEN = "test-token-7f3a9c"
SECRET_MARKER = "SECRET-MARKER-93d1"


def _catalogue_for(info: dict[str, Any]) -> ExerciseCatalogue | None:
    path = info.get("catalogue")
    if not path:
        return None
    return (
        ExerciseCatalogue.from_parquet(path)
        if path.endswith(".parquet")
        else ExerciseCatalogue.from_json_file(path)
    )


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve")
    srv = start_server(
        [
            "--model-path",
            str(tiny_model_dir),
            "--threads",
            "1",
            "--max-batch-size",
            "8",
            "--batch-timeout",
            "0.5",
            "--max-queue",
            "64",
            "--timeout",
            "120",
            "--poll-interval",
            "0",
        ],
        log_path=tmp / "server.log",
        env={"PUMPL_DATA_ROOT": str(tmp / "data"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"},
        token=TOKEN,
    )
    yield srv
    srv.stop()
    assert srv.proc.poll() is not None
    assert not srv.group_alive(), "LitServe processes outlived the server"


@pytest.fixture(scope="module")
def http(server: ServerProcess):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def info(http: httpx.Client) -> dict[str, Any]:
    r = http.get("/info")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.integration
def test_health_and_info(
    server: ServerProcess, http: httpx.Client, info: dict[str, Any], tiny_model_dir: Path
):
    assert httpx.get(f"{server.url}/health").status_code == 200  # open without the token
    assert info["model"]["name"] == tiny_model_dir.name
    assert info["model"]["version"] is None and info["model"]["source"] == "path"
    assert info["engine"] == "transformers"
    assert info["quantization"] is None
    assert Path(info["model_path"]) == tiny_model_dir.resolve()
    assert info["config"]["host"] == "127.0.0.1"
    assert info["config"]["auth_enabled"] is True
    assert TOKEN not in json.dumps(info)
    assert {w["api"] for w in info["workers"]} == {"generate", "chat"}


@pytest.mark.integration
def test_generate_raw_free_form(http: httpx.Client, tiny_model_dir: Path):
    """``raw: true``: the prompt goes to the model as typed, no request is read, nothing constrains it."""
    raw = {"prompt": "Say hello", "max_tokens": 12, "temperature": 0.0, "raw": True}
    r = http.post("/generate", json=raw)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"text", "plan", "usage", "model", "latency_ms", "request", "adjustments"}
    assert body["request"] is None
    assert isinstance(body["text"], str)
    assert body["plan"] is None  # a free-form answer of a random model is no plan
    u = body["usage"]
    assert 1 <= u["completion_tokens"] <= 12 and u["prompt_tokens"] > 5
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert body["model"] == {"name": tiny_model_dir.name, "version": None, "alias": None}
    assert body["latency_ms"] > 0
    assert r.headers["x-constrained"] == "false"
    # The request's system prompt replaces the default one in the rendered prompt.
    sys_long = http.post(
        "/generate", json={**raw, "max_tokens": 2, "system_prompt": "You are terse. " * 20}
    ).json()
    assert sys_long["usage"]["prompt_tokens"] > u["prompt_tokens"] + 40
    # Greedy is deterministic: the same request gives the same text.
    again = http.post("/generate", json=raw).json()
    assert again["text"] == body["text"]


SPECS = [
    RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["dumbbell"], days_per_week=3),
    RequestSpec(
        goal="mobility",
        minutes=20,
        level="intermediate",
        equipment=["body only"],
        days_per_week=2,
        limitations=["knees"],
    ),
    RequestSpec(
        goal="hypertrophy", minutes=45, level="expert", equipment=["barbell", "cable"], days_per_week=4
    ),
]


@pytest.mark.integration
@pytest.mark.parametrize("i", range(len(SPECS)))
def test_constrained_plan_is_schema_valid_and_request_aware(http: httpx.Client, info: dict[str, Any], i: int):
    spec = SPECS[i]
    r = http.post(
        "/generate",
        json={"prompt": request_to_prompt(spec), "max_tokens": 2048, "temperature": 0.9, "seed": 100 + i},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-constrained"] == "true"
    assert r.headers["x-finish-reason"] == "stop"
    body = r.json()
    plan = parse_plan(body["text"])  # raises if not schema-valid: the model's own answer
    assert body["plan"] is not None and body["plan"]["title"] == plan.title
    # ``plan`` is the model's plan after the served post-step: same exercises (none added), the
    # order rule and the declared figures settled, each change said in ``adjustments``.
    cat = _catalogue_for(info)
    if cat is not None:
        finished = finalize_plan(spec, plan, cat)
        assert body["plan"] == finished.plan.model_dump(mode="json", exclude_none=True)
        assert body["adjustments"] == finished.adjustments
        out = validate_example(spec, json.dumps(body["plan"]), cat)
        assert out.adherence is not None
        failed = {c for c, ok in out.adherence.checks.items() if not ok}
        # the model's choices may leave no in-range fit (then the declared mean is off too); balance
        # and title are the model's alone (a random tiny model here)
        assert failed <= {"duration", "blocks", "focus", "declared", "balance", "title", "cooldown"}, (
            out.reasons
        )
        assert "declared" not in failed or "duration" in failed, out.reasons
        for s_model, s_done in zip(plan.sessions, finished.plan.sessions, strict=True):
            assert {e.name for e in s_done.all_exercises()} <= {e.name for e in s_model.all_exercises()}
    # The canonical layout is read exactly and said back.
    said = {k: v for k, v in body["request"].items() if k not in ("defaults_used", "evidence")}
    assert RequestSpec.model_validate(said) == spec and body["request"]["defaults_used"] == ["focus"]
    if cat is not None:
        allowed = set(allowed_exercise_names(spec, cat))
        names = {e.name for e in plan.all_exercises()}
        assert names <= allowed, names - allowed


@pytest.mark.integration
def test_a_request_without_max_tokens_gets_a_whole_plan(http: httpx.Client):
    """No ``max_tokens``: a plan request is budgeted for a whole plan, free text keeps the short default."""
    from pumpl_serving.api import DEFAULT_MAX_TOKENS, PLAN_MAX_TOKENS

    body = {"prompt": request_to_prompt(SPECS[2]), "temperature": 0.9, "seed": 7}  # a 4-day split
    default = http.post("/generate", json=body)
    assert default.status_code == 200, default.text
    assert default.headers["x-finish-reason"] == "stop"  # the grammar closed it, no budget cut it
    explicit = http.post("/generate", json={**body, "max_tokens": PLAN_MAX_TOKENS}).json()
    assert default.json()["text"] == explicit["text"]
    used = default.json()["usage"]["completion_tokens"]
    assert used > DEFAULT_MAX_TOKENS  # the former 448 default would have cut this plan mid-JSON
    raw = http.post("/generate", json={"prompt": "Say hello", "raw": True, "temperature": 0.9, "seed": 3})
    assert raw.status_code == 200, raw.text
    assert raw.json()["usage"]["completion_tokens"] <= DEFAULT_MAX_TOKENS


@pytest.mark.integration
def test_constrained_from_body_fields_and_opt_out(http: httpx.Client, info: dict[str, Any]):
    r = http.post(
        "/generate",
        json={
            "prompt": "Make me a quick plan",
            "equipment": ["kettlebells"],
            "level": "beginner",
            "max_tokens": 2048,
            "temperature": 0.7,
            "seed": 7,
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-constrained"] == "true"
    plan = parse_plan(r.json()["text"])
    cat = _catalogue_for(info)
    if cat is not None:
        req = RequestSpec(
            goal="general_fitness", minutes=30, level="beginner", equipment=["kettlebells"], days_per_week=3
        )
        assert {e.name for e in plan.all_exercises()} <= set(allowed_exercise_names(req, cat))
    said = r.json()["request"]
    assert said["equipment"] == ["body only", "kettlebells"] and said["level"] == "beginner"
    assert said["evidence"]["equipment"] == "set by the client" and "level" not in said["defaults_used"]
    off = http.post(
        "/generate", json={"prompt": request_to_prompt(SPECS[0]), "constrained": False, "max_tokens": 8}
    )
    assert off.status_code == 200 and off.headers["x-constrained"] == "false"
    assert off.json()["request"]["goal"] == SPECS[0].goal  # still read, just not constrained


@pytest.mark.integration
def test_plain_language_request_is_understood_and_said_back(http: httpx.Client, info: dict[str, Any]):
    r = http.post(
        "/generate",
        json={"prompt": "Create a 30-minute HIIT workout", "max_tokens": 2048, "temperature": 0.7, "seed": 3},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-constrained"] == "true" and r.headers["x-finish-reason"] == "stop"
    body = r.json()
    req = body["request"]
    assert (req["goal"], req["minutes"]) == ("fat_loss", 30)
    assert req["defaults_used"] == ["level", "equipment", "days_per_week", "limitations", "focus"]
    assert (req["level"], req["equipment"], req["days_per_week"]) == ("beginner", ["body only"], 3)
    assert req["evidence"] == {"goal": "hiit", "minutes": "30-minute"}
    plan = parse_plan(body["text"])
    cat = _catalogue_for(info)
    if cat is not None:
        spec = RequestSpec(
            goal="fat_loss", minutes=30, level="beginner", equipment=["body only"], days_per_week=3
        )
        assert {e.name for e in plan.all_exercises()} <= set(allowed_exercise_names(spec, cat))
    # The model saw the canonical line: the same tokens as sending that line itself.
    canon = http.post(
        "/generate",
        json={
            "prompt": request_to_prompt(RequestSpec.model_validate(rt_spec(req))),
            "max_tokens": 2048,
            "temperature": 0.7,
            "seed": 3,
        },
    ).json()
    assert canon["usage"]["prompt_tokens"] == body["usage"]["prompt_tokens"] and canon["text"] == body["text"]

    # A request that names nothing gets the defaults, said back.
    nothing = http.post("/generate", json={"prompt": "just give me something", "max_tokens": 4}).json()
    assert nothing["request"]["defaults_used"] == [
        "goal",
        "minutes",
        "level",
        "equipment",
        "days_per_week",
        "limitations",
        "focus",
    ]


def rt_spec(said: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in said.items() if k not in ("defaults_used", "evidence")}


@pytest.mark.integration
def test_client_corrects_the_understood_request(http: httpx.Client, info: dict[str, Any]):
    body = {
        "prompt": "Create a 30-minute HIIT workout",
        "request": {"minutes": 45, "equipment": ["dumbbell"], "limitations": ["knees"], "focus": "core"},
        "max_tokens": 2048,
        "temperature": 0.7,
        "seed": 11,
    }
    r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    req = r.json()["request"]
    assert req["goal"] == "fat_loss"  # read from the text
    assert (req["minutes"], req["equipment"], req["limitations"], req["focus"]) == (
        45,
        ["body only", "dumbbell"],
        ["knees"],
        "core",
    )
    assert req["defaults_used"] == ["level", "days_per_week"]
    assert req["evidence"]["minutes"] == "set by the client"
    plan = parse_plan(r.json()["text"])
    cat = _catalogue_for(info)
    if cat is not None:
        spec = RequestSpec.model_validate(rt_spec(req))
        assert {e.name for e in plan.all_exercises()} <= set(allowed_exercise_names(spec, cat))
    # A bad correction is a 422 naming the field; the body field `level` wins over the correction.
    bad = http.post("/generate", json={**body, "request": {"goal": "flying", "minutes": 500}})
    assert bad.status_code == 422
    assert "request.goal" in bad.json()["detail"] and "request.minutes" in bad.json()["detail"]
    both = http.post("/generate", json={**body, "level": "expert", "max_tokens": 4}).json()
    assert both["request"]["level"] == "expert"


@pytest.mark.integration
def test_openai_client_stream_and_non_stream(server: ServerProcess, info: dict[str, Any]):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    msgs: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello coach"}]
    full = client.chat.completions.create(model="pumpl", messages=msgs, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    assert isinstance(text, str) and text
    assert full.usage is not None and full.usage.prompt_tokens > 5 and full.usage.completion_tokens >= 1
    chunks: list[Any] = list(
        client.chat.completions.create(
            model="pumpl", messages=msgs, max_tokens=16, temperature=0, stream=True
        )
    )
    assert len(chunks) >= 2
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: stream and non-stream agree
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Every chat message is a plan request: the understood request rides in the `pumpl` extension
    # (top level of the response; top level of the first streamed chunk).
    said = full.model_extra["pumpl"]["request"]  # type: ignore[index]
    assert said["defaults_used"] == [
        "goal",
        "minutes",
        "level",
        "equipment",
        "days_per_week",
        "limitations",
        "focus",
    ]
    assert chunks[0].model_extra["pumpl"]["request"] == said  # type: ignore[index]
    # ... and with it the finished plan (None: 16 tokens are no plan) on the last message / chunk.
    assert full.model_extra["pumpl"]["plan"] is None  # type: ignore[index]
    last = [c for c in chunks if "pumpl" in (c.model_extra or {})]
    assert last[0] is chunks[0] and len(last) == 2, [c.model_extra for c in chunks]
    assert last[1].model_extra["pumpl"] == {"plan": None, "adjustments": []}  # type: ignore[index]

    # A plan request through the OpenAI endpoint is constrained too, canonical or plain language.
    plan_msgs: list[Any] = [{"role": "user", "content": request_to_prompt(SPECS[0])}]
    res = client.chat.completions.create(model="pumpl", messages=plan_msgs, max_tokens=2048, temperature=0.8)
    model_plan = parse_plan(res.choices[0].message.content or "")
    assert res.model_extra["pumpl"]["request"]["goal"] == SPECS[0].goal  # type: ignore[index]
    finished = WorkoutPlanResponse.model_validate(res.model_extra["pumpl"]["plan"])  # type: ignore[index]
    cat = _catalogue_for(info)
    assert cat is not None
    assert finished == finalize_plan(SPECS[0], model_plan, cat).plan
    hiit: list[Any] = [{"role": "user", "content": "Create a 30-minute HIIT workout"}]
    res = client.chat.completions.create(model="pumpl", messages=hiit, max_tokens=2048, temperature=0.8)
    parse_plan(res.choices[0].message.content or "")
    said = res.model_extra["pumpl"]["request"]  # type: ignore[index]
    assert (said["goal"], said["minutes"]) == ("fat_loss", 30)

    # Multi-turn: the last user message is the request; the model sees it as one canonical turn.
    turns: list[Any] = [
        *msgs,
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Make it 45 minutes of strength work with dumbbells"},
    ]
    multi = client.chat.completions.create(model="pumpl", messages=turns, max_tokens=4, temperature=0)
    said = multi.model_extra["pumpl"]["request"]  # type: ignore[index]
    assert (said["goal"], said["minutes"], said["equipment"]) == ("strength", 45, ["body only", "dumbbell"])
    assert multi.usage is not None and multi.usage.prompt_tokens > 5

    # response_format json_schema constrains to the caller's schema.
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {
                "type": "object",
                "properties": {"reps": {"type": "integer", "minimum": 1, "maximum": 30}},
                "required": ["reps"],
                "additionalProperties": False,
            },
        },
    }
    js = client.chat.completions.create(
        model="pumpl", messages=msgs, max_tokens=64, temperature=0.5, response_format=fmt
    )
    parsed = json.loads(js.choices[0].message.content or "")
    assert set(parsed) == {"reps"} and 1 <= parsed["reps"] <= 30
    assert js.model_extra["pumpl"] == {"request": None}  # type: ignore[index]
    # ... and keeps the whole conversation (formatted with the model's chat template).
    raw_multi = client.chat.completions.create(
        model="pumpl", messages=turns, max_tokens=8, temperature=0.5, response_format=fmt
    )
    assert raw_multi.usage is not None and js.usage is not None
    assert raw_multi.usage.prompt_tokens > js.usage.prompt_tokens

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="pumpl", messages=msgs, max_tokens=4
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="pumpl", messages=msgs, max_tokens=4, n=2)


@pytest.mark.integration
def test_dynamic_batching_under_concurrency(server: ServerProcess, http: httpx.Client):
    before = http.get("/info").json()["metrics"]["generate"]
    n = 8

    def one(i: int) -> httpx.Response:
        with server.client() as c:
            return c.post(
                "/generate",
                json={"prompt": f"Hello number {i}", "max_tokens": 24, "temperature": 0.0, "raw": True},
            )

    with cf.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    assert [r.status_code for r in results] == [200] * n, [r.text for r in results if r.status_code != 200]
    after = http.get("/info").json()["metrics"]["generate"]
    served = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert served == n
    assert batches < n, f"{n} concurrent requests ran in {batches} batches: no batching happened"
    assert after["max_batch"] > 1
    # Rows of one batch are independent: a batched greedy answer equals the single one.
    solo = http.post(
        "/generate", json={"prompt": "Hello number 3", "max_tokens": 24, "temperature": 0.0, "raw": True}
    ).json()
    assert solo["text"] == results[3].json()["text"]


@pytest.mark.integration
def test_auth_required_and_secrets_not_logged(server: ServerProcess, http: httpx.Client):
    for method, path in [
        ("POST", "/generate"),
        ("GET", "/info"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/docs"),
    ]:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            r = httpx.request(method, f"{server.url}{path}", json={"prompt": "x"}, headers=headers)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text
    r = http.post("/generate", json={"prompt": f"My password is {SECRET_MARKER}", "max_tokens": 4})
    assert r.status_code == 200
    time.sleep(0.5)
    log = server.log_text()
    assert TOKEN not in log
    assert SECRET_MARKER not in log
    assert httpx.get(f"{server.url}/health").status_code == 200


# ------------------------------------------------------------------------------------------
# Pure functions behind the endpoints
# ------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_plan_request_reads_every_prompt_unless_raw():
    from pumpl_serving.api import GenerateRequest, RequestCorrection, model_user_message, plan_request

    on, u = plan_request(GenerateRequest(prompt=request_to_prompt(SPECS[1])))
    assert on and u is not None and u.spec == SPECS[1]
    on, u = plan_request(GenerateRequest(prompt="Tell me a joke"))
    assert (
        on
        and u is not None
        and u.defaults_used
        == ["goal", "minutes", "level", "equipment", "days_per_week", "limitations", "focus"]
    )
    assert model_user_message("Tell me a joke", u) == request_to_prompt(u.spec)
    off, none = plan_request(GenerateRequest(prompt="Tell me a joke", raw=True))
    assert not off and none is None and model_user_message("Tell me a joke", none) == "Tell me a joke"
    on, u = plan_request(GenerateRequest(prompt="Tell me a joke", equipment=["bands"]))
    assert on and u is not None and u.spec.equipment == ["body only", "bands"] and u.spec.level == "beginner"
    on, u = plan_request(GenerateRequest(prompt=request_to_prompt(SPECS[0]), level="expert"))
    assert on and u is not None and u.spec.level == "expert" and u.spec.minutes == SPECS[0].minutes
    on, u = plan_request(
        GenerateRequest(prompt="a 20 min HIIT workout", request=RequestCorrection(minutes=40, focus="arms"))
    )
    assert u is not None and (u.spec.goal, u.spec.minutes, u.spec.focus) == ("fat_loss", 40, "arms")
    forced_off, u = plan_request(GenerateRequest(prompt=request_to_prompt(SPECS[0]), constrained=False))
    assert not forced_off and u is not None and u.spec == SPECS[0]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n=3"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "user message"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 422, "top_p"),
        ({"messages": [{"role": "user", "content": "x" * 20_000}]}, 413, "characters"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ],
)
def test_validate_chat_request_names_the_problem(body: dict[str, Any], status: int, needle: str):
    from fastapi import HTTPException
    from litserve.specs.openai import ChatCompletionRequest

    from pumpl_serving.api import validate_chat_request

    with pytest.raises(HTTPException) as exc:
        validate_chat_request(ChatCompletionRequest.model_validate(body))
    assert exc.value.status_code == status and needle in str(exc.value.detail)
    validate_chat_request(
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "ok"}]})
    )


# ------------------------------------------------------------------------------------------
# Registry: serve the champion, move the alias under the running server
# ------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_no_champion_exits_2_with_instructions(tmp_path: Path):
    env = {
        **os.environ,
        "PUMPL_DATA_ROOT": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}",
    }
    r = subprocess.run(
        [sys.executable, "-m", "pumpl_serving", "--partition", "smollm2-135m", "--port", "18999"],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "models:/pumpl-smollm2-135m@champion" in r.stderr
    assert "--model-path" in r.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "pumpl_serving", "--model-path", str(tmp_path / "nowhere")],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert bad.returncode == 2 and "not a Hugging Face model folder" in bad.stderr


@pytest.mark.integration
def test_alias_move_hot_swaps_without_failing_requests(
    tiny_model_dir: Path, smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from pumpl_assets.core.basemodel import build_tiny_model
    from pumpl_assets.core.registry import Registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = tmp_path / "data"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PUMPL_DATA_ROOT", str(data))
    reg = Registry(uri, artifact_root=str(tmp_path / "artifacts"))
    second = build_tiny_model(tmp_path / "tiny-seed1", smollm2_dir, seed=1)
    v1 = reg.register_version(
        "smollm2-135m", tiny_model_dir, run_id=None, copy=False, tags={}, merged_dir=tiny_model_dir
    )
    v2 = reg.register_version("smollm2-135m", second, run_id=None, copy=False, tags={}, merged_dir=second)
    reg.set_champion("smollm2-135m", v1)

    srv = start_server(
        [
            "--partition",
            "smollm2-135m",
            "--threads",
            "1",
            "--poll-interval",
            "1",
            "--max-batch-size",
            "4",
            "--batch-timeout",
            "0.05",
        ],
        log_path=tmp_path / "server.log",
    )
    try:
        c = srv.client()
        info = c.get("/info").json()
        assert info["model"] == {
            "name": "pumpl-smollm2-135m",
            "version": v1,
            "alias": "champion",
            "source": "registry",
        }
        # Served from the version's hash-checked copy in the local model cache, not the registered folder.
        assert Path(info["model_path"]).parts[-3:] == (
            "pumpl-smollm2-135m",
            f"v{v1}-{sha256_tree(tiny_model_dir)[:16]}",
            "merged",
        )
        # Sampled with a fixed seed (greedy random tiny models all just repeat the last token).
        probe = {"prompt": "Plan my week", "max_tokens": 16, "temperature": 1.0, "seed": 5, "raw": True}
        text_v1 = c.post("/generate", json=probe).json()["text"]

        results: list[tuple[int, str | None, float, float]] = []
        stop = threading.Event()

        def load() -> None:
            with srv.client() as lc:
                while not stop.is_set():
                    t0 = time.monotonic()
                    r = lc.post(
                        "/generate",
                        json={"prompt": "Keep going", "max_tokens": 120, "temperature": 0.0, "raw": True},
                    )
                    ver = r.json()["model"]["version"] if r.status_code == 200 else None
                    results.append((r.status_code, ver, t0, time.monotonic()))

        workers = [threading.Thread(target=load) for _ in range(2)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        reg.set_champion("smollm2-135m", v2)
        moved_at = time.monotonic()
        deadline = moved_at + 120
        while time.monotonic() < deadline:
            if c.get("/info").json()["model"]["version"] == v2:
                break
            time.sleep(0.5)
        swapped_at = time.monotonic()
        # Keep traffic going across the swap until requests started after it have answered.
        until = time.monotonic() + 90
        while time.monotonic() < until and sum(1 for r in results if r[2] > swapped_at + 0.5) < 2:
            time.sleep(0.2)
        stop.set()
        for w in workers:
            w.join(timeout=120)

        info2 = c.get("/info").json()
        assert info2["model"]["version"] == v2, info2
        assert Path(info2["model_path"]).parts[-2] == f"v{v2}-{sha256_tree(second)[:16]}"
        assert all(s == 200 for s, *_ in results), [r for r in results if r[0] != 200]
        versions = [v for _, v, *_ in results]
        assert v1 in versions and v2 in versions
        # Requests that began before the alias moved finished fine (on the old engine).
        assert any(t0 < moved_at and v == v1 for _, v, t0, _ in results)
        # Once the swap was visible, new requests are answered by v2.
        assert all(v == v2 for _, v, t0, _ in results if t0 > swapped_at + 0.5)
        after = c.post("/generate", json=probe).json()
        assert after["model"]["version"] == v2
        assert after["text"] != text_v1  # different weights answer
        assert c.get("/health").status_code == 200
        gen_workers = [w for w in info2["workers"] if w["api"] == "generate"]
        assert gen_workers and all(w["swaps"] >= 1 for w in gen_workers)
        c.close()
    finally:
        srv.stop()
