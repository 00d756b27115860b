"""The ``lora_adapter`` quality gates as plain arithmetic (no Dagster): ``trained``, ``loss_improved``,
``adapter_integrity``.

The training entry point (:mod:`pumpl_assets.core.training.run`) computes them in the training
process and reports them through Dagster Pipes; tests call these functions directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pumpl_assets.core.training.base import TrainResult

GATE_NAMES = ("trained", "loss_improved", "adapter_integrity")


@dataclass(frozen=True)
class Gate:
    """One gate outcome: its name, pass/fail, a one-line description and plain-JSON metadata."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def head_tail_loss(losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last fifth of the steps (at least one step each); NaN if none."""
    if not losses:
        return math.nan, math.nan
    k = max(1, len(losses) // 5)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def adapter_integrity(adapter_dir: Path) -> tuple[bool, str]:
    """(ok, message): the adapter folder's config parses and its weights load and are finite."""
    from pumpl_assets.core.merge import AdapterError, verify_adapter

    try:
        cfg = verify_adapter(Path(adapter_dir))
    except AdapterError as exc:
        return False, str(exc)
    return True, f"{cfg.get('peft_type', 'peft')} adapter r={cfg.get('r')} verified: config, weights finite"


def training_gates(result: TrainResult, integrity: tuple[bool, str]) -> list[Gate]:
    """The three gates for one training result (``integrity`` from :func:`adapter_integrity`)."""
    losses = [loss for _, loss in result.train_loss]
    head, tail = head_tail_loss(losses)
    ok, msg = integrity
    return [
        # total_steps: the adapter's optimizer steps, counting those before a resume.
        Gate(
            "trained",
            result.total_steps > 0,
            f"{result.total_steps} optimizer steps ({result.steps} in this run)",
            {"steps": result.total_steps},
        ),
        Gate(
            "loss_improved",
            bool(losses) and all(math.isfinite(x) for x in losses) and tail < head,
            f"loss {head:.3f} → {tail:.3f}",
            {"first_loss": head, "last_loss": tail},
        ),
        Gate("adapter_integrity", ok, msg, {"adapter_dir": str(result.adapter_dir)}),
    ]
