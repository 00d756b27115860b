"""LoRA training, torchtune-style: model loaders (:mod:`.model_peft`, :mod:`.model_unsloth`) and
recipes (:mod:`.recipe_plain`, :mod:`.recipe_sft`) are siblings composed by the entry point
(:mod:`.run`); :mod:`.base` is the shared leaf (results, sessions, checkpoints, metrics), :mod:`.data`
prepares batches, :mod:`.gates` holds the quality-gate arithmetic, :mod:`.job` the launch job.

Importing this package imports nothing else (no transformers/peft, no submodule): the names below
are loaded on first use, so the package adds no edge to the import graph.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BackendUnavailableError": "base",
    "TrainResult": "base",
    "TrainerBackend": "base",
    "TrainingSession": "base",
    "patch_peft_torchao": "base",
    "resolve_backend_name": "base",
    "select_backend": "run",
    "train_lora": "run",
    "run_training_subprocess": "run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
