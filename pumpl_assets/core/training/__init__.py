"""LoRA training: backends behind one interface (see :mod:`.base`), data prep (:mod:`.data`),
and a subprocess runner (:mod:`.run`). Importing this package does not import transformers/peft."""

from pumpl_assets.core.training.base import (
    BackendUnavailableError,
    TrainerBackend,
    TrainResult,
    patch_peft_torchao,
    resolve_backend_name,
    select_backend,
    train_lora,
)

__all__ = [
    "BackendUnavailableError",
    "TrainResult",
    "TrainerBackend",
    "patch_peft_torchao",
    "resolve_backend_name",
    "run_training_subprocess",
    "select_backend",
    "train_lora",
]


def __getattr__(name: str) -> object:
    if name == "run_training_subprocess":
        from pumpl_assets.core.training.run import run_training_subprocess

        return run_training_subprocess
    raise AttributeError(name)
