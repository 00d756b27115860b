"""Merge dedup, stable hash splits, chat examples, token budgets and split files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pumpl_assets.core import prompts, settings
from pumpl_assets.core.dataset import (
    example_id,
    merge_examples,
    render_for_model,
    request_hash,
    split_examples,
    split_stats,
    to_training_examples,
    understood_request,
    write_split_files,
)
from pumpl_assets.core.prompts import request_to_prompt
from pumpl_assets.core.request_text import parse_request, phrase_request
from pumpl_assets.core.schemas import EQUIPMENT, GOALS, LEVELS, LIMITATIONS, MINUTES_CHOICES, RequestSpec


def rand_request(rng: random.Random) -> RequestSpec:
    return RequestSpec(
        goal=rng.choice(GOALS),
        minutes=rng.choice(MINUTES_CHOICES),
        level=rng.choice(LEVELS),
        equipment=rng.sample(EQUIPMENT, rng.randint(1, 4)),
        days_per_week=rng.randint(1, 7),
        limitations=rng.sample(LIMITATIONS, rng.randint(0, 2)),
    )


def plan_text(title: str = "Bodyweight Basics", squat: str = "Bodyweight Squat", sets: int = 3) -> str:
    return json.dumps(
        {
            "title": title,
            "total_minutes": 30,
            "days_per_week": 3,
            "split": "full_body",
            "sessions": [
                {
                    "day": "full_body",
                    "warmup": [{"name": "Arm Circles", "sets": 1, "work_s": 60, "rest_s": 0}],
                    "main": [{"name": squat, "sets": sets, "reps": 10, "rest_s": 60}],
                    "cooldown": [{"name": "Cobra Stretch", "sets": 1, "work_s": 60, "rest_s": 0}],
                }
            ],
        },
        separators=(",", ":"),
    )


def frame(rows: list[tuple[str, str]], source: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_json": [r for r, _ in rows],
            "plan_json": [p for _, p in rows],
            "source": [source] * len(rows),
        },
        schema={"request_json": pl.String, "plan_json": pl.String, "source": pl.String},
    )


def random_examples(n: int, seed: int, plans_per_request: int = 1) -> pl.DataFrame:
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(seen) < n:
        req = rand_request(rng)
        h = request_hash(req.model_dump_json())  # equipment order does not make a new request
        if h in seen:
            continue
        seen.add(h)
        for k in range(plans_per_request):
            rows.append(
                (req.model_dump_json(), plan_text(sets=1 + (k % 6), title=f"Plan {rng.random():.6f}"))
            )
    return frame(rows, "synthetic")


REQ_A = RequestSpec(
    goal="strength", minutes=30, level="beginner", equipment=["dumbbell", "barbell"], days_per_week=3
)
REQ_B = RequestSpec(goal="mobility", minutes=15, level="expert", equipment=["bands"], days_per_week=2)


# ---------------------------------------------------------------- merge


@pytest.mark.unit
def test_merge_exact_and_normalized_dedup_raw_wins() -> None:
    a = REQ_A.model_dump_json()
    # Same request, equipment in another order and pretty-printed: the same request.
    a_reordered = json.dumps(
        {**json.loads(a), "equipment": ["barbell", "dumbbell", "body only"]}, indent=2, separators=(",", ": ")
    )
    raw = frame([(a, plan_text()), (a, plan_text(sets=4)), (a, plan_text())], "raw")
    distilled = frame(
        [
            (a, plan_text()),  # exact dupe of a raw row
            (
                a_reordered,
                plan_text(title="BODYWEIGHT   basics", squat="bodyweight squat"),
            ),  # normalized dupe
            (REQ_B.model_dump_json(), plan_text()),  # new: other request
            (a, plan_text(sets=5)),  # new: other plan
        ],
        "distilled",
    )
    merged, counts = merge_examples(raw, distilled)
    assert counts == {
        "in_raw": 3,
        "in_distilled": 4,
        "exact_dupes": 2,  # one inside raw, one across
        "normalized_dupes": 1,
        "out": 4,
        "out_raw": 2,
        "out_distilled": 2,
    }
    assert (
        counts["in_raw"] + counts["in_distilled"] - counts["exact_dupes"] - counts["normalized_dupes"]
        == counts["out"]
    )
    assert merged.get_column("source").to_list() == ["raw", "raw", "distilled", "distilled"]
    # The raw spelling survived, not the distilled variant.
    assert merged.get_column("plan_json").to_list()[0] == plan_text()
    ids = merged.get_column("example_id").to_list()
    assert len(set(ids)) == 4 and all(len(i) == 16 for i in ids)
    assert "_origin" not in merged.columns and "_norm" not in merged.columns


@pytest.mark.unit
def test_example_id_stable_and_normalized() -> None:
    a = REQ_A.model_dump_json()
    assert example_id(a, plan_text()) == example_id(a, plan_text())
    assert example_id(a, plan_text()) == example_id(
        a, plan_text(title="bodyweight  BASICS", squat="BODYWEIGHT SQUAT")
    )
    assert example_id(a, plan_text()) != example_id(a, plan_text(sets=4))
    assert example_id(a, plan_text()) != example_id(REQ_B.model_dump_json(), plan_text())
    merged, _ = merge_examples(frame([(a, plan_text())], "raw"), pl.DataFrame())
    assert merged.get_column("example_id").to_list() == [example_id(a, plan_text())]


@pytest.mark.unit
def test_merge_carries_extra_columns_and_rejects_missing() -> None:
    raw = frame([(REQ_A.model_dump_json(), plan_text())], "raw").with_columns(
        pl.lit(29.0).alias("computed_minutes")
    )
    merged, counts = merge_examples(raw, frame([], "distilled"))
    assert counts["out"] == 1 and merged.get_column("computed_minutes").to_list() == [29.0]
    with pytest.raises(ValueError, match="plan_json"):
        merge_examples(pl.DataFrame({"request_json": ["{}"]}), frame([], "distilled"))


# ---------------------------------------------------------------- split


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(5))
def test_split_is_stable_when_data_is_added(seed: int) -> None:
    """Property: appending (and shuffling in) new rows never moves an old example."""
    rng = random.Random(1000 + seed)
    old = random_examples(rng.randint(20, 200), seed=seed)
    new = random_examples(rng.randint(1, 300), seed=seed + 100)
    before = split_examples(old)
    combined = pl.concat([old, new]).sample(fraction=1.0, shuffle=True, seed=seed)
    after = split_examples(combined)
    where_before = dict(zip(before["request_json"], before["split"], strict=True))
    where_after = dict(zip(after["request_json"], after["split"], strict=True))
    assert all(where_after[k] == v for k, v in where_before.items())
    assert set(after["split"].to_list()) <= {"train", "val", "test"}


@pytest.mark.unit
def test_no_request_leakage_and_proportions() -> None:
    df = split_examples(random_examples(2200, seed=7, plans_per_request=2))
    stats = split_stats(df)
    assert stats["n"] == 4400 and stats["n_requests"] == 2200
    assert stats["request_leakage"] == 0
    assert stats["empty_splits"] == []
    per_request = df.group_by("request_hash").agg(pl.col("split").n_unique().alias("k"))
    assert per_request["k"].max() == 1
    for s, target in zip(("train", "val", "test"), (0.8, 0.1, 0.1), strict=True):
        assert abs(stats["proportions"][s] - target) <= 0.02, stats["proportions"]
    assert sum(stats["counts"].values()) == stats["n"]


@pytest.mark.unit
def test_equivalent_requests_share_a_split() -> None:
    a = REQ_A.model_dump_json()
    a2 = json.dumps({**json.loads(a), "equipment": ["barbell", "dumbbell"]})
    assert a != a2 and request_hash(a) == request_hash(a2)
    df = split_examples(frame([(a, plan_text()), (a2, plan_text(sets=4))], "raw"))
    assert df["split"][0] == df["split"][1] and df["bucket"][0] == df["bucket"][1]


@pytest.mark.unit
def test_split_stats_detects_leakage() -> None:
    a = REQ_A.model_dump_json()
    df = frame([(a, plan_text()), (a, plan_text(sets=4)), (REQ_B.model_dump_json(), plan_text())], "raw")
    df = df.with_columns(pl.Series("split", ["train", "test", "val"]))
    stats = split_stats(df)
    assert stats["request_leakage"] == 1
    assert stats["plan_leakage"] == 1  # plan_text() in train and val
    assert stats["counts"] == {"train": 1, "val": 1, "test": 1}


@pytest.mark.unit
def test_split_fractions_are_checked() -> None:
    df = random_examples(50, seed=1)
    with pytest.raises(ValueError, match="fractions"):
        split_examples(df, (0.8, 0.3, 0.1))
    only_train = split_examples(df, (1.0, 0.0, 0.0))
    assert set(only_train["split"].to_list()) == {"train"}
    assert split_stats(only_train)["empty_splits"] == ["val", "test"]


# ---------------------------------------------------------------- examples and rendering


@pytest.mark.unit
def test_to_training_examples_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUMPL_SYSTEM_PROMPT", raising=False)
    df = frame([(REQ_A.model_dump_json(), plan_text())], "raw")
    [ex] = to_training_examples(df, "Be brief.")
    assert [m.role for m in ex.messages] == ["system", "user", "assistant"]
    assert ex.messages[0].content == "Be brief."
    assert ex.user == prompts.request_to_prompt(REQ_A) and ex.assistant == plan_text()
    assert ex.request == REQ_A and ex.source == "raw"
    [default] = to_training_examples(df, None)
    assert default.messages[0].content == settings.system_prompt()
    [bare] = to_training_examples(df, "")
    assert [m.role for m in bare.messages] == ["user", "assistant"]


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.unit
def test_render_for_model_chat_template(tiny_tokenizer: Any) -> None:
    df = merge_examples(random_examples(6, seed=3), pl.DataFrame())[0]
    out, report = render_for_model(df, tiny_tokenizer, "chat_template", 4096, "Be brief.")
    assert out.height == 6 and report["n"] == 6
    for row in out.iter_rows(named=True):
        assert row["full_text"].startswith(row["prompt_text"])
        assert row["plan_json"] in row["full_text"] and "Be brief." in row["prompt_text"]
        assert row["full_text"].endswith(str(tiny_tokenizer.eos_token))
        assert 0 < row["n_prompt_tokens"] < row["n_tokens"]
        assert row["prompt_token_prefix"]
    assert report["too_long"] == 0 and report["too_long_ids"] == [] and report["prefix_mismatch"] == 0
    assert report["max_tokens"] == out["n_tokens"].max()
    assert report["mean_tokens"] == pytest.approx(out["n_tokens"].mean())

    # A budget between the shortest and the longest example flags exactly the long ones.
    limit = min(out["n_tokens"].to_list())
    out2, report2 = render_for_model(df, tiny_tokenizer, "chat_template", limit, "Be brief.")
    expected = out2.filter(pl.col("n_tokens") > limit)["example_id"].to_list()
    assert out2["too_long"].to_list() == [n > limit for n in out2["n_tokens"].to_list()]
    assert report2["too_long"] == len(expected) >= 1 and report2["too_long_ids"] == expected
    assert out2["too_long"].sum() < out2.height


@pytest.mark.unit
def test_render_for_model_mistral_style(tiny_tokenizer: Any) -> None:
    df = random_examples(2, seed=4)  # no example_id yet: it is added
    out, report = render_for_model(df, tiny_tokenizer, "mistral_inst", 4096, "")
    assert "example_id" in out.columns and report["n"] == 2
    assert all(t.startswith("<s>[INST] Goal:") and t.endswith("</s>") for t in out["full_text"].to_list())
    assert all(f.startswith(p) for p, f in zip(out["prompt_text"], out["full_text"], strict=True))


# ---------------------------------------------------------------- files


@pytest.mark.unit
def test_write_split_files(tmp_path: Path) -> None:
    df, _ = merge_examples(random_examples(60, seed=5), pl.DataFrame())
    df = split_examples(df)
    paths = write_split_files(df, tmp_path / "split")
    assert set(paths) == {"train", "val", "test", "train_parquet", "val_parquet", "test_parquet"}
    total = 0
    for s in ("train", "val", "test"):
        lines = paths[s].read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert all(r["split"] == s for r in recs)
        back = pl.read_parquet(paths[f"{s}_parquet"])
        assert back.height == len(recs) == df.filter(pl.col("split") == s).height
        assert sorted(back["example_id"].to_list()) == sorted(r["example_id"] for r in recs)
        total += len(recs)
    assert total == df.height
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == sorted(p.name for p in paths.values())
    with pytest.raises(ValueError, match="split"):
        write_split_files(df.drop("split"), tmp_path / "x")


@pytest.mark.unit
def test_understood_request_reads_request_text_with_the_serving_parser(tiny_tokenizer: Any) -> None:
    """The model is told the request as the serving parser understands the row's free text."""
    req = RequestSpec(
        goal="strength",
        minutes=45,
        level="intermediate",
        equipment=["dumbbell"],
        days_per_week=4,
        focus="arms",
    )
    base = {"request_json": req.model_dump_json(), "plan_json": plan_text()}
    assert understood_request(base) == req  # no text: the request itself
    assert understood_request({**base, "request_text": "  "}) == req
    assert understood_request({**base, "request_text": request_to_prompt(req)}) == req  # canonical text
    text = phrase_request(req, random.Random(1))
    assert understood_request({**base, "request_text": text}) == parse_request(text).spec
    # a text that says something else is taken at its word (a parser mistake costs the row's checks)
    other = request_to_prompt(req.model_copy(update={"goal": "mobility", "focus": None}))
    seen = understood_request({**base, "request_text": other})
    assert seen.goal == "mobility"

    df = pl.DataFrame(
        {
            "request_json": [base["request_json"]] * 2,
            "plan_json": [plan_text(), plan_text(title="Other")],
            "request_text": [request_to_prompt(req), other],
        }
    )
    out, report = render_for_model(df, tiny_tokenizer, "chat_template", 4096, "")
    assert out["understood_matches"].to_list() == [True, False]
    assert [RequestSpec.model_validate_json(u) for u in out["understood_json"]] == [req, seen]
    assert report["understood_mismatch"] == 1
    assert "Goal: mobility." in out["prompt_text"][1]
    (ex0, ex1) = to_training_examples(df, "")
    assert ex0.user == request_to_prompt(req) and ex1.user == other
    assert ex0.request == ex1.request == req  # the true request is kept for scoring
