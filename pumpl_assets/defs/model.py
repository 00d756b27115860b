"""The model half of the graph: lora_adapter → merged_model → eval_report → awq_model, gguf_model →
registry_entry.

Heavy work (training) runs in a subprocess (unsloth must be imported before
transformers; the code server stays clean); steps that hold the accelerator use the
``gpu`` pool so two of them never share a card.
"""

import json
import math
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from pumpl_assets.common import (
    GPU_POOL,
    EvalConfig,
    QuantizeConfig,
    RegistryConfig,
    TrainConfig,
    base_model_partitions,
    check,
    code_version,
    fail_on_missing_model,
    gate_spec,
    metadata,
    out_dir,
    read_gates,
    spec_for,
    timed,
    upstream_dir,
    write_gates,
)
from pumpl_assets.core import artifacts as A
from pumpl_assets.core import settings
from pumpl_assets.core.catalogue import CATALOGUE, ModelNotAvailableError
from pumpl_assets.core.exercises import ExerciseCatalogue
from pumpl_assets.core.io import sha256_tree, write_json_atomic
from pumpl_assets.defs.resources import MlflowResource

MODEL = "model"
_RECIPES = {k: v.recipe.model_dump() for k, v in CATALOGUE.items()}
_GATES = {k: v.gates.__dict__ for k, v in CATALOGUE.items()}
# The decode batch moves bf16 results by a few rows, so it is part of the eval's version.
_EVAL_DECODE = {
    k: {"batch": v.eval_batch_size, "max_new_tokens": v.eval_max_new_tokens} for k, v in CATALOGUE.items()
}


def _base(context: dg.AssetExecutionContext) -> Path:
    from pumpl_assets.core.basemodel import ensure_base_model

    try:
        return ensure_base_model(spec_for(context))
    except ModelNotAvailableError as exc:
        raise fail_on_missing_model(exc) from None


def _png_md(path: Path) -> dg.MetadataValue:
    import base64

    if not path.is_file():
        return dg.MetadataValue.md("_(no plot)_")
    data = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{path.name}](data:image/png;base64,{data})")


def _mlflow_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    return {
        "dagster.run_id": context.run_id,
        "dagster.partition": context.partition_key,
        "dagster.asset": context.asset_key.to_user_string(),
    }


