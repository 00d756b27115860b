"""The data half of the graph: raw → distilled → validated → merged → split.

Thin assets: read inputs, call one core function, write atomically, return
MaterializeResult with metadata and blocking gate results.
"""

import os
from pathlib import Path

import dagster as dg
import polars as pl

from pumpl_assets.common import (
    DistillConfig,
    RawConfig,
    SplitConfig,
    ValidateConfig,
    base_model_partitions,
    check,
    code_version,
    fail_on_missing_model,
    frame_preview,
    gate_spec,
    metadata,
    out_dir,
    spec_for,
    timed,
    upstream_dir,
    write_gates,
)
from pumpl_assets.core import artifacts as A
from pumpl_assets.core import settings
from pumpl_assets.core.catalogue import ModelNotAvailableError
from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.io import frame_hash, sha256_text
from pumpl_assets.core.schemas import parse_plan
from pumpl_assets.defs.resources import TeacherResource

DATA = "data"


def _catalogue(partition: str) -> ExerciseCatalogue:
    return ExerciseCatalogue.from_parquet(upstream_dir(partition, A.ASSET_RAW) / A.FILE_EXERCISES)


# ---------------------------------------------------------------------------------------------- raw


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=DATA,
    code_version=code_version("raw-1", RawConfig().model_dump()),
    kinds={"polars", "duckdb"},
    check_specs=[
        gate_spec("quarantine_rate", "raw", "Share of raw rows quarantined is under the configured maximum"),
        gate_spec("min_exercises", "raw", "The exercise catalogue has enough exercises to plan with"),
        gate_spec(
            "plannable_levels", "raw", "Every level has body-only exercises (any request is plannable)"
        ),
    ],
    description="Every raw file (shipped defaults + <data root>/raw) normalized into exercise and pair tables; "
    "bad files/rows quarantined with a reason.",
)
def raw(context: dg.AssetExecutionContext, config: RawConfig) -> dg.MaterializeResult:
    from pumpl_assets.core.basemodel import check_model_available
    from pumpl_assets.core.ingest import discover_raw_files, ingest_raw, write_ingest_outputs

    spec = spec_for(context)
    try:  # the first asset fails fast, with where-to-put-it, when the partition's weights are absent
        weights = check_model_available(spec)
    except ModelNotAvailableError as exc:
        raise fail_on_missing_model(exc) from None
    dirs = [settings.shipped_raw_dir(), settings.raw_dir(), *(Path(d) for d in config.extra_dirs)]
    with timed() as t:
        files = discover_raw_files([d for d in dirs if d.is_dir()])
        result = ingest_raw(files)
        paths = write_ingest_outputs(result, out_dir(context))
    rows_in = int(result.files["rows_in"].sum()) if result.files.height else 0
    quarantined = result.quarantine.height
    rate = quarantined / rows_in if rows_in else 1.0
    cat = ExerciseCatalogue.from_frame(result.exercises)
    plannable = {lvl: len(cat.suitable(lvl, ["body only"])) for lvl in ("beginner", "intermediate", "expert")}
    checks = [
        check(
            "quarantine_rate",
            rate <= config.max_quarantine_rate,
            f"{quarantined}/{rows_in} rows quarantined ({rate:.1%}); max {config.max_quarantine_rate:.0%}",
            quarantine_rate=rate,
        ),
        check(
            "min_exercises",
            len(cat) >= config.min_exercises,
            f"{len(cat)} exercises; need ≥ {config.min_exercises}",
            exercises=len(cat),
        ),
        check(
            "plannable_levels",
            min(plannable.values()) >= 6,
            f"body-only exercises per level: {plannable}",
            **{f"body_only_{k}": v for k, v in plannable.items()},
        ),
    ]
    # Content only: where the repo lives (source_file paths) must not change the data version.
    data_version = sha256_text(
        frame_hash(result.exercises.drop("source_file", strict=False))
        + frame_hash(result.pairs.drop("source_file", "row_ref", strict=False))
    )[:16]
    write_gates(out_dir(context), checks)
    return dg.MaterializeResult(
        metadata={
            **metadata(
                {
                    "files": result.files.height,
                    "rows_in": rows_in,
                    "exercises": result.exercises.height,
                    "pairs": result.pairs.height,
                    "quarantined": quarantined,
                    "weights_source": weights,
                    "wall_s": t["wall_s"],
                    **{f"path_{k}": v for k, v in paths.items()},
                }
            ),
            "per_file": frame_preview(result.files, 20),
            "quarantine_preview": frame_preview(
                result.quarantine.select("source_file", "row_ref", "reason"), 10
            ),
        },
        check_results=checks,
        data_version=dg.DataVersion(data_version),
    )


