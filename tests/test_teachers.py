"""Teachers: the offline planner's guarantees and the Claude teacher against a real local HTTP server."""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pumpl_assets.core import settings
from pumpl_assets.core.distill import sample_requests
from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.schemas import (
    GOALS,
    LEVELS,
    LIMITATIONS,
    MINUTES_CHOICES,
    RepsExercise,
    RequestSpec,
    parse_plan,
)
from pumpl_assets.core.teachers import OfflineTeacher, get_teacher, plan_for_request, plan_scheme, redact
from pumpl_assets.core.teachers.base import REDACTED, estimate_cost_usd
from pumpl_assets.core.teachers.cache import TeacherCache
from pumpl_assets.core.teachers.claude import TOOL_NAME, ClaudeTeacher
from pumpl_assets.core.validate import validate_example
from tests.fake_messages_api import FakeMessagesAPI

REPO = Path(__file__).resolve().parents[1]
OWN_EXERCISES = settings.shipped_raw_dir() / "exercises.json"
SHARED_EXERCISES = REPO.parent / "shared" / "data" / "free-exercise-db" / "exercises.json"
KEY = "sk-ant-test-SECRET123"
EQUIPMENT_SETS = [
    ["body only"],
    ["dumbbell"],
    ["kettlebells"],
    ["bands"],
    ["dumbbell", "bands"],
    ["barbell", "dumbbell", "cable", "machine"],
]


@pytest.fixture(scope="module")
def catalogue() -> ExerciseCatalogue:
    path = OWN_EXERCISES if OWN_EXERCISES.is_file() else SHARED_EXERCISES
    if not path.is_file():
        pytest.skip("no exercise catalogue available")
    return ExerciseCatalogue.from_json_file(path)


def _catalogues() -> list[Path]:
    return [p for p in (OWN_EXERCISES, SHARED_EXERCISES) if p.is_file()]


def _random_requests(n: int, seed: int) -> list[RequestSpec]:
    rng = random.Random(seed)
    return [
        RequestSpec(
            goal=rng.choice(GOALS),
            minutes=rng.choice(MINUTES_CHOICES) if i % 2 else rng.randint(10, 120),
            level=rng.choice(LEVELS),
            equipment=rng.choice(EQUIPMENT_SETS),  # type: ignore[arg-type]
            days_per_week=rng.randint(1, 7),
            limitations=rng.sample(LIMITATIONS, rng.choice([0, 0, 1, 2, 4])),
        )
        for i in range(n)
    ]


# ------------------------------------------------------------------------------------------------
# Offline planner


@pytest.mark.unit
@pytest.mark.parametrize("path", _catalogues(), ids=lambda p: p.parent.name)
def test_offline_plans_are_valid_within_5pct_and_suitable(path: Path) -> None:
    cat = ExerciseCatalogue.from_json_file(path)
    requests = sample_requests(540, seed=3) + _random_requests(600, seed=11)
    results = OfflineTeacher().generate(requests, cat)
    assert len(results) == len(requests)
    errors = []
    for res in results:
        assert res.plan_text is not None, res.error
        req, plan = res.request, parse_plan(res.plan_text)
        err = abs(plan.computed_minutes() - req.minutes) / req.minutes
        assert err <= 0.05, (req, plan.computed_minutes())
        errors.append(err)
        assert plan.total_minutes == req.minutes and plan.days_per_week == req.days_per_week
        assert 3 <= len(plan.title) <= 40
        for block, exercises in plan.session.blocks().items():
            names = [e.name for e in exercises]
            assert len(names) == len(set(names)), (block, names)
            for ex in exercises:
                cat_ex = cat.get(ex.name)
                assert cat_ex is not None and cat_ex.name == ex.name
                assert cat_ex.suits(req.level, req.equipment, req.limitations), (ex.name, req)
                assert ex.equipment is None and ex.muscles is None and ex.notes is None
        outcome = validate_example(req, res.plan_text, cat)
        assert outcome.ok, outcome.reasons
    assert max(errors) <= 0.03  # fixed layouts land within 2.3% (45 and 60 min); the rest are exact


