"""The training job: one JSON-able dict that the launchers hand to the training entry point.

Built by the ``lora_adapter`` asset (and tests) without Dagster; read by
:func:`pumpl_assets.core.training.run.run_job`. Training data travel by reference (the ``split``
asset's folder), never inline, so the job fits in a Pipes context / environment variable::

    {
      "base_model": "models/smollm2-135m",          # HF folder or hub id
      "cfg": {...TrainingConfig...},
      "split_dir": ".../split",                    # train.parquet + val.parquet of the split asset
      "out_dir": ".../lora_adapter",
      "style": "chat_template", "system_prompt": "...", "device": "cpu"
    }

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
    split_dir: Path | str,
    out_dir: Path | str,
    style: str,
    system_prompt: str | None,
    device: str,
) -> dict[str, Any]:
    """The job for one training run; raises ``FileNotFoundError`` naming a missing split file."""
    split_dir = Path(split_dir)
    for name in SPLITS:
        if not (split_dir / f"{name}.parquet").is_file():
            raise FileNotFoundError(f"split file {split_dir / f'{name}.parquet'} is missing")
    return {
        "base_model": str(base_model),
        "cfg": dict(cfg),
        "split_dir": str(split_dir),
        "out_dir": str(out_dir),
        "style": style,
        "system_prompt": system_prompt,
        "device": device,
    }


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The catalogue recipe with the run config's non-None overrides on top."""
    return {**recipe, **{k: v for k, v in overrides.items() if v is not None}}