# ---------------------------------------------------------------------------------------------- distilled


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=DATA,
    deps=["raw"],
    code_version=code_version("distilled-4", DistillConfig().model_dump()),
    kinds={"anthropic"},
    check_specs=[
        gate_spec(
            "teacher_failure_rate", "distilled", "Share of requests the teacher failed is under the maximum"
        ),
        gate_spec("min_rows", "distilled", "Enough distilled examples to train on"),
    ],
    description="Request specs (seeded, stratified) answered by a teacher: Claude, or the offline planner.",
)
def distilled(
    context: dg.AssetExecutionContext, config: DistillConfig, teacher: TeacherResource
) -> dg.MaterializeResult:
    from pumpl_assets.core.distill import distill, sample_requests
    from pumpl_assets.core.io import write_parquet_atomic
    from pumpl_assets.core.teachers import get_teacher

    cat = _catalogue(context.partition_key)
    requests = sample_requests(config.n_examples, config.seed)
    kwargs: dict = {}
    name = config.teacher if config.teacher != "auto" else os.environ.get("PUMPL_TEACHER", "auto")
    if name == "auto":
        name = "claude" if os.environ.get("ANTHROPIC_API_KEY") else "offline"
    if name == "claude":
        kwargs = {
            "model": config.claude_model,
            "max_concurrency": config.max_concurrency,
            "base_url": teacher.base_url,
            "timeout_s": teacher.timeout_s,
            "max_retries": teacher.max_retries,
        }
    t_obj = get_teacher(name, **kwargs)
    with timed() as t:
        result = distill(requests, t_obj, cat)
        d = out_dir(context)
        paths = {
            "distilled": write_parquet_atomic(d / A.FILE_DISTILLED, result.rows),
            "quarantine": write_parquet_atomic(d / A.FILE_QUARANTINE, result.quarantine),
        }
    n = len(requests)
    fail_rate = result.quarantine.height / n if n else 1.0
    checks = [
        check(
            "teacher_failure_rate",
            fail_rate <= config.max_failure_rate,
            f"{result.quarantine.height}/{n} requests failed ({fail_rate:.1%})",
            failure_rate=fail_rate,
        ),
        check(
            "min_rows",
            result.rows.height >= min(50, n),
            f"{result.rows.height} examples",
            rows=result.rows.height,
        ),
    ]
    write_gates(out_dir(context), checks)
    return dg.MaterializeResult(
        metadata={
            **metadata(
                {
                    "teacher": result.teacher,
                    "teacher_model": result.model,
                    "requests": n,
                    "rows": result.rows.height,
                    "quarantined": result.quarantine.height,
                    "cache_hits": result.cache_hits,
                    "input_tokens": result.input_tokens,
                    "output_tokens": result.output_tokens,
                    "estimated_cost_usd": float(result.cost_usd),
                    "wall_s": t["wall_s"],
                    **{f"path_{k}": v for k, v in paths.items()},
                }
            ),
            "preview": frame_preview(result.rows.select("prompt", "plan_json"), 3),
        },
        check_results=checks,
        data_version=dg.DataVersion(frame_hash(result.rows)[:16]),
    )


