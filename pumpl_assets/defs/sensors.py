"""Retraining: a sensor on the raw folder and the job it launches."""

import json
from pathlib import Path

import dagster as dg

from pumpl_assets.common import base_model_partitions
from pumpl_assets.core import settings
from pumpl_assets.core.catalogue import PARTITION_KEYS
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


@dg.sensor(
    job=full_graph_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="New or changed files in <data root>/raw → one full-graph run per base-model partition.",
)
def raw_data_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    folder = settings.raw_dir()
    cursor = json.loads(context.cursor) if context.cursor else {}
    changed, new_cursor = scan_raw_folder(folder, cursor)
    if not changed:
        return dg.SkipReason(f"no new or changed files in {folder}")
    batch = stable_hash({f: new_cursor[f][2] for f in changed})[:16]
    context.log.info(f"{len(changed)} new/changed raw file(s): {changed[:10]}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{partition}:{batch}",
                partition_key=partition,
                tags={"pumpl/trigger": "raw_data_sensor", "pumpl/changed_files": str(len(changed))},
            )
            for partition in PARTITION_KEYS
        ],
        cursor=json.dumps(new_cursor, sort_keys=True),
    )
