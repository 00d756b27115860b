"""evaluate_models / write_eval_outputs on the tiny random Llama with a random LoRA adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pumpl_assets.core.evaluate import (
    MODE_METRICS,
    MODES,
    PER_EXAMPLE_SCHEMA,
    RATE_METRICS,
    EvalReport,
    answer_loss,
    compare_schema_valid,
    evaluate_models,
    load_summary,
    mode_metrics,
    score_answer,
    write_eval_outputs,
)
from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.grammar import GUARANTEED_CHECKS
from pumpl_assets.core.schemas import RequestSpec
from pumpl_assets.core.validate import DOMAIN_CHECKS

RECORDS: list[dict[str, Any]] = [
    {"name": "Push-Up", "level": "beginner", "equipment": "body only", "category": "strength"},
    {"name": "Plank", "level": "beginner", "equipment": None, "category": "strength"},
    {"name": "Dumbbell Row", "level": "beginner", "equipment": "dumbbell", "category": "strength"},
    {"name": "Cable Fly", "level": "intermediate", "equipment": "cable", "category": "strength"},
    {
        "name": "Barbell Snatch",
        "level": "expert",
        "equipment": "barbell",
        "category": "olympic weightlifting",
    },
    {
        "name": "Goblet Squat",
        "level": "beginner",
        "equipment": "dumbbell",
        "category": "strength",
        "mechanic": "compound",
        "primaryMuscles": ["quadriceps"],
    },
    {
        "name": "Arm Circles",
        "level": "beginner",
        "equipment": None,
        "category": "stretching",
        "force": "push",
    },
    {
        "name": "Child's Pose",
        "level": "beginner",
        "equipment": None,
        "category": "stretching",
        "force": "static",
    },
]

REQUESTS = [
    RequestSpec(goal="strength", minutes=20, level="beginner", equipment=["dumbbell"], days_per_week=3),
    RequestSpec(goal="hypertrophy", minutes=30, level="intermediate", equipment=["cable"], days_per_week=4),
    RequestSpec(goal="endurance", minutes=15, level="beginner", equipment=["body only"], days_per_week=2),
    RequestSpec(
        goal="strength", minutes=45, level="expert", equipment=["barbell", "dumbbell"], days_per_week=5
    ),
]

PLAN = (
    '{{"title":"Session {i}","total_minutes":{m},"days_per_week":{d},"split":"full_body","sessions":[{{'
    '"day":"full_body","warmup":[{{"name":"Arm Circles","work_s":60}}],'
    '"main":[{{"name":"Push-Up","sets":3,"rest_s":60,"reps":10}}],'
    '"cooldown":[{{"name":"Child\'s Pose","sets":2,"work_s":30}}]}}]}}'
)


@pytest.fixture(scope="module")
def catalogue() -> ExerciseCatalogue:
    return ExerciseCatalogue.from_records(RECORDS)


@pytest.fixture(scope="module")
def test_rows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "example_id": [f"ex{i}" for i in range(len(REQUESTS))],
            "request_json": [r.model_dump_json() for r in REQUESTS],
            "plan_json": [PLAN.format(i=i, m=r.minutes, d=r.days_per_week) for i, r in enumerate(REQUESTS)],
        }
    )


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pumpl_assets.core.training.base import patch_peft_torchao

    patch_peft_torchao()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    out = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(model, cfg).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def report(
    tiny_model_dir: Path, lora_dir: Path, test_rows: pl.DataFrame, catalogue: ExerciseCatalogue
) -> EvalReport:
    return evaluate_models(
        tiny_model_dir,
        lora_dir,
        test_rows,
        catalogue,
        style="chat_template",
        system_prompt="Be brief.",
        batch_size=3,  # 4 rows → a full and a partial batch
        max_new_tokens=24,
    )


@pytest.mark.integration
def test_report_has_every_key_and_row(report: EvalReport, test_rows: pl.DataFrame) -> None:
    assert MODES == ("unconstrained", "served")
    assert set(RATE_METRICS) >= {"json_valid", "schema_valid", "adherence", "model_adherence", *DOMAIN_CHECKS}
    # the adapter in both modes; the base in served mode only (the configuration better_than_base compares)
    expected = {("adapter", "unconstrained"), ("adapter", "served"), ("base", "served")}
    for model, mode in expected:
        for metric in MODE_METRICS:
            key = f"{model}.{mode}.{metric}"
            assert key in report.summary, key
            assert isinstance(report.summary[key], float)
        for metric in RATE_METRICS:
            value = report.summary[f"{model}.{mode}.{metric}"]
            # plan_safety is over the answers that are plans: NaN when a random model writes none
            assert (metric == "plan_safety" and math.isnan(value)) or 0.0 <= value <= 1.0
        assert report.summary[f"{model}.{mode}.tokens_per_s"] > 0
        assert (
            report.summary[f"{model}.{mode}.latency_p95_ms"]
            >= report.summary[f"{model}.{mode}.latency_p50_ms"]
        )
    assert not any(k.startswith("base.unconstrained.") for k in report.summary)
    assert "constrained" not in {k.split(".")[1] for k in report.summary if k.count(".") >= 2}
    for model in ("base", "adapter"):
        loss = report.summary[f"{model}.test_loss"]
        assert 0 < loss < 50
        assert report.summary[f"{model}.perplexity"] == pytest.approx(math.exp(loss))
        # same rows for both models (better_than_base refuses otherwise)
        assert report.summary[f"{model}.n_generated"] == float(test_rows.height)
    # the random LoRA really changes the model
    assert report.summary["base.test_loss"] != report.summary["adapter.test_loss"]

    df = report.per_example
    assert df.schema == pl.Schema(PER_EXAMPLE_SCHEMA)
    assert df.height == len(expected) * test_rows.height
    counts = df.group_by(["model", "mode"]).len()
    assert {(r["model"], r["mode"]) for r in counts.iter_rows(named=True)} == expected
    assert set(counts["len"].to_list()) == {test_rows.height}
    assert set(df["example_id"].to_list()) == set(test_rows["example_id"].to_list())
    assert (df["completion_tokens"] <= 24).all()
    # 24 tokens cannot close a plan: served rows are cut by length and counted invalid, with a reason;
    # a row that is not a plan fails every check (so no rate is inflated by a cut answer)
    served = df.filter(pl.col("mode") == "served")
    assert (served["finish_reason"] == "length").all()
    assert not served["json_valid"].any()
    assert all(len(r) > 0 for r in served["reasons"].to_list())
    assert all(set(f) == set(DOMAIN_CHECKS) for f in served["failed_checks"].to_list())
    assert served["text"].str.starts_with('{"total_minutes":').all()
    for c in DOMAIN_CHECKS:
        assert report.summary[f"base.served.{c}"] == 0.0


@pytest.mark.unit
def test_score_answer_and_mode_metrics(catalogue: ExerciseCatalogue) -> None:
    """Per-check facts, adherence vs model-decided adherence per mode, on real answers."""
    req = REQUESTS[0]
    good = PLAN.format(i=0, m=req.minutes, d=req.days_per_week)
    s_unc = score_answer(req, good, catalogue, "unconstrained")
    s_srv = score_answer(req, good, catalogue, "served")
    assert s_unc["json_valid"] and s_unc["schema_valid"]
    # a 20-min request answered with ~6 min of content: duration (and more) fail; guaranteed checks pass
    assert "duration" in s_unc["failed_checks"] and not s_unc["adherent"]
    assert not set(s_unc["failed_checks"]) & set(GUARANTEED_CHECKS) - {"goal_fidelity"}
    assert not s_unc["model_adherent"] and not s_srv["model_adherent"]
    # an unknown exercise fails the catalogue check
    bad = good.replace('"Push-Up"', '"Quantum Squat"')
    b_unc = score_answer(req, bad, catalogue, "unconstrained")
    assert "catalogue" in b_unc["failed_checks"]
    assert score_answer(req, "not json", catalogue, "served") | {"reasons": []} == {
        "json_valid": False,
        "schema_valid": False,
        "adherent": False,
        "model_adherent": False,
        "failed_checks": list(DOMAIN_CHECKS),
        "computed_minutes": None,
        "reasons": [],
    }
    rows = [
        {"json_valid": True, "schema_valid": True, "adherent": True, "model_adherent": True, "failed_checks": []},
        {"json_valid": True, "schema_valid": True, "adherent": False, "model_adherent": True,
         "failed_checks": ["safety"]},
        {"json_valid": True, "schema_valid": False, "adherent": False, "model_adherent": False,
         "failed_checks": list(DOMAIN_CHECKS)},
        {"json_valid": False, "schema_valid": False, "adherent": False, "model_adherent": False,
         "failed_checks": list(DOMAIN_CHECKS)},
    ]  # fmt: skip
    m = mode_metrics(rows)
    assert m["json_valid"] == 0.75 and m["schema_valid"] == 0.5
    assert m["adherence"] == 0.25 and m["model_adherence"] == 0.5
    assert m["safety"] == 0.25 and m["duration"] == 0.5
    with pytest.raises(ValueError):
        mode_metrics([])


@pytest.mark.integration
def test_served_mode_with_budget_is_valid_and_guaranteed_checks_hold(
    tiny_model_dir: Path, test_rows: pl.DataFrame, catalogue: ExerciseCatalogue
) -> None:
    rep = evaluate_models(
        tiny_model_dir,
        None,
        test_rows,
        catalogue,
        style="chat_template",
        system_prompt=None,
        batch_size=4,
        max_new_tokens=1500,
        modes=("served",),
        limit=3,
    )
    s = rep.summary
    assert s["n_examples"] == 3.0
    assert not any(k.startswith("adapter.") for k in s)
    assert not any(k.startswith("base.unconstrained") for k in s)
    assert rep.per_example.height == 3
    assert s["grammar.compiles"] == 3.0
    # every row gets the same budget, max_new_tokens (what a served plan request gets, capped)
    assert (rep.per_example["completion_tokens"] <= 1500).all()
    done = rep.per_example.filter(pl.col("finish_reason") == "stop")
    # every completed served answer is a plan, and the grammar's guaranteed checks hold on it, before
    # (the model's answer) and after the served post-step (what the person gets)
    assert done["schema_valid"].all()
    for failed, decided in zip(
        done["failed_checks"].to_list(), done["decided_failed_checks"].to_list(), strict=True
    ):
        assert not set(failed) & set(GUARANTEED_CHECKS), failed
        assert not set(decided) & set(GUARANTEED_CHECKS), decided
        assert "order" not in failed  # the post-step settles the order rule
    assert all(f"base.served.decided.{c}" in s for c in DOMAIN_CHECKS) and "base.served.finalized" in s


@pytest.mark.integration
def test_answer_loss_masks_the_prompt(tiny_model_dir: Path) -> None:
    import torch

    from pumpl_assets.core.generation import HFEngine, load_engine
    from pumpl_assets.core.prompts import render_example

    eng = load_engine("transformers", tiny_model_dir)
    assert isinstance(eng, HFEngine)
    try:
        pairs = [("Plan please", '{"title":"abc"}'), ("A much longer request text here", '{"x":1}')]
        loss, n = answer_loss(eng, pairs, style="chat_template", system_prompt="S", batch_size=2)
        # independent path: HF's own loss, one example at a time, prompt labels masked
        total, count = 0.0, 0
        for user, ans in pairs:
            prompt, full = render_example(eng.tokenizer, user, ans, system="S", style="chat_template")
            ids = torch.tensor([eng.tokenizer(full, add_special_tokens=False).input_ids])
            k = len(eng.tokenizer(prompt, add_special_tokens=False).input_ids)
            labels = ids.clone()
            labels[:, :k] = -100
            with torch.inference_mode():
                out = eng.model(input_ids=ids, labels=labels)
            m = int((labels[:, 1:] != -100).sum())
            total += float(out.loss) * m
            count += m
        assert n == count
        assert loss == pytest.approx(total / count, rel=1e-4)
    finally:
        eng.close()


@pytest.mark.integration
def test_write_eval_outputs(report: EvalReport, tmp_path: Path) -> None:
    paths = write_eval_outputs(report, tmp_path / "eval")
    assert set(paths) == {"per_example", "summary", "rates_plot", "latency_plot"}
    back = pl.read_parquet(paths["per_example"])
    assert back.height == report.per_example.height
    assert back.columns == report.per_example.columns
    summary = json.loads(paths["summary"].read_text())
    assert set(summary) == set(report.summary)
    assert load_summary(tmp_path / "eval")["adapter.test_loss"] == pytest.approx(
        report.summary["adapter.test_loss"]
    )
    for key in ("rates_plot", "latency_plot"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.unit
def test_bad_test_rows_are_clear_errors(tmp_path: Path, catalogue: ExerciseCatalogue) -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['plan_json'\]"):
        evaluate_models(
            tmp_path,
            None,
            pl.DataFrame({"example_id": ["a"], "request_json": ["{}"]}),
            catalogue,
            style="chat_template",
            system_prompt=None,
        )
    bad = pl.DataFrame({"example_id": ["bad1"], "request_json": ['{"goal":"flying"}'], "plan_json": ["{}"]})
    with pytest.raises(ValueError, match="bad1"):
        evaluate_models(tmp_path, None, bad, catalogue, style="chat_template", system_prompt=None)
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate_models(
            tmp_path, None, bad, catalogue, style="chat_template", system_prompt=None, modes=("x",)
        )


def _frame(model: str, valid: dict[str, bool], mode: str = "unconstrained") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": [model] * len(valid),
            "mode": [mode] * len(valid),
            "example_id": list(valid),
            "schema_valid": list(valid.values()),
        }
    )


@pytest.mark.unit
def test_compare_schema_valid_counts_rows_lost_and_gained() -> None:
    merged = _frame("base", {f"e{i}": i != 0 for i in range(50)})  # 49/50 valid
    awq = _frame("base", {f"e{i}": i not in (1, 2) for i in range(50)})  # loses e1, e2; gains e0
    cmp = compare_schema_valid(merged, awq)
    assert (cmp.n, cmp.regressions, cmp.improvements) == (50, 2, 1)
    assert cmp.reference_rate == pytest.approx(0.98) and cmp.candidate_rate == pytest.approx(0.96)
    assert cmp.drop == pytest.approx(0.02)
    assert cmp.to_dict()["drop"] == pytest.approx(0.02)


@pytest.mark.unit
def test_compare_schema_valid_refuses_different_rows_or_mixed_models() -> None:
    a = _frame("base", {"e1": True, "e2": True})
    with pytest.raises(ValueError, match="different rows"):
        compare_schema_valid(a, _frame("base", {"e1": True, "e3": True}))
    with pytest.raises(ValueError, match="several models"):
        compare_schema_valid(pl.concat([a, _frame("adapter", {"e1": True, "e2": True})]), a)
    with pytest.raises(ValueError, match="no 'unconstrained' rows"):
        compare_schema_valid(_frame("base", {"e1": True}, mode="served"), a)


@pytest.mark.unit
def test_compare_rates_reads_the_named_column() -> None:
    from pumpl_assets.core.evaluate import compare_rates

    ref = _frame("adapter", {"e1": True, "e2": True, "e3": False}, mode="served").with_columns(
        adherent=pl.Series([True, False, False])
    )
    cand = _frame("adapter", {"e1": True, "e2": False, "e3": True}, mode="served").with_columns(
        adherent=pl.Series([False, True, True])
    )
    adh = compare_rates(ref, cand, mode="served", column="adherent")
    assert (adh.regressions, adh.improvements) == (1, 2)
    assert adh.reference_rate == pytest.approx(1 / 3) and adh.candidate_rate == pytest.approx(2 / 3)
    sv = compare_rates(ref, cand, mode="served", column="schema_valid")
    assert (sv.regressions, sv.improvements) == (1, 1) and sv.drop == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not a boolean per-example column"):
        compare_rates(ref, cand, mode="served", column="latency_ms")


@pytest.mark.unit
def test_gguf_gates_fail_on_the_worst_quant() -> None:
    from pumpl_assets.core.evaluate import RateComparison
    from pumpl_assets.core.gates import gguf_gates

    def cmp(ref: int, cand: int, lost: int, gained: int, n: int = 60) -> RateComparison:
        return RateComparison(n, ref / n, cand / n, lost, gained)

    same = {"adherent": cmp(54, 54, 1, 1), "schema_valid": cmp(59, 59, 0, 0)}
    one_row = {"adherent": cmp(54, 53, 2, 1), "schema_valid": cmp(59, 59, 0, 0)}  # 1.7 points
    two_rows = {"adherent": cmp(54, 52, 3, 1), "schema_valid": cmp(59, 58, 1, 0)}  # 3.3 points
    ok = {
        g.name: g
        for g in gguf_gates({"q8_0": 0.27, "q4_k_m": 0.2}, 0.45, {"q8_0": same, "q4_k_m": one_row}, 0.02)
    }
    assert [n for n, g in ok.items() if not g.passed] == []
    assert ok["served_adherence_drop"].metadata["q4_k_m_drop"] == pytest.approx(1 / 60)
    assert "q8_0 90.0%" in ok["served_adherence_drop"].description
    bad = {
        g.name: g.passed
        for g in gguf_gates({"q8_0": 0.27, "q4_k_m": 0.5}, 0.45, {"q8_0": same, "q4_k_m": two_rows}, 0.02)
    }
    assert bad == {"size_ratio": False, "served_adherence_drop": False, "schema_valid_drop": True}
    with pytest.raises(ValueError, match="same quants"):
        gguf_gates({"q8_0": 0.27}, 0.45, {"q4_k_m": same}, 0.02)


@pytest.mark.integration
def test_merged_folder_is_scored_as_the_fine_tuned_model(
    tiny_model_dir: Path,
    lora_dir: Path,
    test_rows: pl.DataFrame,
    catalogue: ExerciseCatalogue,
    report: EvalReport,
    tmp_path: Path,
) -> None:
    from pumpl_assets.core.merge import merge_adapter

    merged = merge_adapter(tiny_model_dir, lora_dir, tmp_path / "merged")
    rep = evaluate_models(
        tiny_model_dir,
        None,
        test_rows,
        catalogue,
        style="chat_template",
        system_prompt="Be brief.",
        batch_size=3,
        max_new_tokens=24,
        tuned_model=merged,
    )
    key = ["model", "mode", "example_id"]
    assert rep.per_example.select(key).sort(key).equals(report.per_example.select(key).sort(key))
    # Base rows decode the same weights the same way; the merged rows reproduce the unmerged adapter.
    merged_text = dict(zip(rep.per_example.select(key).rows(), rep.per_example["text"], strict=True))
    unmerged_text = dict(zip(report.per_example.select(key).rows(), report.per_example["text"], strict=True))
    base_keys = [k for k in merged_text if k[0] == "base"]
    assert all(merged_text[k] == unmerged_text[k] for k in base_keys)
    tuned_keys = [k for k in merged_text if k[0] == "adapter"]
    agree = sum(merged_text[k] == unmerged_text[k] for k in tuned_keys) / len(tuned_keys)
    assert agree >= 0.75, agree
    # The merged model's engine took over the base's compiled grammars (same tokenizer): each served
    # schema compiled once, as with the one unmerged engine, not once per model.
    assert rep.summary["grammar.compiles"] == report.summary["grammar.compiles"] > 0
    assert rep.summary["grammar.cache_hits"] == report.summary["grammar.cache_hits"] > 0
    with pytest.raises(ValueError, match="excludes adapter_dir"):
        evaluate_models(
            tiny_model_dir, lora_dir, test_rows, catalogue, style="chat_template", system_prompt=None,
            tuned_model=merged,
        )  # fmt: skip


@pytest.mark.integration
def test_a_second_evaluation_reuses_the_first_ones_grammars(
    tiny_model_dir: Path, test_rows: pl.DataFrame, catalogue: ExerciseCatalogue
) -> None:
    """gguf_model decodes each quant on the same served rows: the second evaluation takes the first's
    compiled grammars (same tokenizer) and compiles none, with the same answers as compiling its own."""
    kw: dict[str, Any] = {
        "style": "chat_template",
        "system_prompt": None,
        "batch_size": 3,
        "max_new_tokens": 40,
        "modes": ("served",),
        "limit": 3,
    }
    first = evaluate_models(tiny_model_dir, None, test_rows, catalogue, **kw)
    assert first.grammars is not None and first.summary["grammar.compiles"] == 3.0
    compiled = first.grammars.stats.compiles
    again = evaluate_models(tiny_model_dir, None, test_rows, catalogue, grammars=first.grammars, **kw)
    assert again.grammars is first.grammars and first.grammars.stats.compiles == compiled
    assert first.grammars.stats.hits >= 3
    assert again.per_example["text"].to_list() == first.per_example["text"].to_list()
    unconstrained = evaluate_models(
        tiny_model_dir, None, test_rows, catalogue, **(kw | {"modes": ("unconstrained",)})
    )
    assert unconstrained.grammars is None  # no served schema: nothing compiled, nothing to pass on


def _request(days: int, minutes: int) -> RequestSpec:
    return RequestSpec(
        goal="strength", minutes=minutes, level="beginner", equipment=["body only"], days_per_week=days
    )


@pytest.mark.unit
def test_longest_expected_plans_are_admitted_first() -> None:
    from pumpl_assets.core.evaluate import longest_first

    reqs = [
        _request(3, 30),
        _request(6, 120),
        _request(3, 60),
        _request(1, 10),
        _request(6, 45),
        _request(3, 30),
    ]
    # Sessions first, then session length; equal keys keep their split order (rows 0 and 5).
    assert longest_first(reqs) == [1, 4, 2, 0, 5, 3]
    assert longest_first([]) == []


@pytest.mark.unit
def test_rows_come_back_in_split_order_whatever_the_admission_order(catalogue: ExerciseCatalogue) -> None:
    from pumpl_assets.core.evaluate import _Example, _run_mode
    from pumpl_assets.core.generation import Generation

    class RecordingEngine:
        """Answers each prompt with its own text, and records the order prompts were given in."""

        model = None

        def __init__(self) -> None:
            self.seen: list[str] = []

        def generate(
            self, prompts: list[str], params: Any, schemas: Any, *, max_batch: int
        ) -> list[Generation]:
            self.seen = list(prompts)
            return [
                Generation(
                    text=f"answer to {p}", prompt_tokens=1, completion_tokens=len(p), finish_reason="stop"
                )
                for p in prompts
            ]

    reqs = [_request(2, 20), _request(5, 90), _request(3, 45)]
    examples = [
        _Example(
            example_id=f"ex{i}",
            request_json=r.model_dump_json(),
            request=r,
            understood=r,
            reference="{}",
            prompt=f"prompt {i}",
            budget=64,
            reference_tokens=1,
        )
        for i, r in enumerate(reqs)
    ]
    engine = RecordingEngine()
    rows, _ = _run_mode(engine, "adapter", "unconstrained", examples, catalogue, batch_size=2)  # type: ignore[arg-type]
    assert engine.seen == ["prompt 1", "prompt 2", "prompt 0"]
    assert [r["example_id"] for r in rows] == ["ex0", "ex1", "ex2"]
    assert [r["text"] for r in rows] == ["answer to prompt 0", "answer to prompt 1", "answer to prompt 2"]