@pytest.mark.unit
def test_offline_goal_rules(catalogue: ExerciseCatalogue) -> None:
    def main_of(goal: str) -> list:
        req = RequestSpec.model_validate(
            {
                "goal": goal,
                "minutes": 45,
                "level": "expert",
                "equipment": EQUIPMENT_SETS[-1],
                "days_per_week": 3,
            }
        )
        return plan_for_request(req, catalogue).session.main

    assert all(
        isinstance(e, RepsExercise) and 4 <= e.reps <= 6 and e.rest_s >= 45 for e in main_of("strength")
    )
    assert all(isinstance(e, RepsExercise) and 8 <= e.reps <= 12 for e in main_of("hypertrophy"))
    assert all(
        isinstance(e, RepsExercise) and 15 <= e.reps <= 20 and e.rest_s <= 60 for e in main_of("endurance")
    )
    assert all(not isinstance(e, RepsExercise) for e in main_of("fat_loss"))
    mob = main_of("mobility")
    assert all(not isinstance(e, RepsExercise) for e in mob)
    assert all(catalogue.get(e.name).category == "stretching" for e in mob)  # type: ignore[union-attr]


@pytest.mark.unit
def test_offline_is_deterministic_with_fixed_structure_and_varied_exercises(
    catalogue: ExerciseCatalogue,
) -> None:
    reqs = [
        RequestSpec.model_validate(
            {
                "goal": "hypertrophy",
                "minutes": 30,
                "level": "expert",
                "equipment": EQUIPMENT_SETS[-1],
                "days_per_week": d,
            }
        )
        for d in range(1, 8)
    ]
    a = [r.plan_text for r in OfflineTeacher().generate(reqs, catalogue)]
    b = [r.plan_text for r in OfflineTeacher().generate(list(reversed(reqs)), catalogue)][::-1]
    assert a == b  # same request → same plan, independent of batch order
    plans = [parse_plan(t or "") for t in a]

    def shape(p):  # type: ignore[no-untyped-def]
        return [(k, [e.model_dump(exclude={"name"}) for e in v]) for k, v in p.session.blocks().items()]

    assert all(shape(p) == shape(plans[0]) for p in plans)  # one structure per (goal, minutes)
    assert len({tuple(e.name for e in p.session.main) for p in plans}) >= 5  # exercises vary
    assert len({p.title for p in plans}) >= 2


@pytest.mark.unit
def test_plan_scheme_fits_every_length() -> None:
    worst = 0.0
    for goal in GOALS:
        for minutes in range(10, 121):
            s = plan_scheme(goal, minutes)
            worst = max(worst, abs(s.seconds() / 60 - minutes) / minutes)
    assert worst <= 0.05


@pytest.mark.unit
def test_offline_error_result_when_a_block_has_no_exercise() -> None:
    only_strength = ExerciseCatalogue.from_records(
        [
            {
                "name": "Push-Up",
                "level": "beginner",
                "equipment": "body only",
                "category": "strength",
                "primaryMuscles": ["chest"],
            }
        ]
    )
    req = RequestSpec(goal="strength", minutes=30, level="beginner", equipment=["body only"], days_per_week=3)
    (res,) = OfflineTeacher().generate([req], only_strength)
    assert res.plan_text is None
    assert res.error is not None and "cool-down" in res.error and "goal=strength" in res.error


@pytest.mark.unit
def test_get_teacher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert get_teacher("auto").name == "offline"
    assert get_teacher("offline").model.startswith("pumpl-offline")
    with pytest.raises(ValueError, match="auto, offline, claude"):
        get_teacher("gpt")
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        get_teacher("claude")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    t = get_teacher("auto", cache_path=tmp_path / "c.sqlite")
    assert t.name == "claude" and KEY not in repr(t)


@pytest.mark.unit
def test_redact() -> None:
    assert redact(f"bad key {KEY} here") == f"bad key {REDACTED} here"
    assert KEY not in redact(f"{{'x-api-key': '{KEY}'}}")
    assert KEY not in redact(f"Authorization: Bearer {KEY}")
    assert "abc123" not in redact("header x-api-key=abc123, ok", None)
    assert redact("custom-secret-value in text", "custom-secret-value") == f"{REDACTED} in text"
    assert redact("nothing secret") == "nothing secret"


@pytest.mark.unit
def test_cost_table() -> None:
    assert estimate_cost_usd("claude-haiku-4-5", 1_000_000, 1_000_000) == pytest.approx(6.0)
    assert estimate_cost_usd("claude-sonnet-4-5-20250929", 1_000_000, 0) == pytest.approx(3.0)
    assert estimate_cost_usd("pumpl-offline-planner-v1", 10**6, 10**6) == 0.0


# ------------------------------------------------------------------------------------------------
# Claude teacher against the fake Messages API


@pytest.fixture()
def api(catalogue: ExerciseCatalogue):  # type: ignore[no-untyped-def]
    with FakeMessagesAPI(catalogue, retry_after_s=0.3, delay_s=1.5) as server:
        yield server


