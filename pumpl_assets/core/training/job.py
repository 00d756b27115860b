"""The training job: one JSON-able dict that the launchers hand to the training entry point.

Built by the ``lora_adapter`` asset (and tests) without Dagster; read by
:func:`pumpl_assets.core.training.run.run_job`. Training data travel by reference, through the
artifact contract (:mod:`pumpl_assets.core.artifacts`: a local root or ``s3://``), never inline, so
the job fits in a Pipes context / environment variable::

    {
      "base_model": "models/smollm2-135m",          # HF folder or hub id
      "cfg": {...TrainingConfig...},
      "artifact_root": "/data/artifacts",           # or s3://bucket/prefix
      "partition": "smollm2-135m",                  # split read from <root>/<partition>/split/{train,val}.parquet
      "out_dir": ".../lora_adapter",                # local working folder: checkpoints, logs, the adapter
      "style": "chat_template", "system_prompt": "...", "device": "cpu"
    }

On a local root ``out_dir`` IS the ``lora_adapter`` artifact folder; on an ``s3://`` root the
finished adapter (+ metrics and loss plot) are uploaded to ``<root>/<partition>/lora_adapter/``
(checkpoints stay in the local ``out_dir``, so a resume needs the same machine or shared disk), and
the asset then downloads it, hash-checked, into its local folder (:func:`collect_outputs`). The
split gets there the same way: the ``split`` asset publishes it (``core.dataset.publish_split``).

The older forms still work for scripts and benches: ``train_path``/``val_path`` (TrainingExample
rows as .jsonl/.json/.parquet) or ``train``/``val`` inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPLITS = ("train", "val")


def build_job(
    *,
    base_model: Path | str,
    cfg: dict[str, Any],
    partition: str,
    out_dir: Path | str,
    style: str,
    system_prompt: str | None,
    device: str,
    store: Any = None,
) -> dict[str, Any]:
    """The job for one training run; ``FileNotFoundError`` names a split file missing from the store.

    ``store`` is an :class:`~pumpl_assets.core.artifacts.ArtifactStore` (default: from the environment).
    """
    from pumpl_assets.core import artifacts as A

    store = store or A.ArtifactStore.from_env()
    for name in SPLITS:
        if not store.exists(partition, A.ASSET_SPLIT, A.split_file(name)):
            raise FileNotFoundError(
                f"split file {A.redact(store.uri(partition, A.ASSET_SPLIT, A.split_file(name)))} is missing; "
                f"materialize the split asset for {partition!r} first"
            )
    return {
        "base_model": str(base_model),
        "cfg": dict(cfg),
        "artifact_root": store.root,
        "partition": partition,
        "out_dir": str(out_dir),
        "style": style,
        "system_prompt": system_prompt,
        "device": device,
    }


def local_out_dir(partition: str, store: Any = None) -> Path:
    """Where the trainer works: the artifact folder itself on a local root, a local cache folder otherwise."""
    from pumpl_assets.core import artifacts as A
    from pumpl_assets.core import settings

    store = store or A.ArtifactStore.from_env()
    if store.is_remote:
        return settings.cache_dir() / "training" / partition / A.ASSET_LORA_ADAPTER
    return store.local_path(partition, A.ASSET_LORA_ADAPTER)


def publish_outputs(job: dict[str, Any], adapter_dir: Path) -> str:
    """Put the trained adapter where the contract says; returns its URI (a no-op on a local root)."""
    from pumpl_assets.core import artifacts as A

    store = A.ArtifactStore(job["artifact_root"])
    partition = job["partition"]
    if not store.is_remote:
        return str(adapter_dir)
    out_dir = Path(job["out_dir"])
    for name in (A.FILE_TRAIN_METRICS, A.FILE_LOSS_CURVE):
        if (out_dir / name).is_file():
            store.write_bytes(partition, A.ASSET_LORA_ADAPTER, name, data=(out_dir / name).read_bytes())
    return store.upload_dir(adapter_dir, partition, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)


def collect_outputs(job: dict[str, Any], asset_dir: Path | str) -> dict[str, str]:
    """After training: bring the adapter the worker published into the local asset folder ``asset_dir``.

    The controller's half of :func:`publish_outputs`. On the default local root (the trainer's
    ``out_dir`` IS ``asset_dir``) a no-op returning ``{}``. Otherwise the adapter folder is
    downloaded from the store to ``asset_dir/adapter`` (atomically; on ``s3://`` every file's sha256
    is checked against the manifest, a mismatch raises ``ArtifactError``), with the metrics and loss
    curve when the worker published them, and ``{"adapter_uri": <redacted URI>, "adapter_dir": <local
    path>}`` is returned for the materialization metadata. Downstream assets (``merged_model``) read
    ``asset_dir/adapter`` as always.
    """
    from pumpl_assets.core import artifacts as A
    from pumpl_assets.core.io import write_bytes_atomic

    store = A.ArtifactStore(job["artifact_root"])
    partition = job["partition"]
    asset_dir = Path(asset_dir)
    if A.same_folder(store, partition, A.ASSET_LORA_ADAPTER, asset_dir):
        return {}
    local = store.download_dir(partition, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER, dest=asset_dir / A.DIR_ADAPTER)
    for name in (A.FILE_TRAIN_METRICS, A.FILE_LOSS_CURVE):
        if store.exists(partition, A.ASSET_LORA_ADAPTER, name):
            write_bytes_atomic(asset_dir / name, store.read_bytes(partition, A.ASSET_LORA_ADAPTER, name))
    return {
        "adapter_uri": A.redact(store.uri(partition, A.ASSET_LORA_ADAPTER, A.DIR_ADAPTER)),
        "adapter_dir": str(local),
    }


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The catalogue recipe with the run config's non-None overrides on top."""
    return {**recipe, **{k: v for k, v in overrides.items() if v is not None}}