# ---------------------------------------------------------------------------------------------- lora_adapter


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=MODEL,
    deps=["split"],
    pool=GPU_POOL,
    code_version=code_version("lora-1", _RECIPES),
    kinds={"pytorch", "peft"},
    check_specs=[
        gate_spec("trained", "lora_adapter", "The adapter was trained for at least one step"),
        gate_spec("loss_improved", "lora_adapter", "Training loss is finite and fell"),
        gate_spec("adapter_integrity", "lora_adapter", "Adapter files exist, load and hold finite weights"),
    ],
    description=(
        "LoRA adapter trained on the train split (unsloth or PEFT backend, per config/machine), in a "
        "Dagster Pipes process: a local subprocess or a Ray job (config `launcher`)."
    ),
)
def lora_adapter(
    context: dg.AssetExecutionContext, config: TrainConfig, mlflow: MlflowResource
) -> dg.MaterializeResult:
    from pumpl_assets.core.prompts import resolve_style
    from pumpl_assets.core.training.job import apply_overrides, build_job, collect_outputs, local_out_dir
    from pumpl_assets.training_launch import launch

    spec = spec_for(context)
    base = _base(context)
    # Validated (not model_copy): a bad override is a clear config error naming the field.
    cfg = type(spec.recipe).model_validate(
        apply_overrides(spec.recipe.model_dump(), config.recipe_overrides())
    )
    # The trainer's working folder: the artifact folder itself on a local artifact root (checkpoints,
    # log, adapter); on an s3:// root the process uploads the adapter through the artifact contract.
    d = local_out_dir(context.partition_key).resolve()
    d.mkdir(parents=True, exist_ok=True)
    if not config.resume:
        import shutil

        shutil.rmtree(d / A.DIR_CHECKPOINTS, ignore_errors=True)
    try:
        job = build_job(
            base_model=Path(base).resolve(),
            cfg=cfg.model_dump(),
            partition=context.partition_key,
            out_dir=d,
            style=resolve_style(spec.prompt_style),
            system_prompt=settings.system_prompt(),
            device=spec.device,
        )
    except FileNotFoundError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    with timed() as t:
        invocation = launch(
            context,
            job,
            launcher=config.launcher,
            ray_address=config.ray_address,
            num_gpus=1 if spec.device == "cuda" else 0,
        )
    reported = invocation.get_materialize_result()
    md = dict(reported.metadata or {})
    checks = list(reported.check_results or [])
    # The asset's local folder (what merged_model reads): `d` itself on the default local root; else
    # the adapter the worker published to the store is downloaded into it, hash-checked.
    local = out_dir(context)
    try:
        fetched = collect_outputs(job, local)
    except A.ArtifactError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    if fetched:
        md["adapter_uri"] = dg.MetadataValue.text(fetched["adapter_uri"])
        md["adapter_dir"] = dg.MetadataValue.path(fetched["adapter_dir"])
        d = local
    write_gates(d, checks)
    train_loss = [(int(s), float(v)) for s, v in _md_value(md.get("train_loss"), [])]
    registry = mlflow.registry()
    with registry.start_run(f"pumpl-{context.partition_key}", "lora_adapter", _mlflow_tags(context)):
        registry.log_params(
            {
                **{f"recipe.{k}": v for k, v in cfg.model_dump().items()},
                "backend": _md_value(md.get("backend")),
            }
        )
        for step, loss in train_loss:
            registry.log_metrics({"train_loss": loss}, step=step)
        val_loss = _md_value(md.get("val_loss"), math.nan)
        registry.log_metrics(
            {
                "tokens_per_s": float(_md_value(md.get("tokens_per_s"), 0.0)),
                "peak_rss_mb": float(_md_value(md.get("peak_rss_mb"), 0.0)),
                "wall_s": t["wall_s"],
                **({"val_loss": float(val_loss)} if math.isfinite(val_loss) else {}),
            }
        )
        if (d / A.FILE_LOSS_CURVE).is_file():
            registry.log_artifact(d / A.FILE_LOSS_CURVE)
    return dg.MaterializeResult(
        metadata={
            **md,
            **metadata({"wall_s": t["wall_s"], "launcher": config.launcher}),
            "loss_curve": _png_md(d / A.FILE_LOSS_CURVE),
        },
        check_results=checks,
        data_version=reported.data_version,
    )


def _md_value(value: Any, default: Any = None) -> Any:
    """The plain value of a metadata entry (``MetadataValue.value``), or ``default``."""
    if value is None:
        return default
    return getattr(value, "value", value)