# ---------------------------------------------------------------------------------------------- validated


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=DATA,
    deps=["raw", "distilled"],
    code_version=code_version("validated-3", ValidateConfig().model_dump()),
    check_specs=[
        gate_spec("schema_valid_100", "validated", "Every accepted plan parses as WorkoutPlanResponse"),
        gate_spec(
            "quarantine_rate", "validated", "Share of examples failing validation is under the maximum"
        ),
        gate_spec("min_rows", "validated", "Enough validated examples"),
    ],
    description="JSON, schema and fitness-domain validation (computed duration ±10%, catalogue exercises, "
    "equipment, level, limitations, sane ranges) of raw pairs and distilled examples.",
)
def validated(context: dg.AssetExecutionContext, config: ValidateConfig) -> dg.MaterializeResult:
    from pumpl_assets.core.io import write_parquet_atomic
    from pumpl_assets.core.validate import validate_rows

    p = context.partition_key
    cat = _catalogue(p)
    raw_pairs = pl.read_parquet(upstream_dir(p, A.ASSET_RAW) / A.FILE_PAIRS)
    dist = pl.read_parquet(upstream_dir(p, A.ASSET_DISTILLED) / A.FILE_DISTILLED)
    rows = pl.concat(
        [
            # Raw pairs carry no free text: the split renders their request itself.
            raw_pairs.select("request_json", "plan_json").with_columns(
                request_text=pl.lit(None, dtype=pl.String), source=pl.lit("raw")
            ),
            dist.select("request_json", "request_text", "plan_json").with_columns(source=pl.lit("distilled")),
        ],
        how="diagonal_relaxed",
    )
    with timed() as t:
        accepted, quarantine, reasons = validate_rows(rows, cat)
    d = out_dir(context)
    write_parquet_atomic(d / A.FILE_VALIDATED, accepted)
    write_parquet_atomic(d / A.FILE_QUARANTINE, quarantine)
    reparsed = sum(1 for s in accepted["plan_json"] if _parses(s))
    rate = quarantine.height / rows.height if rows.height else 1.0
    checks = [
        check(
            "schema_valid_100",
            reparsed == accepted.height,
            f"{reparsed}/{accepted.height} accepted plans re-parse",
            schema_valid=reparsed / max(1, accepted.height),
        ),
        check(
            "quarantine_rate",
            rate <= config.max_quarantine_rate,
            f"{quarantine.height}/{rows.height} quarantined ({rate:.1%})",
            quarantine_rate=rate,
        ),
        check(
            "min_rows",
            accepted.height >= config.min_rows,
            f"{accepted.height} rows; need ≥ {config.min_rows}",
            rows=accepted.height,
        ),
    ]
    write_gates(out_dir(context), checks)
    return dg.MaterializeResult(
        metadata={
            **metadata(
                {
                    "rows_in": rows.height,
                    "accepted": accepted.height,
                    "quarantined": quarantine.height,
                    "reasons": dict(reasons),
                    "wall_s": t["wall_s"],
                    "path": d / A.FILE_VALIDATED,
                }
            ),
            "quarantine_preview": frame_preview(quarantine.select("source", "reason"), 10)
            if quarantine.height
            else dg.MetadataValue.md("_(none)_"),
        },
        check_results=checks,
        data_version=dg.DataVersion(frame_hash(accepted)[:16]),
    )


