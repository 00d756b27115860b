"""data_profile: the DuckDB profile of the merged examples, with coverage and diversity gates.

Thin asset: profile ``merged.parquet`` (core/profile.py), write the tables atomically, and turn the
gate arithmetic into blocking checks. ``split`` depends on it, so bad coverage or an overused
exercise stops training data from being produced.
"""

import dagster as dg
from pydantic import Field

from pumpl_assets.common import (
    base_model_partitions,
    check,
    code_version,
    gate_spec,
    metadata,
    out_dir,
    timed,
    upstream_dir,
    write_gates,
)
from pumpl_assets.core import artifacts as A
from pumpl_assets.core.profile import DEFAULT_MAX_SHARE

DATA = "data"


class ProfileConfig(dg.Config):
    max_main_share: float = Field(
        default=DEFAULT_MAX_SHARE,
        gt=0.0,
        le=1.0,
        description="Largest share of plans any one exercise may appear in, in the main block",
    )


@dg.asset(
    partitions_def=base_model_partitions,
    group_name=DATA,
    deps=["merged"],
    code_version=code_version("data_profile-1", ProfileConfig().model_dump()),
    kinds={"duckdb"},
    check_specs=[
        gate_spec("coverage", "data_profile", "Every goal × level cell (6 × 3) has at least one plan"),
        gate_spec(
            "diversity",
            "data_profile",
            "No exercise appears in the main block of more than a fifth of plans (warm-up/cool-down reported only)",
        ),
    ],
    description="DuckDB SQL over merged.parquet: coverage of goal × level × length × equipment × limitation, "
    "prescription distributions per goal, exercise frequency, split × days.",
)
def data_profile(context: dg.AssetExecutionContext, config: ProfileConfig) -> dg.MaterializeResult:
    from pumpl_assets.core.io import frame_hash, sha256_text
    from pumpl_assets.core.profile import (
        MAIN,
        WARMUP_COOLDOWN,
        ProfileError,
        coverage_gate,
        diversity_gate,
        profile_examples,
        render_markdown,
        write_profile,
    )

    src = upstream_dir(context.partition_key, A.ASSET_MERGED) / A.FILE_MERGED
    with timed() as t:
        try:
            prof = profile_examples(src)
        except ProfileError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        paths = write_profile(prof, out_dir(context))
    cov = coverage_gate(prof)
    div = diversity_gate(prof, config.max_main_share)
    checks = [
        check("coverage", cov.passed, cov.description, **cov.metadata),
        check("diversity", div.passed, div.description, **div.metadata),
    ]
    write_gates(out_dir(context), checks)
    md = render_markdown(prof)
    return dg.MaterializeResult(
        metadata={
            **metadata(
                {
                    "plans": prof.n_plans,
                    "by_source": prof.by_source,
                    "coverage_cells": prof.coverage.height,
                    "goal_level_grid_fraction": prof.grid_fraction,
                    "distinct_main_exercises": prof.exercise_frequency.filter(
                        prof.exercise_frequency["block"] == MAIN
                    ).height,
                    "top_main_shares": prof.top_shares(MAIN, 5),
                    "top_warmup_cooldown_shares": prof.top_shares(WARMUP_COOLDOWN, 5),
                    "wall_s": t["wall_s"],
                    **{f"path_{k}": v for k, v in paths.items()},
                }
            ),
            **{k: dg.MetadataValue.md(v) for k, v in md.items()},
        },
        check_results=checks,
        data_version=dg.DataVersion(
            sha256_text(
                "".join(
                    frame_hash(df)
                    for df in (prof.coverage, prof.prescriptions, prof.exercise_frequency, prof.splits)
                )
            )[:16]
        ),
    )