# ---------------------------------------------------------------------------------------------- eval_report


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=MODEL,
    deps=["merged_model", "split", "raw"],
    pool=GPU_POOL,
    code_version=code_version("eval-8", _GATES, _EVAL_DECODE, EvalConfig().model_dump()),
    check_specs=[
        gate_spec("schema_valid", "eval_report", "Unconstrained schema-valid rate of the fine-tuned model"),
        gate_spec("served_adherence", "eval_report", "Served plans that pass every check of the standard"),
        gate_spec("served_safety", "eval_report", "Served plans free of contraindicated exercises (100%)"),
        gate_spec("better_than_base", "eval_report", "Adapter beats the base on the model-decided checks"),
        gate_spec(
            "not_worse_than_champion", "eval_report", "Champion/challenger: no regression beyond tolerance"
        ),
    ],
    description="Base vs the merged fine-tuned model (the artifact that is quantized and served; summary "
    "keys say `adapter`) on the same test rows (free-text requests), unconstrained and served: every check "
    "of the coaching standard, guaranteed vs model-decided, loss.",
)
def eval_report(
    context: dg.AssetExecutionContext, config: EvalConfig, mlflow: MlflowResource
) -> dg.MaterializeResult:
    from pumpl_assets.core.evaluate import evaluate_models, failure_causes, write_eval_outputs
    from pumpl_assets.core.gates import eval_gates
    from pumpl_assets.core.prompts import resolve_style

    spec = spec_for(context)
    p = context.partition_key
    base = _base(context)
    test = pl.read_parquet(upstream_dir(p, A.ASSET_SPLIT) / A.split_file("test"))
    cat = ExerciseCatalogue.from_parquet(upstream_dir(p, A.ASSET_RAW) / A.FILE_EXERCISES)
    merged_dir = upstream_dir(p, A.ASSET_MERGED_MODEL) / A.DIR_MODEL
    batch_size = config.batch_size or spec.eval_batch_size
    max_new_tokens = config.max_new_tokens or spec.eval_max_new_tokens
    with timed() as t:
        report = evaluate_models(
            base,
            None,
            test,
            cat,
            style=resolve_style(spec.prompt_style),
            system_prompt=settings.system_prompt(),
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            include_base=config.include_base,
            limit=config.limit,
            tuned_model=merged_dir,
        )
        # awq_model decodes the same rows the same way and compares against these rows.
        report.summary["eval.batch_size"] = float(batch_size)
        report.summary["eval.max_new_tokens"] = float(max_new_tokens)
        d = out_dir(context)
        paths = write_eval_outputs(report, d)
    s = report.summary
    causes = failure_causes(report.per_example)
    write_json_atomic(d / A.FILE_FAILURE_CAUSES, causes)
    champion = mlflow.registry().get_champion(p)
    gates = eval_gates(
        s, spec.gates, champion.metrics if champion else None, champion.version if champion else None
    )
    checks = [check(gt.name, gt.passed, gt.description, **gt.metadata) for gt in gates]
    write_gates(d, checks)
    write_json_atomic(d / A.FILE_SUMMARY_FOR_REGISTRY, s)
    registry = mlflow.registry()
    with registry.start_run(f"pumpl-{p}", "eval_report", _mlflow_tags(context)):
        registry.log_metrics(
            {k.replace("@", "_"): float(v) for k, v in s.items() if isinstance(v, int | float)}
        )
        for path in [*paths.values(), d / A.FILE_FAILURE_CAUSES]:
            if Path(path).suffix in (".png", ".json"):
                registry.log_artifact(Path(path))
    plots = {f"plot_{Path(v).stem}": _png_md(Path(v)) for v in paths.values() if Path(v).suffix == ".png"}
    from pumpl_assets.core.report import check_table_markdown

    return dg.MaterializeResult(
        metadata={
            **metadata(
                {
                    "n_test": int(test.height),
                    "wall_s": t["wall_s"],
                    **{f"path_{k}": v for k, v in paths.items()},
                }
            ),
            "checks": dg.MetadataValue.md(check_table_markdown(s, causes)),
            **{k: dg.MetadataValue.float(float(v)) for k, v in s.items() if isinstance(v, int | float)},
            **plots,
        },
        check_results=checks,
        data_version=dg.DataVersion(
            sha256_tree(d / A.FILE_SUMMARY)[:16] if (d / A.FILE_SUMMARY).exists() else "none"
        ),
    )


# ---------------------------------------------------------------------------------------------- merged_model


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=MODEL,
    deps=["lora_adapter", "split"],
    code_version=code_version("merged-model-1", _GATES),
    kinds={"huggingface"},
    check_specs=[
        gate_spec("parity", "merged_model", "Merged model reproduces the adapter (tokens and logits)")
    ],
    description="Adapter merged into the full-precision base, saved as a Hugging Face folder.",
)
def merged_model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from pumpl_assets.core.merge import merge_adapter, parity_check

    spec = spec_for(context)
    p = context.partition_key
    base = _base(context)
    adapter_dir = upstream_dir(p, A.ASSET_LORA_ADAPTER) / A.DIR_ADAPTER
    d = out_dir(context)
    with timed() as t:
        merged_dir = merge_adapter(base, adapter_dir, d / A.DIR_MODEL)
        prompts = _golden_prompts(p, spec)
        parity = parity_check(
            base,
            adapter_dir,
            merged_dir,
            prompts,
            min_token_agreement=spec.gates.min_merge_token_agreement,
            max_logit_diff=spec.gates.max_merge_logit_diff,
        )
    checks = [
        check(
            "parity",
            parity.ok,
            f"token agreement {parity.token_agreement:.4f} (≥ {spec.gates.min_merge_token_agreement}); "
            f"max |Δlogit| {parity.max_abs_logit_diff:.2e} (≤ {spec.gates.max_merge_logit_diff})",
            token_agreement=parity.token_agreement,
            max_abs_logit_diff=parity.max_abs_logit_diff,
            n_prompts=parity.n_prompts,
        )
    ]
    write_gates(d, checks)
    from pumpl_assets.core.quantize import model_size_bytes

    return dg.MaterializeResult(
        metadata=metadata(
            {"path": merged_dir, "size_mb": model_size_bytes(merged_dir) / 1e6, "wall_s": t["wall_s"]}
        ),
        check_results=checks,
        data_version=dg.DataVersion(sha256_tree(merged_dir)[:16]),
    )