def _teacher(api: FakeMessagesAPI, tmp_path: Path, **kw) -> ClaudeTeacher:  # type: ignore[no-untyped-def]
    opts = {
        "api_key": KEY,
        "base_url": api.url,
        "cache_path": tmp_path / "cache.sqlite",
        "backoff_s": 0.01,
        "max_backoff_s": 1.0,
        "timeout_s": 0.7,
        "max_concurrency": 1,
        "max_retries": 3,
    }
    opts.update(kw)
    return ClaudeTeacher(**opts)  # type: ignore[arg-type]


def _prompt_counts(api: FakeMessagesAPI) -> collections.Counter:
    return collections.Counter(r["body"]["messages"][0]["content"] for r in api.requests)


@pytest.mark.integration
@pytest.mark.parametrize("structured", ["tool", "json_schema"])
def test_claude_happy_path(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue, structured: str
) -> None:
    reqs = sample_requests(6, seed=5)
    teacher = _teacher(api, tmp_path, structured=structured, max_concurrency=3)
    results = teacher.generate(reqs, catalogue)
    assert [r.request for r in results] == reqs
    for r in results:
        assert r.plan_text is not None and r.error is None and not r.cache_hit
        assert validate_example(r.request, r.plan_text, catalogue).ok
        assert r.input_tokens > 0 and r.output_tokens > 0
    assert api.count == 6
    body, headers = api.requests[0]["body"], {k.lower(): v for k, v in api.requests[0]["headers"].items()}
    assert KEY in (headers.get("x-api-key", "") + headers.get("authorization", ""))  # the key is sent...
    if structured == "tool":
        (tool,) = body["tools"]
        assert tool["name"] == TOOL_NAME and tool["strict"] is True
        assert body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
        names = json.dumps(tool["input_schema"])
        assert '"enum"' in names
    else:
        assert body["output_config"]["format"]["type"] == "json_schema"
    s = teacher.stats
    assert s.api_calls == 6 and s.errors == 0 and s.cost_usd > 0
    assert s.cost_usd == pytest.approx(estimate_cost_usd("claude-haiku-4-5", s.input_tokens, s.output_tokens))


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["rate_limit", "overloaded", "server_error", "delay"])
def test_claude_retries_transient_errors(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue, kind: str
) -> None:
    api.script(kind, kind)
    t0 = time.monotonic()
    (res,) = _teacher(api, tmp_path).generate(sample_requests(1, seed=1), catalogue)
    elapsed = time.monotonic() - t0
    assert res.plan_text is not None, res.error
    assert api.count == 3
    if kind == "rate_limit":
        assert elapsed >= 0.6  # retry-after (0.3 s) honoured twice, not the 0.01 s backoff
        assert api.statuses[:3] == [429, 429, 200]


@pytest.mark.integration
def test_claude_gives_up_after_bounded_retries(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue
) -> None:
    api.script(*["overloaded"] * 10)
    (res,) = _teacher(api, tmp_path, max_retries=2).generate(sample_requests(1, seed=1), catalogue)
    assert res.plan_text is None and res.error is not None
    assert "529" in res.error and "3 attempts" in res.error
    assert api.count == 3


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["no_tool_use", "invalid_json", "schema_invalid"])
def test_claude_malformed_reply_retried_once_then_quarantined(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue, kind: str
) -> None:
    api.script(kind)  # one malformed reply, then fine
    reqs = sample_requests(2, seed=2)
    teacher = _teacher(api, tmp_path)
    ok = teacher.generate(reqs[:1], catalogue)[0]
    assert ok.plan_text is not None and api.count == 2
    api.script(kind, kind)  # two in a row: quarantined, never a crash, exactly 2 calls
    bad = teacher.generate(reqs[1:], catalogue)[0]
    assert bad.plan_text is None and bad.error is not None and "malformed" in bad.error
    assert api.count == 4
    assert len(TeacherCache(tmp_path / "cache.sqlite")) == 1  # failures are not cached


@pytest.mark.integration
def test_claude_domain_failure_gets_feedback_turn(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue
) -> None:
    api.script("domain_invalid")
    (res,) = _teacher(api, tmp_path).generate(sample_requests(1, seed=4), catalogue)
    assert res.plan_text is not None and validate_example(res.request, res.plan_text, catalogue).ok
    follow = api.requests[1]["body"]["messages"]
    assert [m["role"] for m in follow] == ["user", "assistant", "user"]
    assert follow[2]["content"][0]["type"] == "tool_result" and follow[2]["content"][0]["is_error"] is True
    assert "duration" in json.dumps(follow[2]).lower() or "min" in follow[2]["content"][0]["content"]
    api.script(
        "domain_invalid", "domain_invalid"
    )  # still wrong after feedback: returned, quarantined downstream
    (res2,) = _teacher(api, tmp_path).generate(sample_requests(2, seed=4)[1:], catalogue)
    assert res2.plan_text is not None and not validate_example(res2.request, res2.plan_text, catalogue).ok