def _parses(text: str) -> bool:
    try:
        parse_plan(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- merged


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=DATA,
    deps=["validated"],
    code_version=code_version("merged-1"),
    check_specs=[
        gate_spec("no_duplicates", "merged", "No two examples share a request and normalized plan"),
        gate_spec("min_rows", "merged", "Enough merged examples"),
    ],
    description="Raw pairs + validated distilled examples, deduplicated (exact and normalized).",
)
def merged(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from pumpl_assets.core.dataset import merge_examples
    from pumpl_assets.core.io import write_parquet_atomic

    v = pl.read_parquet(upstream_dir(context.partition_key, A.ASSET_VALIDATED) / A.FILE_VALIDATED)
    with timed() as t:
        df, counts = merge_examples(
            v.filter(pl.col("source") == "raw"), v.filter(pl.col("source") == "distilled")
        )
    d = out_dir(context)
    write_parquet_atomic(d / A.FILE_MERGED, df)
    dupes = df.height - df.select("example_id").n_unique()
    checks = [
        check("no_duplicates", dupes == 0, f"{dupes} duplicate example ids", duplicates=dupes),
        check("min_rows", df.height >= 50, f"{df.height} rows", rows=df.height),
    ]
    write_gates(out_dir(context), checks)
    return dg.MaterializeResult(
        metadata=metadata({**counts, "rows": df.height, "wall_s": t["wall_s"], "path": d / A.FILE_MERGED}),
        check_results=checks,
        data_version=dg.DataVersion(frame_hash(df.sort("example_id"))[:16]),
    )


# ---------------------------------------------------------------------------------------------- split


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=DATA,
    deps=["merged", "data_profile"],
    code_version=code_version("split-2", SplitConfig().model_dump()),
    check_specs=[
        gate_spec(
            "proportions",
            "split",
            "train/val/test shares within max(±2 points, 3σ binomial) of 80/10/10 (n ≥ 200)",
        ),
        gate_spec("no_leakage", "split", "No request or plan appears in more than one split"),
        gate_spec("min_rows_per_split", "split", "Every split has examples"),
        gate_spec("fits_context", "split", "Examples longer than the model's max sequence length are rare"),
    ],
    description="80/10/10 split by a stable hash of the request, rendered with the base model's prompt style.",
)
def split(context: dg.AssetExecutionContext, config: SplitConfig) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from pumpl_assets.core.basemodel import ensure_base_model
    from pumpl_assets.core.dataset import (
        publish_split,
        render_for_model,
        split_examples,
        split_stats,
        write_split_files,
    )
    from pumpl_assets.core.gates import split_proportion_gate
    from pumpl_assets.core.prompts import resolve_style

    spec = spec_for(context)
    with timed() as t:  # includes the one-time base-model conversion (the asset's own work)
        try:
            model_path = ensure_base_model(spec)
        except ModelNotAvailableError as exc:
            raise fail_on_missing_model(exc) from None
        df = pl.read_parquet(upstream_dir(context.partition_key, A.ASSET_MERGED) / A.FILE_MERGED)
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        style = resolve_style(spec.prompt_style)
        df = split_examples(df)
        rendered, render_report = render_for_model(
            df, tokenizer, style, spec.max_seq_len, settings.system_prompt()
        )
        stats = split_stats(rendered)
        paths = write_split_files(rendered, out_dir(context))
    n = rendered.height
    props = stats["proportions"]
    target = {"train": 0.8, "val": 0.1, "test": 0.1}
    worst = max(abs(props.get(k, 0.0) - v) for k, v in target.items())
    prop = split_proportion_gate(
        props, n, config.proportion_tolerance, config.min_rows_for_proportion_gate, target
    )
    too_long = int(render_report["too_long"])
    checks = [
        check(prop.name, prop.passed, prop.description, max_deviation=worst, **prop.metadata),
        check(
            "no_leakage",
            stats["request_leakage"] == 0 and stats["plan_leakage"] == 0,
            f"{stats['request_leakage']} requests and {stats['plan_leakage']} plans in more than one split",
            leaked_requests=stats["request_leakage"],
            leaked_plans=stats["plan_leakage"],
        ),
        check(
            "min_rows_per_split",
            min(stats["counts"].get(k, 0) for k in target) >= 1,
            f"counts {stats['counts']}",
            **{f"n_{k}": int(v) for k, v in stats["counts"].items()},
        ),
        check(
            "fits_context",
            too_long <= config.max_too_long_rate * max(n, 1),
            f"{too_long}/{n} examples exceed max_seq_len={spec.max_seq_len}",
            too_long=too_long,
            max_tokens=int(render_report.get("max_tokens", 0)),
        ),
    ]
    write_gates(out_dir(context), checks)
    # On a remote (or other) artifact root, a training worker reads the split from there.
    published = publish_split(out_dir(context), context.partition_key)
    return dg.MaterializeResult(
        metadata={
            **({"split_uris": dg.MetadataValue.json(published)} if published else {}),
            **metadata(
                {
                    "rows": n,
                    "counts": stats["counts"],
                    "prompt_style": style,
                    "render": {k: v for k, v in render_report.items() if k != "too_long_ids"},
                    "wall_s": t["wall_s"],
                    **{f"path_{k}": v for k, v in paths.items()},
                }
            ),
            "example_prompt": dg.MetadataValue.md("```\n" + rendered["full_text"][0][:1500] + "\n```")
            if n
            else dg.MetadataValue.md("_(empty)_"),
        },
        check_results=checks,
        data_version=dg.DataVersion(
            frame_hash(rendered.select("example_id", "split", "full_text").sort("example_id"))[:16]
        ),
    )