def _golden_prompts(partition: str, spec) -> list[str]:  # type: ignore[no-untyped-def]
    """The first test-split prompts, rendered exactly as training and serving render them."""
    test = pl.read_parquet(upstream_dir(partition, A.ASSET_SPLIT) / A.split_file("test"))
    return [str(x) for x in test.sort("example_id")["prompt_text"].head(8)]


# ---------------------------------------------------------------------------------------------- awq_model


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=MODEL,
    deps=["merged_model", "split", "eval_report", "raw"],
    pool=GPU_POOL,
    code_version=code_version("awq-7", _GATES, QuantizeConfig().model_dump()),
    kinds={"awq"},
    check_specs=[
        gate_spec("size_ratio", "awq_model", "AWQ artifact ≤ 0.45× the merged model"),
        gate_spec("schema_valid_drop", "awq_model", "Schema-valid rate drops ≤ 2 points vs the merged model"),
    ],
    description="AWQ 4-bit (W4A16) model, calibrated on the train split; loads in transformers (CPU) and vLLM.",
)
def awq_model(context: dg.AssetExecutionContext, config: QuantizeConfig) -> dg.MaterializeResult:
    from pumpl_assets.core.evaluate import compare_schema_valid, evaluate_models, reference_rows
    from pumpl_assets.core.gates import awq_gates
    from pumpl_assets.core.prompts import resolve_style
    from pumpl_assets.core.quantize import fit_group_size, select_quantizer

    spec = spec_for(context)
    p = context.partition_key
    merged_dir = upstream_dir(p, A.ASSET_MERGED_MODEL) / A.DIR_MODEL
    split_dir = upstream_dir(p, A.ASSET_SPLIT)
    train = pl.read_parquet(split_dir / A.split_file("train"))
    calib = [str(x) for x in train.sort("example_id")["full_text"].head(config.n_calibration)]
    cfg = json.loads((merged_dir / A.FILE_MODEL_CONFIG).read_text())
    group = fit_group_size(
        int(cfg["hidden_size"]), int(cfg["intermediate_size"]), preferred=spec.awq_group_size
    )
    d = out_dir(context)
    with timed() as t:
        quantizer = select_quantizer(config.backend, spec.device, n_grid=config.n_grid)
        q = quantizer.quantize(
            merged_dir, d / A.DIR_MODEL, calib, group_size=group, max_seq_len=spec.max_seq_len
        )
    # Schema-valid rate of the AWQ model vs the merged model on the rows eval_report decoded with the
    # merged model, decoded the same way (engine, dtype, batch size, budgets, grammar-free greedy), so
    # the gate compares like with like, row by row, without decoding the merged model twice.
    eval_dir = upstream_dir(p, A.ASSET_EVAL_REPORT)
    merged_rows = reference_rows(pl.read_parquet(eval_dir / A.FILE_PER_EXAMPLE))
    eval_summary = json.loads((eval_dir / A.FILE_SUMMARY).read_text())
    if "eval.batch_size" not in eval_summary:
        raise dg.Failure(
            f"eval_report of {p!r} predates the merged-model evaluation (no eval.batch_size in its summary); "
            "re-materialize eval_report first"
        )
    test = pl.read_parquet(split_dir / A.split_file("test"))
    test = test.filter(pl.col("example_id").is_in(merged_rows["example_id"].implode()))
    cat = ExerciseCatalogue.from_parquet(upstream_dir(p, A.ASSET_RAW) / A.FILE_EXERCISES)
    with timed() as te:
        awq_eval = evaluate_models(
            q.out_dir,
            None,
            test,
            cat,
            style=resolve_style(spec.prompt_style),
            system_prompt=settings.system_prompt(),
            batch_size=int(eval_summary["eval.batch_size"]),
            max_new_tokens=int(eval_summary["eval.max_new_tokens"]),
            modes=("unconstrained",),
            include_base=False,
        )
    merged_eval_summary = {
        k.removeprefix("adapter."): v for k, v in eval_summary.items() if k.startswith("adapter.")
    }
    cmp = compare_schema_valid(merged_rows, awq_eval.per_example)
    merged_sv, awq_sv, n_eval = cmp.reference_rate, cmp.candidate_rate, cmp.n
    gates = awq_gates(
        q.size_ratio,
        spec.gates.max_awq_size_ratio,
        cmp.drop,
        spec.gates.provisional_awq_schema_drop
        if spec.gates.provisional_awq_schema_drop is not None
        else spec.gates.max_awq_schema_drop,
        cmp.n,
        cmp.regressions,
        cmp.improvements,
        merged_sv,
        awq_sv,
    )
    checks = [check(gt.name, gt.passed, gt.description, **gt.metadata) for gt in gates]
    write_gates(d, checks)
    write_json_atomic(
        d / A.FILE_AWQ_EVAL,
        {"awq": awq_eval.summary, "merged": merged_eval_summary, "comparison": cmp.to_dict()},
    )
    from pumpl_assets.core.io import write_parquet_atomic

    write_parquet_atomic(
        d / A.FILE_AWQ_PER_EXAMPLE,
        pl.concat(
            [
                merged_rows.with_columns(pl.lit("merged").alias("model")),
                awq_eval.per_example.with_columns(pl.lit("awq").alias("model")),
            ]
        ),
    )
    return dg.MaterializeResult(
        metadata=metadata(
            {
                "path": q.out_dir,
                "backend": q.backend,
                "group_size": q.group_size,
                "size_mb": q.size_bytes / 1e6,
                "merged_size_mb": q.source_size_bytes / 1e6,
                "size_ratio": q.size_ratio,
                "quantize_wall_s": q.wall_s,
                "eval_wall_s": te["wall_s"],
                "awq_tokens_per_s": float(awq_eval.summary.get("base.unconstrained.tokens_per_s", 0.0)),
                "merged_tokens_per_s": float(merged_eval_summary.get("unconstrained.tokens_per_s", 0.0)),
                "awq_schema_valid": awq_sv,
                "merged_schema_valid": merged_sv,
                "awq_test_loss": float(awq_eval.summary.get("base.test_loss", float("nan"))),
                "merged_test_loss": float(merged_eval_summary.get("test_loss") or float("nan")),
                "n_eval": n_eval,
                "bf16_decode": bool(awq_eval.summary.get("dtype_bf16", 0.0)),
                "wall_s": t["wall_s"] + te["wall_s"],
            }
        ),
        check_results=checks,
        data_version=dg.DataVersion(sha256_tree(q.out_dir)[:16]),
    )