@pytest.mark.integration
def test_claude_auth_error_stops_the_run(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue
) -> None:
    api.script("auth")
    results = _teacher(api, tmp_path).generate(sample_requests(4, seed=1), catalogue)
    assert all(r.plan_text is None for r in results)
    assert all("401" in (r.error or "") for r in results)
    assert api.count == 1  # no money burnt on a dead key


@pytest.mark.integration
def test_claude_bad_request_not_retried(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue
) -> None:
    api.script("bad_request")
    (res,) = _teacher(api, tmp_path).generate(sample_requests(1, seed=1), catalogue)
    assert res.plan_text is None and "HTTP 400" in (res.error or "")
    assert api.count == 1


@pytest.mark.integration
def test_claude_cache_prevents_repaying(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue
) -> None:
    reqs = sample_requests(5, seed=8)
    first = _teacher(api, tmp_path, max_concurrency=4).generate(reqs, catalogue)
    assert api.count == 5
    teacher2 = _teacher(api, tmp_path)  # a new instance, same cache file (a rerun)
    second = teacher2.generate(reqs + sample_requests(6, seed=8)[5:], catalogue)
    assert api.count == 6  # only the new request is paid
    assert [r.cache_hit for r in second] == [True] * 5 + [False]
    assert [r.plan_text for r in second[:5]] == [r.plan_text for r in first]
    assert teacher2.stats.cache_hits == 5 and teacher2.stats.api_calls == 1
    # a different model is a different cache key
    _teacher(api, tmp_path, model="claude-sonnet-4-5").generate(reqs[:1], catalogue)
    assert api.count == 7


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from pumpl_assets.core.distill import sample_requests
    from pumpl_assets.core.exercises import ExerciseCatalogue
    from pumpl_assets.core.teachers.claude import ClaudeTeacher
    url, cache, cat = sys.argv[1:4]
    t = ClaudeTeacher(base_url=url, cache_path=cache, max_concurrency=1, timeout_s=60)
    t.generate(sample_requests(8, seed=21), ExerciseCatalogue.from_json_file(cat))
    print("FINISHED")
    """
)


@pytest.mark.integration
def test_claude_run_killed_midway_resumes_without_paying_twice(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue
) -> None:
    # a private snapshot: both runs must see the same catalogue (the schema is part of the cache key)
    cat_path = tmp_path / "exercises.json"
    cat_path.write_bytes((OWN_EXERCISES if OWN_EXERCISES.is_file() else SHARED_EXERCISES).read_bytes())
    snapshot = ExerciseCatalogue.from_json_file(cat_path)
    api.catalogue = snapshot
    api.delay_s = 30.0
    k = 4
    api.script(*["ok"] * (k - 1), "delay")  # the k-th call hangs; we SIGKILL the run then
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ANTHROPIC_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, str(script), api.url, str(cache), str(cat_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while api.count < k and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert api.count == k, proc.communicate()[1].decode() if proc.poll() is not None else "timeout"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(TeacherCache(cache)) == k - 1  # every answer received before the kill was saved

    api.delay_s = 0.0
    teacher = _teacher(api, tmp_path, cache_path=cache)
    results = teacher.generate(sample_requests(8, seed=21), snapshot)
    assert all(r.plan_text is not None for r in results)
    assert [r.cache_hit for r in results] == [True] * (k - 1) + [False] * (8 - k + 1)
    assert api.count == k + (8 - k + 1)
    counts = _prompt_counts(api)
    # each prompt was sent once, except the one cut off mid-flight (never answered, so never paid)
    assert sorted(counts.values()) == [1] * 7 + [2]


@pytest.mark.integration
def test_claude_key_never_leaks(
    api: FakeMessagesAPI, tmp_path: Path, catalogue: ExerciseCatalogue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.script("rate_limit", "server_error", "no_tool_use", "invalid_json", "delay", "bad_request", "auth")
    teacher = _teacher(api, tmp_path, max_retries=1)
    results = teacher.generate(sample_requests(6, seed=9), catalogue)
    assert any(r.error for r in results)
    blob = json.dumps([r.__dict__ | {"request": r.request.key()} for r in results])
    blob += json.dumps(teacher.stats.as_dict()) + repr(teacher)
    blob += "\n".join(rec.getMessage() + str(rec.args) for rec in caplog.records)
    blob += caplog.text
    assert len(caplog.records) > 3  # retries and failures were logged
    assert KEY not in blob and "SECRET123" not in blob