# ---------------------------------------------------------------------------------------------- gguf_model

_GGUF_QUANTS = {k: list(v.gguf_quants) for k, v in CATALOGUE.items()}


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=MODEL,
    deps=["merged_model", "eval_report", "split", "raw"],
    code_version=code_version("gguf-1", _GATES, _GGUF_QUANTS),
    kinds={"gguf"},
    check_specs=[
        gate_spec("size_ratio", "gguf_model", "Each GGUF quant ≤ 0.45× the merged model"),
        gate_spec(
            "served_adherence_drop", "gguf_model", "Served adherence drops ≤ 2 points vs the merged model"
        ),
        gate_spec(
            "schema_valid_drop", "gguf_model", "Served schema-valid rate drops ≤ 2 points vs the merged model"
        ),
    ],
    description="The merged model as llama.cpp GGUF quants (8-bit, 4-bit k-quant) for engine `llamacpp`, each "
    "decoded through llama.cpp on eval_report's served rows and compared with the merged model row by row.",
)
def gguf_model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from pumpl_assets.core.evaluate import evaluate_against_reference, reference_rows
    from pumpl_assets.core.gates import gguf_gates
    from pumpl_assets.core.gguf import GGUFExportError, export_gguf
    from pumpl_assets.core.io import write_parquet_atomic
    from pumpl_assets.core.prompts import resolve_style

    spec = spec_for(context)
    p = context.partition_key
    merged_dir = upstream_dir(p, A.ASSET_MERGED_MODEL) / A.DIR_MODEL
    eval_dir = upstream_dir(p, A.ASSET_EVAL_REPORT)
    eval_summary = json.loads((eval_dir / A.FILE_SUMMARY).read_text())
    merged_rows = reference_rows(pl.read_parquet(eval_dir / A.FILE_PER_EXAMPLE), mode="served")
    test = pl.read_parquet(upstream_dir(p, A.ASSET_SPLIT) / A.split_file("test"))
    cat = ExerciseCatalogue.from_parquet(upstream_dir(p, A.ASSET_RAW) / A.FILE_EXERCISES)
    d = out_dir(context)
    try:
        # The converter's f16 file is dropped and no model.gguf link is made: the folder is registered
        # as it is, and a registry would store the link as a second full copy.
        export = export_gguf(
            merged_dir, d / A.DIR_MODEL, spec.gguf_quants, keep_base=False, link_default=False
        )
    except GGUFExportError as exc:
        raise dg.Failure(f"gguf_model for {p!r}: {exc}") from None
    evals: dict[str, Any] = {}
    grammars = None  # every quant shares the tokenizer: the served schemas compile once (~10 s)
    for quant in spec.gguf_quants:
        evals[quant] = evaluate_against_reference(
            export.path(quant),
            "llamacpp",
            merged_rows,
            test,
            cat,
            mode="served",
            columns=("adherent", "schema_valid"),
            style=resolve_style(spec.prompt_style),
            system_prompt=settings.system_prompt(),
            batch_size=int(eval_summary["eval.batch_size"]),
            max_new_tokens=int(eval_summary["eval.max_new_tokens"]),
            grammars=grammars,
        )
        grammars = evals[quant].grammars
        context.log.info(
            f"{quant}: served adherence {evals[quant].comparisons['adherent'].candidate_rate:.1%}, "
            f"schema-valid {evals[quant].comparisons['schema_valid'].candidate_rate:.1%}"
        )
    gates = gguf_gates(
        {q: export.quants[q].ratio for q in spec.gguf_quants},
        spec.gates.max_gguf_size_ratio,
        {q: e.comparisons for q, e in evals.items()},
        spec.gates.max_gguf_drop,
    )
    checks = [check(gt.name, gt.passed, gt.description, **gt.metadata) for gt in gates]
    write_gates(d, checks)
    merged_tps = float(eval_summary.get("adapter.served.tokens_per_s", 0.0))
    write_json_atomic(
        d / A.FILE_GGUF_EVAL,
        {
            "export": export.to_dict(),
            "merged_served_tokens_per_s": merged_tps,
            **{
                q: {"summary": e.summary, **{c: cmp.to_dict() for c, cmp in e.comparisons.items()}}
                for q, e in evals.items()
            },
        },
    )
    write_parquet_atomic(
        d / A.FILE_GGUF_PER_EXAMPLE,
        pl.concat(
            [merged_rows.with_columns(pl.lit("merged").alias("model"))]
            + [e.per_example.with_columns(pl.lit(f"gguf-{q}").alias("model")) for q, e in evals.items()]
        ),
    )
    per_quant: dict[str, Any] = {}
    for q, e in evals.items():
        tps = float(e.summary.get("adapter.served.tokens_per_s", 0.0))
        per_quant.update(
            {
                f"{q}.size_mb": export.quants[q].bytes / 1e6,
                f"{q}.size_ratio": export.quants[q].ratio,
                f"{q}.served_adherence": e.comparisons["adherent"].candidate_rate,
                f"{q}.served_schema_valid": e.comparisons["schema_valid"].candidate_rate,
                f"{q}.served_tokens_per_s": tps,
                f"{q}.speedup_vs_merged": tps / merged_tps if merged_tps else float("nan"),
            }
        )
    return dg.MaterializeResult(
        metadata=metadata(
            {
                "path": export.out_dir,
                "served_file": export.default,
                "quants": list(spec.gguf_quants),
                "merged_size_mb": export.safetensors_bytes / 1e6,
                "merged_served_adherence": evals[spec.gguf_quants[0]].comparisons["adherent"].reference_rate,
                "merged_served_tokens_per_s": merged_tps,
                "export_wall_s": export.wall_seconds,
                "n_eval": merged_rows.height,
                **per_quant,
            }
        ),
        check_results=checks,
        data_version=dg.DataVersion(sha256_tree(export.out_dir)[:16]),
    )


# ---------------------------------------------------------------------------------------------- registry_entry

_GATED_ASSETS = ("split", "lora_adapter", "merged_model", "eval_report", "awq_model", "gguf_model")


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=MODEL,
    deps=["awq_model", "gguf_model", "merged_model", "eval_report", "split", "raw"],
    code_version=code_version("registry-3"),
    kinds={"mlflow"},
    description=(
        "A version of the partition's registered model in MLflow holding its own copies of the merged, "
        "AWQ and GGUF models (sha256-tagged); `champion` moves when every gate passed."
    ),
)
def registry_entry(
    context: dg.AssetExecutionContext, config: RegistryConfig, mlflow: MlflowResource
) -> dg.MaterializeResult:
    from pumpl_assets.core import artifacts as A
    from pumpl_assets.core.registry import register_candidate

    p = context.partition_key
    summary = json.loads((upstream_dir(p, A.ASSET_EVAL_REPORT) / A.FILE_SUMMARY).read_text())
    gates = {f"{a}.{k}": v for a in _GATED_ASSETS for k, v in read_gates(p, a).items()}
    registry = mlflow.registry()
    reg = register_candidate(
        registry,
        p,
        merged_dir=upstream_dir(p, A.ASSET_MERGED_MODEL) / A.DIR_MODEL,
        awq_dir=upstream_dir(p, A.ASSET_AWQ_MODEL) / A.DIR_MODEL,
        gguf_dir=upstream_dir(p, A.ASSET_GGUF_MODEL) / A.DIR_MODEL,
        catalogue=settings.artifacts_dir(p, A.ASSET_RAW) / A.FILE_EXERCISES,
        gates=gates,
        promote=config.promote,
        tags={
            **_mlflow_tags(context),
            "split_data_version": _latest_data_version(context, A.ASSET_SPLIT),
            "adapter_data_version": _latest_data_version(context, A.ASSET_LORA_ADAPTER),
            **{f"metric.{k}": f"{v:.6g}" for k, v in summary.items() if isinstance(v, int | float)},
        },
        run_tags=_mlflow_tags(context),
        description=f"Dagster run {context.run_id}",
    )
    write_json_atomic(
        out_dir(context) / A.FILE_ENTRY,
        {
            "registered_model": f"pumpl-{p}",
            "version": reg.version,
            "promoted": reg.promoted,
            "gates": gates,
            "dagster_run_id": context.run_id,
            "mlflow_run_id": reg.run_id,
            "sha256": reg.sha256,
        },
    )
    return dg.MaterializeResult(
        metadata=metadata(
            {
                "registered_model": f"pumpl-{p}",
                "version": reg.version,
                "promoted_to_champion": reg.promoted,
                "champion_version": reg.champion_version or "none",
                "gates": gates,
                "tracking_uri": registry.display_uri,
                "model_uri": f"models:/pumpl-{p}/{reg.version}",
                "mlflow_run_id": reg.run_id,
                **{f"sha256.{k}": v[:16] for k, v in reg.sha256.items()},
            }
        ),
        data_version=dg.DataVersion(f"{p}-v{reg.version}"),
    )


def _latest_data_version(context: dg.AssetExecutionContext, asset: str) -> str:
    try:
        record = context.instance.get_latest_data_version_record(
            dg.AssetKey(asset), partition_key=context.partition_key
        )
        if record is not None:
            dv = (
                record.asset_materialization.tags.get("dagster/data_version")
                if record.asset_materialization
                else None
            )  # type: ignore[union-attr]
            return str(dv or "unknown")
    except Exception:
        pass
    return "unknown"
